"""GAPO: Geometric Anchor Preference Optimization (reconstructed from its abstract; docs/objectives.md).

It perturbs the trainable weights in place to find its anchor, so it does not run under FSDP2.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from aware_cli.pipeline.objectives.pairs import LOCAL, Info, Pair, PairwiseObjective, Reduce, pair_logprobs
from aware_cli.pipeline.objectives.perturb import Perturbation, ascent_step, param_grads
from aware_cli.pipeline.objectives.registry import register_objective


def gapo_weights(gap: torch.Tensor, *, weight_temperature: float = 1.0, weighting: str = "softmax") -> torch.Tensor:
    """Per-pair weights from the Anchor Gap, decreasing in the gap and averaging to 1 over the batch.

    softmax: w = n·softmax(−gap/T);  sigmoid: w ∝ σ(−gap/T), rescaled to mean 1;  none: w = 1.
    """
    gap = gap.detach()
    n = gap.numel()
    if weighting == "none":
        return torch.ones_like(gap)
    if weight_temperature <= 0:
        raise ValueError(f"gapo: weight_temperature must be > 0, got {weight_temperature}")
    if weighting == "softmax":
        return torch.softmax(-gap / weight_temperature, dim=0) * n
    if weighting == "sigmoid":
        w = torch.sigmoid(-gap / weight_temperature)
        return w / w.mean()
    raise ValueError(f"gapo: unknown weighting {weighting!r} (use softmax, sigmoid or none)")


def gapo_loss(model, pairs: Sequence[Pair], pad_id: int, device: torch.device, params: Sequence[torch.Tensor], *,
              beta: float = 0.1, rho: float = 0.05, weight_temperature: float = 1.0, weighting: str = "softmax",
              length_normalized: bool = False, total: Optional[int] = None,
              reduce: Reduce = LOCAL) -> Tuple[torch.Tensor, Info]:
    """Geometric Anchor Preference Optimization (reconstructed from the GAPO abstract).

    The fixed reference of DPO is replaced by an *anchor*: the current policy perturbed
    adversarially within radius ρ (a pessimistic baseline).

    1. Policy margins m_θ,i = log π_θ(y_w,i) − log π_θ(y_l,i) (with grad), and the
       reference-free pair loss L(θ) = mean_i −log σ(β·m_θ,i).
    2. Anchor θ' = θ + ρ·g/‖g‖, g = ∇_θ L over `params` (one normalised gradient-*ascent* step on
       the pair loss, the norm taken over all trainable parameters). Anchor margins m_a,i are
       computed at θ' under no_grad, then θ is restored bit-for-bit.
    3. loss_i = −log σ(β·(m_θ,i − m_a,i)): the anchor takes the reference's place in the log-ratio.
    4. Anchor Gap gap_i = m_θ,i − m_a,i (detached; ≥ 0 to first order, large for pairs whose margin
       collapses under a small perturbation); w = n·softmax(−gap/T) (see `gapo_weights`), so
       brittle pairs are down-weighted and the weights average to 1; loss = mean_i w_i·loss_i.

    ρ = 0 (or g = 0) ⇒ anchor = current policy (its margins detached, no extra forward) ⇒ gap 0,
    uniform weights, value log 2 and the gradient of DPO with the detached policy as reference.

    The returned loss has a graph: the caller runs backward. Cost: one forward+backward for g
    (the graph of step 1 is kept and reused by the loss), one no-grad forward for the anchor.
    `params` are the trainable parameters (LoRA weights).
    Data-parallel: `pairs` are this process's share of the batch's `total` pairs; g, the weights'
    softmax and the info are taken over the whole batch through `reduce`, and the returned loss is
    this process's part Σ_own w_i·loss_i / total, so the parts add up to the 1-process loss.
    info: loss, gap_mean, gap_std, gap_max, weight_min, weight_max, reward_margin (mean β·m_θ),
    anchor_margin (mean β·m_a), accuracy (m_θ > 0), grad_norm (‖g‖), pair_loss (L(θ)).
    """
    params = list(params)
    n = len(pairs)
    total = n if total is None else int(total)
    if total < 1:
        raise ValueError("gapo_loss: no pairs")
    if n:
        chosen, rejected = pair_logprobs(model, pairs, pad_id, device, length_normalized=length_normalized)
        margin = chosen - rejected
    else:  # this process has none of the batch's pairs; it still joins the reductions
        margin = torch.zeros(0, device=device)
    pair_loss = -F.logsigmoid(beta * margin).sum() / total  # this process's part of the batch mean
    grad_norm = 0.0
    anchor = margin.detach()
    if rho != 0 and params:
        grads = param_grads(pair_loss, params, retain_graph=True) if margin.requires_grad else \
            [torch.zeros_like(p) for p in params]
        step, grad_norm = ascent_step(reduce.sum(grads), rho)
        del grads
        if step and n:
            with Perturbation(params, step), torch.no_grad():
                a_chosen, a_rejected = pair_logprobs(model, pairs, pad_id, device, length_normalized=length_normalized)
            anchor = (a_chosen - a_rejected).detach()
    gap = (margin - anchor).detach()
    gaps = reduce.gather(gap)  # the weights are a softmax over every pair of the batch
    all_gaps = torch.cat([g.to(gap.device) for g in gaps])
    all_weights = gapo_weights(all_gaps, weight_temperature=weight_temperature, weighting=weighting)
    offset = sum(len(g) for g in gaps[:reduce.rank])
    weights = all_weights[offset:offset + n].to(margin.dtype)
    losses = -F.logsigmoid(beta * (margin - anchor))
    loss = (weights * losses).sum() / total
    sums = reduce.sum([torch.stack([loss.detach().double(), margin.detach().sum().double(),
                                    anchor.sum().double(), (margin.detach() > 0).sum().double(),
                                    pair_loss.detach().double()])])[0]
    info = {"loss": float(sums[0]), "gap_mean": float(all_gaps.mean()),
            "gap_std": float(all_gaps.std(unbiased=False)), "gap_max": float(all_gaps.max()),
            "weight_min": float(all_weights.min()), "weight_max": float(all_weights.max()),
            "reward_margin": float(beta * sums[1] / total), "anchor_margin": float(beta * sums[2] / total),
            "accuracy": float(sums[3] / total), "grad_norm": grad_norm, "pair_loss": float(sums[4])}
    return loss, info


@register_objective("gapo")
class GAPO(PairwiseObjective):
    """`gapo_loss` on the step's pairs: anchor, weights and info over every rank's pairs."""

    fsdp2 = False  # it shifts and differentiates `policy.params`, which FSDP2 keeps sharded

    def pair_loss(self, policy, pairs: Sequence[Pair], step: int, *, total: int, scale: float,
                  reduce: Reduce) -> Tuple[float, Dict[str, Any]]:
        cfg = policy.cfg.objective
        loss, info = gapo_loss(policy.model, pairs, policy.tokenizer.pad_token_id, policy.device, policy.params,
                               beta=cfg.beta, rho=cfg.rho, weight_temperature=cfg.weight_temperature,
                               weighting=cfg.weighting, total=total, reduce=reduce)
        if loss.requires_grad:
            loss.backward()
        return float(loss.detach()), info  # already this rank's part of the mean
