"""One training step, top to bottom: sample → verify → gate → update.

(Stage 5, evaluation, runs every `eval.every` steps from the loop in `train.py`.)
"""

from __future__ import annotations

import dataclasses
import time
import zlib
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import torch

from aware_cli.config.schema import AwareConfig
from aware_cli.data import Example
from aware_cli.pipeline.gate import (ABSTAIN, NO_TARGET, PG, REFUSAL, SFT, GroupGate, over_refusal_applies,
                                     sample_weights, update_dual)
from aware_cli.pipeline.objectives import Rollout, Update, get_objective
from aware_cli.pipeline.parallel import fsdp
from aware_cli.pipeline.parallel.distributed import Ranks, agree, gather, on_every_rank, sum_gradients, sum_value
from aware_cli.pipeline.rollout.sample import sample
from aware_cli.pipeline.rundir import SampleRecord
from aware_cli.pipeline.update import UpdateResult, clip_and_step, compute_precision
from aware_cli.pipeline.verify import check_none_share, count_none, verifier_stats, verify


@dataclass
class Policy:
    """What a step needs: the model being trained and everything around it."""

    cfg: AwareConfig
    model: Any
    tokenizer: Any
    verifier: Any
    optimizer: torch.optim.Optimizer
    scheduler: Any
    params: List[torch.nn.Parameter]
    device: torch.device
    prompt_ids: Dict[str, List[int]]  # example id -> chat-formatted prompt ids
    target_ids: Dict[str, List[int]]  # example id -> reference response ids (EOS-terminated)
    refusal_ids: List[List[int]]  # tokenised gate.refusals
    rejected_ids: Dict[str, List[int]] = field(default_factory=dict)  # offline pairs: id -> rejected response ids
    dual: float = 1.0  # λ of the Lagrangian gate (1.0 for the other gates)
    ranks: Ranks = field(default_factory=Ranks)  # this process's place under torchrun
    state: Dict[str, Any] = field(default_factory=dict)  # objective state kept across steps (e.g. a saliency mask)
    timings: Dict[str, float] = field(default_factory=dict)
    updates: int = 0  # optimizer steps taken (skipped ones included): the step whose weights the model holds
    precision: str = "fp32"  # trainer.precision, resolved: fp32 | bf16 | mixed (bf16 autocast)
    anchors_per_step: int = 0  # data.anchors.per_step when anchors are in use


def refusal_for(example_id: str, seed: int, count: int) -> int:
    """Which refusal template an abstained input trains on: fixed per (seed, input)."""
    return zlib.crc32(f"{seed}:{example_id}".encode()) % count


def written_refusals(policy: Policy, abstained: List[Example]) -> Dict[str, List[int]]:
    """gate.refusal_source=verifier: refusal targets written by the verifier (ids of those it wrote)."""
    if policy.cfg.gate.refusal_source != "verifier" or not abstained:
        return {}
    from aware_cli.data import build_response_ids

    texts = policy.verifier.refusal_writer()([ex.prompt for ex in abstained])
    max_tokens = policy.cfg.data.max_response_tokens
    return {ex.id: build_response_ids(policy.tokenizer, text, max_tokens=max_tokens)[0]
            for ex, text in zip(abstained, texts) if text}


def batch_positions(local: int, ranks: Ranks) -> List[int]:
    """Positions in the step's global batch of this rank's `local` inputs (`distributed.shard` takes every world-th)."""
    return [ranks.rank + b * ranks.world for b in range(local)] if ranks.enabled else list(range(local))


SECOND_DRAW = 1_000_033  # seed offset of two-stage sampling's second draw


def two_stage_first(cfg: AwareConfig, objective, sharded: bool) -> int:
    """How many samples per input the first draw takes: sampling.k_first when two-stage sampling applies
    (0 < k_first < k, an objective whose gate can settle an input, weights not fsdp2-sharded), else k."""
    first = cfg.sampling.k_first
    return first if 0 < first < cfg.k and objective.settles and not sharded else cfg.k


def settled(objective, policy: Policy, scores, refusal_score, target_score) -> bool:
    """Whether an input's first samples already decide it: the gate sends it to plain SFT on y* and every
    sample weighs less than gate.min_weight, so more samples would be neither forwarded nor back-propagated
    (unless they disagreed with the first ones: the saving is paid for with that risk)."""
    cfg = policy.cfg
    gate = objective.gate(scores, cfg, policy.dual, refusal_score=refusal_score, target_score=target_score)
    return (gate.regime == SFT and gate.target != REFUSAL
            and not any(sample_weights(gate, cfg.objective.lambda_pg, cfg.k, cfg.gate.min_weight)))


