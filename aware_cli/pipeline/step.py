"""One AWARE training step, top to bottom: sample → verify → gate → update.

(Stage 5, evaluation, runs every `eval.every` steps from the loop in `train.py`.)
"""

from __future__ import annotations

import time
import zlib
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import torch

from aware_cli.config.schema import AwareConfig
from aware_cli.data import Example
from aware_cli.pipeline.gate import ABSTAIN, PG, SFT, GroupGate, gate_group, update_dual
from aware_cli.pipeline.sample import sample
from aware_cli.pipeline.update import WeightedSequence, backward_gated_loss, clip_and_step
from aware_cli.pipeline.verify import check_none_share, verifier_stats, verify


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
    dual: float = 1.0  # λ of the Lagrangian gate (1.0 for the other gates)
    timings: Dict[str, float] = field(default_factory=dict)


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


def train_step(policy: Policy, batch: List[Example], step: int) -> Tuple[Dict[str, Any], List[Dict[str, Any]]]:
    """Run one optimizer step on `batch`; returns (metrics, per-input records for samples.jsonl)."""
    cfg, k, B = policy.cfg, policy.cfg.k, len(batch)
    objective = cfg.objective.name
    prompts = [policy.prompt_ids[ex.id] for ex in batch]
    seed = cfg.trainer.seed * 1_000_003 + step  # every random draw of a step derives from (seed, step)
    t0 = time.perf_counter()

    # 1. sample k responses per prompt (skipped by plain SFT), in trainer.grad_accum micro-batches
    sample_ids: List[List[List[int]]] = [[] for _ in batch]
    texts: List[List[str]] = [[] for _ in batch]
    generated = 0
    if objective != "sft":
        micro = B // cfg.trainer.grad_accum
        for start in range(0, B, micro):
            out = sample(policy.model, policy.tokenizer, prompts[start:start + micro], k, cfg.sampling,
                         seed=seed + start, device=policy.device)
            sample_ids[start:start + micro], texts[start:start + micro] = out.ids, out.texts
            generated += out.num_tokens
    t1 = time.perf_counter()

    # 2. verify: r_i = V(x, ŷ_i) ∈ [0, 1] or None
    stats_before = verifier_stats(policy.verifier)
    scores: List[List[Optional[float]]] = verify(policy.verifier, batch, texts) if objective != "sft" else [
        [] for _ in batch]
    unjudged = check_none_share(scores, cfg.verifier.max_none_frac, cfg.verifier.name, step + 1)
    t2 = time.perf_counter()

    # 3. gate: μ, σ → β, regime, advantages; abstained inputs train on a refusal
    gates: List[GroupGate] = [gate_group(s, cfg.gate, policy.dual, objective) for s in scores]
    written = written_refusals(policy, [ex for ex, g in zip(batch, gates) if g.regime == ABSTAIN])
    sequences: List[WeightedSequence] = []
    sft_index: Dict[int, int] = {}
    for b, (ex, gate) in enumerate(zip(batch, gates)):
        target = policy.target_ids[ex.id]
        if gate.regime == ABSTAIN:
            target = written.get(ex.id) or policy.refusal_ids[refusal_for(ex.id, cfg.trainer.seed,
                                                                          len(policy.refusal_ids))]
        sft_index[b] = len(sequences)
        sequences.append(WeightedSequence(prompts[b], target, weight=-(1.0 - gate.beta) / B))
        for ids, adv in zip(sample_ids[b], gate.advantages):
            pg_weight = -gate.beta * cfg.objective.lambda_pg * adv / (k * B)
            sequences.append(WeightedSequence(prompts[b], ids, weight=pg_weight, is_sample=True))
    t3 = time.perf_counter()

    # 4. update: L = mean_x [(1 − β)·L_SFT + β·λ_pg·L_PG], clipped AdamW step
    torch.manual_seed(seed)  # dropout, if any
    result = backward_gated_loss(policy.model, sequences, num_samples=max(1, B * k), pad_id=policy.tokenizer.pad_token_id,
                                 device=policy.device, chunk=cfg.trainer.logprob_batch, kl_coef=cfg.objective.kl_coef)
    lr = policy.scheduler.get_last_lr()[0]
    grad_norm, skipped = clip_and_step(policy.params, policy.optimizer, policy.scheduler, cfg.trainer.max_grad_norm,
                                       result.loss)
    judged_mu = [g.mu for g in gates if g.mu is not None]
    if cfg.gate.mode == "lagrangian":
        policy.dual = update_dual(policy.dual, sum(judged_mu) / len(judged_mu) if judged_mu else None, cfg.gate)
    t4 = time.perf_counter()

    # what the step did: the per-input L_SFT / L_PG values come from the forwarded log-probs
    loss_sft, loss_pg = [], []
    for b, gate in enumerate(gates):
        if sft_index[b] in result.logprobs:
            loss_sft.append(-result.logprobs[sft_index[b]])
        if gate.beta > 0 and sample_ids[b]:
            lps = [result.logprobs.get(sft_index[b] + 1 + j, 0.0) for j in range(len(sample_ids[b]))]
            loss_pg.append(-sum(a * lp for a, lp in zip(gate.advantages, lps)) / len(lps))
    regimes = [g.regime for g in gates]
    sigmas = [g.sigma for g in gates if g.sigma is not None]
    metrics: Dict[str, Any] = {
        "step": step + 1,
        "loss": result.loss,
        "loss_sft": _mean(loss_sft),
        "loss_pg": _mean(loss_pg),
        "loss_kl": result.loss_kl,
        "beta_mean": _mean([g.beta for g in gates]),
        "mu_mean": _mean(judged_mu) if judged_mu else None,
        "sigma_mean": _mean(sigmas) if sigmas else None,
        "frac_sft": regimes.count(SFT) / B,
        "frac_pg": regimes.count(PG) / B,
        "frac_abstain": regimes.count(ABSTAIN) / B,
        "frac_reward_zero_std": sum(g.zero_std for g in gates) / B,
        "verifier_none": unjudged,
        "dual": policy.dual,
        "lr": lr,
        "grad_norm": grad_norm,
        "skipped": skipped,
        "tokens_per_s": (result.tokens + generated) / max(t4 - t0, 1e-9),
        "sample_tokens_per_s": generated / max(t1 - t0, 1e-9),
        "timing_s/sample": t1 - t0,
        "timing_s/verify": t2 - t1,
        "timing_s/gate": t3 - t2,
        "timing_s/update": t4 - t3,
        **{key: value - stats_before.get(key, 0.0) for key, value in verifier_stats(policy.verifier).items()},
    }
    records = [
        {"step": step + 1, "id": ex.id, "prompt": ex.prompt, "responses": texts[b], "scores": scores[b],
         "mu": gates[b].mu, "sigma": gates[b].sigma, "beta": gates[b].beta, "regime": gates[b].regime}
        for b, ex in enumerate(batch)
    ]
    return metrics, records


def _mean(values: List[float]) -> float:
    return sum(values) / len(values) if values else 0.0
