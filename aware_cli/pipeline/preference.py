"""Stage 4 for the objectives beyond AWARE: dpo, gapo, shapo on online or offline pairs; constrained_sft.

Online pairs come from the step's scored samples (`pairs_from_groups`): the best vs the worst sample
of an input when their scores differ by at least `objective.pair_min_gap`, and (with
`objective.pair_reference`) the reference target vs the worst sample. Offline pairs come from the
file `objective.pairs_path` (`offline_training_data`); both go through `pair_update`. The losses
themselves live in `objectives.py` (docs/objectives.md). Each update leaves the gradient in `.grad`
and returns (loss value, diagnostics); the caller clips and steps as for AWARE.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from aware_cli.config.schema import AwareConfig
from aware_cli.data import Example, builtin, split_examples
from aware_cli.data.mix import TrainingData
from aware_cli.pipeline import objectives as obj
from aware_cli.models.logprobs import token_logprobs

PAIRWISE = ("dpo", "gapo", "shapo")
NO_SAMPLING = ("sft", "constrained_sft")  # these train on the targets only
NEEDS_REFERENCE = ("dpo", "constrained_sft")  # the base model with LoRA adapters disabled


def pairwise_update(policy, prompts: Sequence[List[int]], samples: Sequence[Sequence[List[int]]],
                    scores: Sequence[Sequence[Optional[float]]], targets: Sequence[List[int]],
                    target_scores: Optional[Sequence[Optional[float]]], step: int) -> Tuple[float, Dict[str, Any]]:
    """dpo / gapo / shapo on the step's online pairs; no pairs → no gradient.

    `target_scores`: the verifier's scores of the reference targets (with objective.pair_reference).
    """
    cfg = policy.cfg.objective
    pairs = obj.pairs_from_groups(prompts, samples, scores, min_gap=cfg.pair_min_gap,
                                  reference=list(targets) if cfg.pair_reference else None,
                                  reference_scores=target_scores)
    return pair_update(policy, pairs, step)


def pair_update(policy, pairs: Sequence[obj.Pair], step: int) -> Tuple[float, Dict[str, Any]]:
    """The dpo / gapo / shapo loss on `pairs`, its gradient added to `.grad`; no pairs → no gradient.

    The loss is the mean over the step's pairs. Under torchrun `pairs` are this rank's share: the
    pair count is summed over ranks first, each rank adds (its pairs / all pairs) × its mean, and
    gapo's anchor and weights and shapo's perturbation and saliency mask are taken over every rank's
    pairs (`objectives.Reduce`), so the summed gradient and loss are the 1-process ones.
    Returns (this rank's part of the loss, {"pairs": all pairs, **the loss's info over all pairs}).
    """
    from aware_cli.pipeline.parallel import distributed

    cfg = policy.cfg.objective
    ranks = policy.ranks
    total = int(round(distributed.sum_value(float(len(pairs)), ranks)))
    if total == 0:
        return 0.0, {"pairs": 0}
    n = len(pairs)
    scale = n / total
    reduce = distributed.RankReduce(ranks) if ranks.enabled else obj.LOCAL
    model, pad, device = policy.model, policy.tokenizer.pad_token_id, policy.device
    info: Dict[str, Any] = {}
    if cfg.name == "dpo":
        value = 0.0
        if n:
            reference = obj.reference_logprobs(model, pairs, pad, device)
            loss, info = obj.dpo_loss(*obj.pair_logprobs(model, pairs, pad, device), *reference, beta=cfg.beta,
                                      label_smoothing=cfg.label_smoothing)
            (loss * scale).backward()
            value = float(loss.detach()) * scale
    elif cfg.name == "gapo":
        loss, info = obj.gapo_loss(model, pairs, pad, device, policy.params, beta=cfg.beta, rho=cfg.rho,
                                   weight_temperature=cfg.weight_temperature, weighting=cfg.weighting,
                                   total=total, reduce=reduce)
        if loss.requires_grad:
            loss.backward()
        value = float(loss.detach())  # already this rank's part of the mean
    else:  # shapo: the subspace is re-selected every `saliency_every` steps; shapo_loss runs its own backward
        if policy.state.get("saliency_mask") is None or step % cfg.saliency_every == 0:
            policy.state["saliency_mask"] = obj.saliency_mask(model, pairs, pad, device, policy.params,
                                                              top_p=cfg.saliency_top_p, beta=cfg.beta,
                                                              total=total, reduce=reduce)
        loss, info = obj.shapo_loss(model, pairs, pad, device, policy.params, policy.state["saliency_mask"],
                                    beta=cfg.beta, rho=cfg.rho, level=cfg.shapo_level,
                                    label_smoothing=cfg.label_smoothing, backward_scale=scale, reduce=reduce)
        value = float(loss.detach()) * scale
    return value, {"pairs": total, **combine_info(info, n, ranks)}


def combine_info(info: Dict[str, Any], n: int, ranks) -> Dict[str, Any]:
    """Diagnostics over every rank's pairs: means weighted by each rank's pair count (max/min for *_max/*_min)."""
    from aware_cli.pipeline.parallel import distributed

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


def offline_training_data(cfg: AwareConfig, base_dir: Optional[Path] = None) -> TrainingData:
    """`objective.pairs_path` as training data: one Example per pair, response = chosen, meta["rejected"].

    The file takes data.path's place: a relative path resolves against `base_dir` (default: the
    working directory), and data.shuffle / seed / limit / eval_size apply as to data.path rows (the
    held-out pairs' prompts and chosen responses feed the in-training evaluation).
    """
    data = cfg.data
    path = builtin.resolve(cfg.objective.pairs_path, base_dir)
    examples = [Example(id=str(index), prompt=row["prompt"], response=row["chosen"],
                        meta={"source": str(path), "history": row["history"], "rejected": row["rejected"]})
                for index, row in enumerate(obj.load_preference_pairs(path))]
    if data.shuffle:
        random.Random(data.seed).shuffle(examples)
    if data.limit is not None:
        examples = examples[:data.limit]
    train, held_out = split_examples(examples, data.eval_size)
    split = {"data": cfg.objective.pairs_path, "seed": data.seed, "task_heldout_ids": [ex.id for ex in held_out]}
    return TrainingData(train=train, held_out=held_out, split=split)


def constrained_sft_update(policy, prompts: Sequence[List[int]], targets: Sequence[List[int]],
                           harmful: Sequence[Optional[bool]]) -> Tuple[float, Dict[str, Any]]:
    """SFT on the targets; on harmful prompts the first response tokens stay near the base model.

    The loss is the mean over the step's B rows (trainer.batch_size, every rank's rows): each rank
    adds its rows' losses / B, so the gradients and values summed over ranks are the 1-process ones.
    """
    cfg = policy.cfg.objective
    model, pad, device = policy.model, policy.tokenizer.pad_token_id, policy.device
    chunk, total, n = policy.cfg.trainer.logprob_batch, 0.0, len(prompts)
    rows = policy.cfg.trainer.batch_size  # the global batch: a mean over it, accumulated rank by rank
    for start in range(0, n, chunk):
        part = slice(start, start + chunk)
        logp, mask = token_logprobs(model, prompts[part], targets[part], pad, device)
        with torch.no_grad(), model.disable_adapter():
            ref, _ = token_logprobs(model, prompts[part], targets[part], pad, device)
        flags = torch.tensor([bool(h) for h in harmful[part]], device=logp.device)
        loss, _ = obj.constrained_sft_loss(logp, ref, mask, harmful=flags, first_tokens=cfg.first_tokens,
                                           kl_coef=cfg.constraint_coef)
        weighted = loss * (flags.numel() / rows)  # a mean over rows, accumulated chunk by chunk
        weighted.backward()
        total += float(weighted.detach())
    return total, {"harmful_rows": sum(bool(h) for h in harmful)}