def train_step(policy: Policy, batch: List[Example], step: int) -> Tuple[List[SampleRecord], Dict[str, Any]]:
    """Run one optimizer step on `batch` (this rank's share of the step's prompts).

    Returns (this rank's per-input records for samples.jsonl, step-wide scalars); `summarize`
    turns the records of every rank plus the scalars into the step's metrics. The weights change
    only in the optimizer step (`policy.updates` counts them): an exception before it leaves the
    state of the previous step. Under torchrun every rank decides together (`agree`) after
    stages 1-3 and before the gradients are reduced, so a failure on one rank stops them all.
    The objective (`objective.name`, pipeline/objectives/) says what stages 1-3 do for it and runs stage 4.
    """
    cfg, k, B = policy.cfg, policy.cfg.k, cfg_batch(policy)
    local = len(batch)
    objective = get_objective(cfg.objective.name)
    offline = bool(cfg.objective.pairs_path)  # the batch is preference pairs: nothing to sample or verify
    sampled = objective.sampled(cfg)
    prompts = [policy.prompt_ids[ex.id] for ex in batch]
    seed = cfg.trainer.seed * 1_000_003 + step  # every random draw of a step derives from (seed, step)
    # each prompt samples from its own seed, by its place in the global batch: the same draws on any rank
    row_seeds = [seed * 65_537 + position for position in batch_positions(local, policy.ranks)]
    sharded = fsdp.is_sharded(policy.model)
    sample_ids: List[List[List[int]]] = [[] for _ in batch]
    texts: List[List[str]] = [[] for _ in batch]
    generated = 0
    stats_before = verifier_stats(policy.verifier)
    scores: List[List[Optional[float]]] = [[] for _ in batch]
    target_scores: Optional[List[Optional[float]]] = None
    refusal_scores: List[Optional[float]] = [None] * len(batch)
    refusal_index = [refusal_for(ex.id, cfg.trainer.seed, len(cfg.gate.refusals)) if cfg.gate.refusals else 0
                     for ex in batch]
    sample_s = verify_s = 0.0
    error: Optional[BaseException] = None
    try:
        if sharded:  # fsdp2: whole weights on every rank for this step's local passes (see fsdp.py)
            fsdp.unshard(policy.model)

        # 1. sample k responses per prompt (skipped by objectives that train on the targets only),
        #    in trainer.grad_accum micro-batches
        # 2. verify: r_i = V(x, ŷ_i) ∈ [0, 1] or None; in the same call, as the objective asks, each input's
        #    reference target y* (online pairs: "chosen" only if aligned; gate.target_check) and refusal
        #    target y_ref (abstention needs refusing to score higher than the samples)
        score_targets = objective.scores_targets(cfg)
        score_refusals = objective.scores_refusals(cfg)
        extras = [([ex.response] if score_targets else []) + ([cfg.gate.refusals[r]] if score_refusals else [])
                  for ex, r in zip(batch, refusal_index)]

        def draw(rows: List[int], n: int, offset: int, with_extras: bool) -> None:
            """Sample n more responses for the inputs `rows` (stage 1, in micro-batches; seeds shifted by `offset`)
            and score them in one verifier call (stage 2)."""
            nonlocal generated, sample_s, verify_s
            t = time.perf_counter()
            new: Dict[int, List[str]] = {}
            micro = max(1, local // cfg.trainer.grad_accum)
            for start in range(0, len(rows), micro):
                part = rows[start:start + micro]
                with compute_precision(policy.precision if sharded else "fp32", policy.device):  # fsdp2 + mixed
                    out = sample(policy.model, policy.tokenizer, [prompts[b] for b in part], n, cfg.sampling,
                                 seed=seed + 7919 * policy.ranks.rank + part[0] + offset, device=policy.device,
                                 max_prompt_tokens=cfg.data.max_prompt_tokens,
                                 row_seeds=[row_seeds[b] + offset for b in part])
                generated += out.num_tokens
                for b, ids, group in zip(part, out.ids, out.texts):
                    sample_ids[b] += ids
                    texts[b] += group
                    new[b] = group
            sample_s += time.perf_counter() - t
            t = time.perf_counter()
            scored = verify(policy.verifier, [batch[b] for b in rows],
                            [new[b] + (extras[b] if with_extras else []) for b in rows])
            verify_s += time.perf_counter() - t
            for b, got in zip(rows, scored):
                scores[b] += got[:len(new[b])]
                if with_extras and score_targets:
                    target_scores[b] = got[len(new[b])]
                if with_extras and score_refusals:
                    refusal_scores[b] = got[-1]

        if sampled:
            target_scores = [None] * local if score_targets else None
            first = two_stage_first(cfg, objective, sharded)
            draw(list(range(local)), first, 0, with_extras=True)
            if first < k:  # sampling.k_first: the rest only for inputs the first samples do not settle
                rest = [b for b in range(local) if not settled(objective, policy, scores[b], refusal_scores[b],
                                                              target_scores[b] if target_scores else None)]
                if rest:
                    draw(rest, k - first, SECOND_DRAW, with_extras=False)
    except Exception as e:  # noqa: BLE001 - every rank learns of it in `agree`
        error = e
    # every rank's counts: all ranks stop together when the step's share of None is too high
    none, total = agree(error, policy.ranks, count_none(scores))
    try:
        check_none_share(none, total, cfg.verifier.max_none_frac, cfg.verifier.name, step + 1)
    except Exception as e:
        raise on_every_rank(e)
    unjudged = count_none(scores)[0]  # this rank's; `summarize` adds the ranks' counts

    t2 = time.perf_counter()
    # 3. gate: μ, σ → β, regime, advantages, SFT target (y*, y_ref when abstaining, or none)
    error = None
    gates: List[GroupGate] = []
    written: Dict[str, List[int]] = {}
    try:
        gates = [objective.gate(s, cfg, policy.dual, refusal_score=r,
                                target_score=target_scores[b] if target_scores else None)
                 for b, (s, r) in enumerate(zip(scores, refusal_scores))]
        written = written_refusals(policy, [ex for ex, g in zip(batch, gates) if g.target == REFUSAL])
    except Exception as e:  # noqa: BLE001
        error = e
    agree(error, policy.ranks)
    # the over-refusal term only where gate.over_refusal_on allows it (the gate sees scores, not rows)
    gates = [g if not g.over_refusal_gap or over_refusal_applies(ex, cfg.gate.over_refusal_on)
             else dataclasses.replace(g, over_refusal_gap=0.0) for ex, g in zip(batch, gates)]
    targets = [written.get(ex.id) or policy.refusal_ids[refusal_index[b]] if gate.target == REFUSAL
               else policy.target_ids[ex.id] for b, (ex, gate) in enumerate(zip(batch, gates))]
    rollout = Rollout(batch, prompts, targets, sample_ids, scores, target_scores, gates, batch_size=B, k=k,
                      refusals=[policy.refusal_ids[r] for r in refusal_index] if policy.refusal_ids else None)
    t3 = time.perf_counter()

    # 4. update: the objective's loss, its gradient in `.grad` (the gated one: L = mean_x [(1 − β)·L_SFT +
    #    β·λ_pg·L_PG]), then a clipped AdamW step. Each rank adds its part (`objective.scaling`), so the parts
    #    sum to the 1-process loss and gradient.
    torch.manual_seed(seed)  # dropout, if any
    error = None
    update = Update(UpdateResult(loss=0.0, loss_kl=0.0, logprobs={}, tokens=0))
    try:
        with compute_precision(policy.precision, policy.device):  # mixed: bf16 autocast, fp32 master weights
            update = objective.update(policy, rollout, step)
    except Exception as e:  # noqa: BLE001
        error = e
    agree(error, policy.ranks)
    result = update.result
    if sharded:  # each rank's shard of the whole batch's gradient; weights back to shards
        any_gradient = objective.any_gradient(update, policy.ranks)
        fsdp.reduce_gradients(policy.model, policy.device)
        if not any_gradient:  # fsdp2's reduce made zeros; in one process there is no gradient, so AdamW
            for p in policy.params:  # leaves the weights (and its state) alone: drop them
                p.grad = None
    else:
        sum_gradients(policy.params, policy.ranks)  # every rank now holds the whole batch's gradient
    loss = sum_value(result.loss, policy.ranks)
    lr = policy.scheduler.get_last_lr()[0]
    grad_norm, skipped = clip_and_step(policy.params, policy.optimizer, policy.scheduler, cfg.trainer.max_grad_norm,
                                       loss)
    policy.updates += 1
    if cfg.gate.mode == "lagrangian":
        judged_mu = [m for part in gather([g.mu for g in gates if g.mu is not None], policy.ranks) for m in part]
        policy.dual = update_dual(policy.dual, sum(judged_mu) / len(judged_mu) if judged_mu else None, cfg.gate)
    t4 = time.perf_counter()

    # what the step did, per input (its L_SFT / L_PG when the objective has them)
    records = []
    for b, (ex, gate) in enumerate(zip(batch, gates)):
        loss_sft, loss_pg = update.losses[b] if update.losses else (None, None)
        records.append(SampleRecord(step + 1, ex.id, ex.prompt, texts[b], scores[b], gate.mu, gate.sigma, gate.beta,
                                    gate.regime, gate.zero_std, loss_sft, loss_pg, gate.target, refusal_scores[b],
                                    target_scores[b] if target_scores else None))
        if gate.over_refusal_gap:
            records[-1].extra["over_refusal_gap"] = gate.over_refusal_gap
        if offline:
            records[-1].extra.update(chosen_tokens=len(policy.target_ids[ex.id]),
                                     rejected_tokens=len(policy.rejected_ids[ex.id]))
    scalars: Dict[str, Any] = {
        "step": step + 1, "loss": loss, "loss_kl": sum_value(result.loss_kl, policy.ranks), "dual": policy.dual,
        "lr": lr, "grad_norm": grad_norm, "skipped": skipped, "verifier_none": unjudged,
        "tokens": result.tokens + generated, "generated": generated, "tokens_forwarded": result.tokens,
        "sequences_forwarded": len(result.logprobs),
        "timing_s/sample": sample_s, "timing_s/verify": verify_s, "timing_s/gate": t3 - t2, "timing_s/update": t4 - t3,
        **{key: value - stats_before.get(key, 0.0) for key, value in verifier_stats(policy.verifier).items()},
        **{f"objective/{key}": float(value) for key, value in update.info.items() if isinstance(value, (int, float))},
    }
    return records, scalars


def cfg_batch(policy: Policy) -> int:
    """The global batch size B (task rows + anchors): loss weights are normalised by it on every rank."""
    return policy.cfg.trainer.batch_size + policy.anchors_per_step


def summarize(records: List[SampleRecord], scalars: List[Dict[str, Any]]) -> Dict[str, Any]:
    """The step's metrics from every rank's records and scalars (one entry each without torchrun)."""
    n = len(records)
    regimes = [r.regime for r in records]
    mus = [r.mu for r in records if r.mu is not None]
    sigmas = [r.sigma for r in records if r.sigma is not None]
    first = scalars[0]
    step_seconds = max(sum(s[k] for k in s if k.startswith("timing_s/")) for s in scalars)
    sample_seconds = max(s["timing_s/sample"] for s in scalars)
    summed = {k: sum(s.get(k, 0.0) for s in scalars) for k in first if k.startswith("verifier")}
    slowest = {k: max(s[k] for s in scalars) for k in first if k.startswith("timing_s/")}
    objective = {k: sum(s.get(k, 0.0) for s in scalars) / len(scalars) for k in first if k.startswith("objective/")}
    return {
        "step": first["step"], "loss": first["loss"],
        "loss_sft": _mean([r.loss_sft for r in records if r.loss_sft is not None]),
        "loss_pg": _mean([r.loss_pg for r in records if r.loss_pg is not None]),
        "loss_kl": first["loss_kl"],
        "beta_mean": _mean([r.beta for r in records]),
        "mu_mean": _mean(mus) if mus else None,
        "sigma_mean": _mean(sigmas) if sigmas else None,
        "frac_sft": regimes.count(SFT) / n, "frac_pg": regimes.count(PG) / n, "frac_abstain": regimes.count(ABSTAIN) / n,
        "frac_reward_zero_std": sum(r.zero_std for r in records) / n,
        "frac_target_refusal": sum(r.target == REFUSAL for r in records) / n,
        "frac_target_none": sum(r.target == NO_TARGET for r in records) / n,
        "frac_over_refusal": sum(bool(r.extra.get("over_refusal_gap")) for r in records) / n,
        "dual": first["dual"], "lr": first["lr"], "grad_norm": first["grad_norm"], "skipped": first["skipped"],
        "tokens_per_s": sum(s["tokens"] for s in scalars) / max(step_seconds, 1e-9),
        "sample_tokens_per_s": sum(s["generated"] for s in scalars) / max(sample_seconds, 1e-9),
        **{key: sum(s[key] for s in scalars) for key in ("generated", "tokens_forwarded", "sequences_forwarded")},
        **slowest, **summed, **objective,
    }


def _mean(values: List[float]) -> float:
    return sum(values) / len(values) if values else 0.0
