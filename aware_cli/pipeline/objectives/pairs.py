"""Preference pairs: the `Pair` type, their log-probabilities, online pair mining and the shared pairwise update.

Online pairs come from the step's scored samples (`pairs_from_groups`): the best vs the worst sample
of an input when their scores differ by at least `objective.pair_min_gap`, and (with
`objective.pair_reference`) the reference target vs the worst sample. Offline pairs come from the
file `objective.pairs_path` (`data/preference.py`); both go through `pair_update`, which calls the
objective's `pair_loss` (dpo.py, gapo.py, shapo.py). Each update leaves the gradient in `.grad` and
returns (loss value, diagnostics); the caller clips and steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from aware_cli.config.schema import AwareConfig
from aware_cli.models.logprobs import mean_logprob, token_logprobs
from aware_cli.pipeline.objectives.registry import OBJECTIVES, Objective, Rollout, Update
from aware_cli.pipeline.parallel import distributed
from aware_cli.pipeline.update import UpdateResult

Info = Dict[str, float]
LogprobPair = Tuple[torch.Tensor, torch.Tensor]

# Float comparisons of verifier scores (0.7 − 0.4 = 0.29999999999999993) get this much slack.
_SCORE_TOL = 1e-9


class Reduce:
    """How per-process parts of a batch combine across data-parallel processes; this one is one process.

    `distributed.RankReduce` implements the same under torchrun: `sum` adds each tensor over the
    processes, `gather` returns every process's tensor in rank order, `rank` is this process's place.
    The pair losses below use it to be exactly the loss of the whole batch in one process.
    """

    rank = 0

    def sum(self, tensors: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        return list(tensors)

    def gather(self, tensor: torch.Tensor) -> List[torch.Tensor]:
        return [tensor]


LOCAL = Reduce()


@dataclass
class Pair:
    """One preference pair, as token ids: the prompt, the preferred and the dispreferred response."""

    prompt: List[int]
    chosen: List[int]
    rejected: List[int]




# ============================================================================ log-probabilities


def pair_logprobs(model, pairs: Sequence[Pair], pad_id: int, device: torch.device, *,
                  length_normalized: bool = False) -> LogprobPair:
    """(chosen_lp [n], rejected_lp [n]): Σ_t log π(y_t | x, y_<t) over response tokens.

    With `length_normalized` the sum is divided by the response length (a per-token mean).
    Chosen and rejected responses go through the model in one forward pass of 2n sequences.
    """
    if not pairs:
        raise ValueError("pair_logprobs: no pairs")
    prompts = [p.prompt for p in pairs] * 2
    responses = [p.chosen for p in pairs] + [p.rejected for p in pairs]
    logp, mask = token_logprobs(model, prompts, responses, pad_id, device)
    lp = mean_logprob(logp, mask) if length_normalized else logp.sum(-1)
    n = len(pairs)
    return lp[:n], lp[n:]


def _require_peft(model, who: str) -> None:
    try:
        from peft import PeftModel
    except ImportError as exc:  # pragma: no cover - peft is a dependency
        raise ValueError(f"{who}: needs peft") from exc
    if not isinstance(model, PeftModel):
        raise ValueError(f"{who}: the model is not a PeftModel; the reference policy is the base model with "
                         "its LoRA adapter disabled, so use model.finetune=lora (or pass reference log-probs)")


def reference_logprobs(model, pairs: Sequence[Pair], pad_id: int, device: torch.device, **kw) -> LogprobPair:
    """`pair_logprobs` under the reference policy: the same model with its LoRA adapter disabled.

    Runs under `torch.no_grad()`, so no second copy of the model is needed and nothing is
    differentiable. Raises ValueError when `model` is not a PeftModel.
    """
    _require_peft(model, "reference_logprobs")
    with torch.no_grad(), model.disable_adapter():
        chosen, rejected = pair_logprobs(model, pairs, pad_id, device, **kw)
    return chosen.detach(), rejected.detach()


# ============================================================================ online pairs


def pairs_from_groups(prompts: Sequence[List[int]], responses: Sequence[Sequence[List[int]]],
                      scores: Sequence[Sequence[Optional[float]]], *, min_gap: float = 0.3,
                      reference: Optional[Sequence[Optional[List[int]]]] = None,
                      reference_scores: Optional[Sequence[Optional[float]]] = None) -> List[Pair]:
    """Online preference pairs from k scored samples per prompt.

    Per group (judged samples only; None = unjudged; ties go to the first index):
      * best vs worst sample, when score(best) − score(worst) ≥ min_gap and they are different samples;
      * with `reference` (one target id list per prompt, None/empty to skip), additionally the
        reference target vs the worst sample when score(worst) < score(reference) − min_gap.
        `reference_scores` are the verifier's scores of the references (None: unjudged, no pair);
        without them every reference counts as 1. Scoring matters when the data's targets are not
        all aligned: in alpaca_harmful_mix a harmful row's target is the compliance itself, which
        must not become the chosen response.
    Comparisons allow 1e-9 of float slack. Pairs come out in group order, best-vs-worst first.
    """
    if not (len(prompts) == len(responses) == len(scores)):
        raise ValueError("pairs_from_groups: prompts, responses and scores must have one entry per group")
    if reference is not None and len(reference) != len(prompts):
        raise ValueError("pairs_from_groups: reference must have one entry per group")
    if reference_scores is not None and len(reference_scores) != len(prompts):
        raise ValueError("pairs_from_groups: reference_scores must have one entry per group")
    pairs: List[Pair] = []
    for g, (prompt, samples, group_scores) in enumerate(zip(prompts, responses, scores)):
        if len(samples) != len(group_scores):
            raise ValueError(f"pairs_from_groups: group {g} has {len(samples)} responses but {len(group_scores)} scores")
        judged = [(i, float(s)) for i, s in enumerate(group_scores) if s is not None and not math.isnan(float(s))]
        if not judged:
            continue
        best = max(judged, key=lambda item: (item[1], -item[0]))
        worst = min(judged, key=lambda item: (item[1], item[0]))
        if best[0] != worst[0] and best[1] - worst[1] >= min_gap - _SCORE_TOL:
            pairs.append(Pair(list(prompt), list(samples[best[0]]), list(samples[worst[0]])))
        target = reference[g] if reference is not None else None
        target_score = 1.0 if reference_scores is None else reference_scores[g]
        if target and target_score is not None and worst[1] < float(target_score) - min_gap - _SCORE_TOL:
            pairs.append(Pair(list(prompt), list(target), list(samples[worst[0]])))
    return pairs


# ============================================================================ the pairwise update


class PairwiseObjective(Objective):
    """dpo / gapo / shapo: a loss on preference pairs, online (mined from the scored samples) or offline.

    Subclasses implement `pair_loss`; the pair count, the per-rank scale and the diagnostics over
    every rank are handled here (`pair_update`).
    """

    pairwise = True
    scaling = "pairs"

    def scores_targets(self, cfg: AwareConfig) -> bool:
        return self.sampled(cfg) and cfg.objective.pair_reference

    def pair_loss(self, policy, pairs: Sequence[Pair], step: int, *, total: int, scale: float,
                  reduce: Reduce) -> Tuple[float, Dict[str, Any]]:
        """Add the gradient of this rank's part (`scale` = its pairs / `total`) of the mean loss over the
        step's pairs; returns (that part's value, the loss's info)."""
        raise NotImplementedError

    def update(self, policy, rollout: Rollout, step: int) -> Update:
        if not self.sampled(policy.cfg):  # offline pairs: chosen = the row's target, rejected from the file
            pairs = [Pair(prompt, policy.target_ids[ex.id], policy.rejected_ids[ex.id])
                     for prompt, ex in zip(rollout.prompts, rollout.batch)]
            value, info = pair_update(policy, pairs, step)
            forwarded = sum(2 * len(p.prompt) + len(p.chosen) + len(p.rejected) for p in pairs)  # the policy's pass
            return Update(UpdateResult(loss=value, loss_kl=0.0, logprobs={}, tokens=forwarded), info)
        value, info = pairwise_update(policy, rollout.prompts, rollout.samples, rollout.scores,
                                      [policy.target_ids[ex.id] for ex in rollout.batch], rollout.target_scores, step)
        return Update(UpdateResult(loss=value, loss_kl=0.0, logprobs={}, tokens=0), info)

    def any_gradient(self, update: Update, ranks) -> bool:
        return update.info.get("pairs", 0) > 0  # the step's pairs over every rank


def pairwise_update(policy, prompts: Sequence[List[int]], samples: Sequence[Sequence[List[int]]],
                    scores: Sequence[Sequence[Optional[float]]], targets: Sequence[List[int]],
                    target_scores: Optional[Sequence[Optional[float]]], step: int) -> Tuple[float, Dict[str, Any]]:
    """The objective's pair loss on the step's online pairs; no pairs → no gradient.

    `target_scores`: the verifier's scores of the reference targets (with objective.pair_reference).
    """
    cfg = policy.cfg.objective
    pairs = pairs_from_groups(prompts, samples, scores, min_gap=cfg.pair_min_gap,
                              reference=list(targets) if cfg.pair_reference else None,
                              reference_scores=target_scores)
    return pair_update(policy, pairs, step)


def pair_update(policy, pairs: Sequence[Pair], step: int) -> Tuple[float, Dict[str, Any]]:
    """The objective's pair loss on `pairs`, its gradient added to `.grad`; no pairs → no gradient.

    The loss is the mean over the step's pairs. Under torchrun `pairs` are this rank's share: the
    pair count is summed over ranks first, each rank adds (its pairs / all pairs) × its mean, and
    gapo's anchor and weights and shapo's perturbation and saliency mask are taken over every rank's
    pairs (`Reduce`), so the summed gradient and loss are the 1-process ones.
    Returns (this rank's part of the loss, {"pairs": all pairs, **the loss's info over all pairs}).
    """
    ranks = policy.ranks
    total = int(round(distributed.sum_value(float(len(pairs)), ranks)))
    if total == 0:
        return 0.0, {"pairs": 0}
    n = len(pairs)
    reduce = distributed.RankReduce(ranks) if ranks.enabled else LOCAL
    objective = OBJECTIVES[policy.cfg.objective.name]
    value, info = objective.pair_loss(policy, pairs, step, total=total, scale=n / total, reduce=reduce)
    return value, {"pairs": total, **combine_info(info, n, ranks)}


def combine_info(info: Dict[str, Any], n: int, ranks) -> Dict[str, Any]:
    """Diagnostics over every rank's pairs: means weighted by each rank's pair count (max/min for *_max/*_min)."""
    if not ranks.enabled:
        return info
    parts = [(count, values) for count, values in distributed.gather((n, info), ranks) if count]
    keys = [k for k, v in parts[0][1].items() if isinstance(v, (int, float))] if parts else []
    out: Dict[str, Any] = {}
    for key in keys:
        values = [(count, float(values[key])) for count, values in parts if key in values]
        if key.endswith("_max"):
            out[key] = max(v for _, v in values)
        elif key.endswith("_min"):
            out[key] = min(v for _, v in values)
        else:
            out[key] = sum(c * v for c, v in values) / sum(c for c, _ in values)
    return out
