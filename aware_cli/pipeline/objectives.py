"""Preference-optimisation objectives: DPO, GRPO, GAPO, ShaPO, saliency masks, constrained SFT.

Every loss takes a batch and returns `(loss, info)`: a scalar loss tensor and a dict of float
diagnostics. Every constant is a keyword argument whose default is documented here and in
docs/objectives.md. Log-probabilities come from `logprobs.token_logprobs` (prompt tokens masked).

GAPO and ShaPO are reconstructions from their abstracts (only the abstracts are public); the
choices made are documented in their docstrings and in docs/objectives.md.

Two of these functions change parameters temporarily (GAPO's anchor, ShaPO's perturbation): they
save the perturbed parameters and copy them back, so on return every parameter is bit-for-bit
what it was on entry.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from aware_cli.errors import DataError
from aware_cli.models.logprobs import mean_logprob, token_logprobs

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


# ============================================================================ DPO


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, *, beta: float = 0.1, label_smoothing: float = 0.0) -> Tuple[torch.Tensor, Info]:
    """Standard DPO.

        z_i  = β·((log π(y_w) − log π_ref(y_w)) − (log π(y_l) − log π_ref(y_l)))
        loss = mean_i [ −(1 − ε)·log σ(z_i) − ε·log σ(−z_i) ]        (ε = label_smoothing, cDPO)

    info: loss, reward_margin (mean z), accuracy (share of z > 0), chosen_reward, rejected_reward
    (means of β·(log π − log π_ref)).
    """
    ref_chosen, ref_rejected = ref_chosen.detach(), ref_rejected.detach()
    chosen_reward = beta * (policy_chosen - ref_chosen)
    rejected_reward = beta * (policy_rejected - ref_rejected)
    z = chosen_reward - rejected_reward
    losses = -(1.0 - label_smoothing) * F.logsigmoid(z) - label_smoothing * F.logsigmoid(-z)
    loss = losses.mean()
    info = {"loss": float(loss.detach()), "reward_margin": float(z.detach().mean()),
            "accuracy": float((z.detach() > 0).float().mean()),
            "chosen_reward": float(chosen_reward.detach().mean()),
            "rejected_reward": float(rejected_reward.detach().mean())}
    return loss, info


# ============================================================================ GRPO


def group_advantages(rewards: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """A = (r − mean)/(std + eps) per row, over judged entries only (nan = unjudged, A = 0).

    `std` is the population std of the row's judged rewards; a row whose std is 0 (up to 1e-12,
    float noise of equal rewards) or that has no judged entry gets A = 0 everywhere.
    """
    r = rewards.detach().to(torch.float64)
    judged = ~torch.isnan(r)
    count = judged.sum(-1, keepdim=True)
    filled = torch.where(judged, r, torch.zeros_like(r))
    mean = filled.sum(-1, keepdim=True) / count.clamp(min=1)
    var = (torch.where(judged, r - mean, torch.zeros_like(r)) ** 2).sum(-1, keepdim=True) / count.clamp(min=1)
    std = var.sqrt()
    adv = (filled - mean) / (std + eps)
    adv = torch.where(judged & (std > 1e-12), adv, torch.zeros_like(adv))
    return adv.to(rewards.dtype if rewards.is_floating_point() else torch.float32)


def grpo_loss(logp_mean: torch.Tensor, rewards: torch.Tensor, eps: float = 1e-4) -> Tuple[torch.Tensor, Info]:
    """GRPO policy-gradient term with group-normalised advantages (no clipping, no KL).

        A_ij = (r_ij − mean_j r_i·)/(std_j r_i· + eps)   (per row i, population std, nan excluded)
        loss = −mean_{i,j} A_ij · logp_mean_ij          (mean over all B·k entries)

    `logp_mean` [B, k] are length-normalised log-probs of the k samples of each prompt. Rows with
    std 0 and unjudged samples (nan reward) have A = 0 and contribute nothing.
    info: loss, adv_abs_mean, zero_std_rows, judged (share of non-nan rewards).
    """
    if logp_mean.shape != rewards.shape or logp_mean.dim() != 2:
        raise ValueError(f"grpo_loss: logp_mean {tuple(logp_mean.shape)} and rewards {tuple(rewards.shape)} "
                         "must both be [B, k]")
    adv = group_advantages(rewards, eps).to(device=logp_mean.device, dtype=logp_mean.dtype)
    loss = -(adv * logp_mean).mean()
    judged = ~torch.isnan(rewards)
    row_has_signal = (adv != 0).any(-1)
    info = {"loss": float(loss.detach()), "adv_abs_mean": float(adv.abs().mean()),
            "zero_std_rows": float((~row_has_signal).sum()), "judged": float(judged.float().mean())}
    return loss, info


# ============================================================================ parameter helpers


def _grads(loss: torch.Tensor, params: Sequence[torch.Tensor], *, retain_graph: bool = False) -> List[torch.Tensor]:
    """d loss / d params without touching `.grad`; parameters the loss does not reach get zeros."""
    grads = torch.autograd.grad(loss, list(params), retain_graph=retain_graph, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]


def _global_norm(tensors: Sequence[torch.Tensor]) -> float:
    if not tensors:
        return 0.0
    return float(torch.linalg.vector_norm(torch.stack([t.detach().float().norm() for t in tensors])))


class _Perturbation:
    """Add `deltas` to `params` in place and put the exact original values back afterwards.

    The shift is written through `p.data`, which does not bump autograd's version counter: a graph
    built at θ (GAPO keeps one for the policy margins) stays usable because θ is restored
    bit-for-bit (from saved copies, not by subtracting) before anything reads it again.
    """

    def __init__(self, params: Sequence[torch.Tensor], deltas: Sequence[torch.Tensor]):
        self.items = [(p, d) for p, d in zip(params, deltas) if d is not None]
        self.saved: List[torch.Tensor] = []

    def __enter__(self) -> "_Perturbation":
        with torch.no_grad():
            for p, d in self.items:
                self.saved.append(p.data.clone())
                p.data.add_(d.to(p.dtype))
        return self

    def __exit__(self, *exc) -> None:
        with torch.no_grad():
            for (p, _), original in zip(self.items, self.saved):
                p.data.copy_(original)
        self.saved.clear()


def _ascent_step(grads: Sequence[torch.Tensor], rho: float,
                 mask: Optional[Sequence[torch.Tensor]] = None) -> Tuple[List[Optional[torch.Tensor]], float]:
    """ε = rho · (g⊙mask)/‖g⊙mask‖ (norm over all tensors); ([] if ‖g⊙mask‖ = 0, that norm)."""
    if mask is not None:
        grads = [g * m.to(device=g.device, dtype=g.dtype) for g, m in zip(grads, mask)]
    norm = _global_norm(grads)
    if rho == 0 or norm == 0.0 or not math.isfinite(norm):
        return [], norm
    scale = rho / norm
    return [g * scale for g in grads], norm


# ============================================================================ GAPO


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
        grads = _grads(pair_loss, params, retain_graph=True) if margin.requires_grad else \
            [torch.zeros_like(p) for p in params]
        step, grad_norm = _ascent_step(reduce.sum(grads), rho)
        del grads
        if step and n:
            with _Perturbation(params, step), torch.no_grad():
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


# ============================================================================ ShaPO


def _shapo_base(model, pairs, pad_id, device, ref: Optional[LogprobPair], *, level: str, base: str, beta: float,
                label_smoothing: float) -> Tuple[torch.Tensor, Info]:
    """The unperturbed objective ShaPO makes sharpness-aware (see `shapo_loss`)."""
    if level == "token":
        chosen, rejected = pair_logprobs(model, pairs, pad_id, device, length_normalized=True)
        gap = chosen - rejected
        loss = -beta * gap.mean()
        return loss, {"token_margin": float(gap.detach().mean()),
                      "accuracy": float((gap.detach() > 0).float().mean())}
    chosen, rejected = pair_logprobs(model, pairs, pad_id, device)
    ref_chosen, ref_rejected = ref
    if base == "dpo":
        loss, info = dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta=beta, label_smoothing=label_smoothing)
        return loss, {"reward_margin": info["reward_margin"], "accuracy": info["accuracy"]}
    # IPO: (h − 1/(2β))², h the log-ratio margin without β.
    h = (chosen - ref_chosen.detach()) - (rejected - ref_rejected.detach())
    loss = ((h - 1.0 / (2.0 * beta)) ** 2).mean()
    return loss, {"reward_margin": float(beta * h.detach().mean()), "accuracy": float((h.detach() > 0).float().mean())}


def shapo_loss(model, pairs: Sequence[Pair], pad_id: int, device: torch.device, params: Sequence[torch.Tensor],
               mask: Optional[Sequence[torch.Tensor]] = None, *, beta: float = 0.1, rho: float = 0.05,
               level: str = "token", base: str = "dpo", ref: Optional[LogprobPair] = None,
               label_smoothing: float = 0.0, backward_scale: float = 1.0,
               reduce: Reduce = LOCAL) -> Tuple[torch.Tensor, Info]:
    """Sharpness-aware preference optimisation on a selected subspace (reconstructed from the ShaPO abstract).

    ShaPO minimises the worst case of a base preference loss within radius ρ, perturbing only an
    alignment-critical subspace (`mask`: one 0/1 tensor per parameter, e.g. `saliency_mask`;
    None = every parameter, i.e. plain SAM):

        g = ∇_θ L_base(θ),   ε = ρ·(g⊙mask)/‖g⊙mask‖,   minimise L_base(θ + ε)

    and, as in SAM, the update direction is ∇L_base evaluated at θ + ε.

    Base losses (`level`):
      token  — likelihood surrogate on length-normalised log-probs (no reference needed):
               L = −β · mean_i (mean_t log π(y_w,i) − mean_t log π(y_l,i))
      reward — a reward-margin loss against the reference policy (`ref` = (ref_chosen,
               ref_rejected) sums of log-probs; computed with `reference_logprobs` when None):
               base="dpo": DPO (with `label_smoothing`, i.e. cDPO, a data-robust variant);
               base="ipo": mean (h − 1/(2β))², h = (log π − log π_ref)(y_w) − (…)(y_l).

    **shapo_loss runs its own backward**: it computes g (torch.autograd.grad, `.grad` untouched),
    shifts `params` by ε in place, evaluates L_base(θ+ε) and calls backward on
    `backward_scale · L_base(θ+ε)`, which *adds* ∇L_base(θ+ε) into the `.grad` of the parameters
    (so gradient accumulation across micro-batches works), then restores θ bit-for-bit. The
    returned loss is detached: do not call backward on it. ρ = 0, or a mask (or gradient) that
    is zero, means no perturbation: one forward and one backward of the base loss at θ.
    info: loss (at θ+ε), loss_clean (at θ; = loss when not perturbed), sharpness (difference),
    perturbation_norm, grad_norm (‖g⊙mask‖), mask_density, plus the base loss's margin/accuracy.
    Data-parallel: `pairs` are this process's share and `backward_scale` its share of the batch
    (own pairs / all pairs); g = Σ over processes (via `reduce`) of the scaled gradients, so ε and
    the accumulated gradient are those of the whole batch. A process without pairs joins the
    reduction and adds nothing.
    """
    if level not in ("token", "reward"):
        raise ValueError(f"shapo: unknown level {level!r} (use token or reward)")
    if base not in ("dpo", "ipo"):
        raise ValueError(f"shapo: unknown base {base!r} (use dpo or ipo)")
    params = list(params)
    if mask is not None:
        mask = list(mask)
        if len(mask) != len(params) or any(m.shape != p.shape for m, p in zip(mask, params)):
            raise ValueError("shapo: mask must hold one tensor per parameter, of the parameter's shape")
    has_pairs = len(pairs) > 0
    if level == "reward" and ref is None and has_pairs:
        ref = reference_logprobs(model, pairs, pad_id, device)

    def base_loss():
        return _shapo_base(model, pairs, pad_id, device, ref, level=level, base=base, beta=beta,
                           label_smoothing=label_smoothing)

    step: List[Optional[torch.Tensor]] = []
    grad_norm, loss_clean = 0.0, None
    if rho != 0 and params:
        if has_pairs:
            clean, _ = base_loss()
            loss_clean = float(clean.detach())
            grads = _grads(clean * backward_scale, params)  # this process's part of the batch gradient
            del clean
        else:
            grads = [torch.zeros_like(p) for p in params]
        step, grad_norm = _ascent_step(reduce.sum(grads), rho, mask)
        del grads
    total = sum(p.numel() for p in params)
    kept = sum(float(m.sum()) for m in mask) if mask is not None else float(total)
    if not has_pairs:
        return torch.zeros((), device=device), {"grad_norm": grad_norm, "mask_density": kept / total if total else 0.0}
    with _Perturbation(params, step):
        loss, info = base_loss()
        (loss * backward_scale).backward()
    value = float(loss.detach())
    if loss_clean is None:
        loss_clean = value
    info = {"loss": value, "loss_clean": loss_clean, "sharpness": value - loss_clean,
            "perturbation_norm": _global_norm([s for s in step if s is not None]) if step else 0.0,
            "grad_norm": grad_norm, "mask_density": kept / total if total else 0.0, **info}
    return loss.detach(), info


def saliency_mask(model, pairs: Sequence[Pair], pad_id: int, device: torch.device, params: Sequence[torch.Tensor], *,
                  top_p: float = 0.1, beta: float = 0.1, ref: Optional[LogprobPair] = None,
                  chunk: Optional[int] = None, total: Optional[int] = None,
                  reduce: Reduce = LOCAL) -> List[torch.Tensor]:
    """0/1 masks (one per parameter, the parameter's shape and dtype) marking the top-`top_p` share of
    all entries of `params` by |∂L_DPO/∂θ| — a single global threshold across parameters.

    L_DPO is the DPO pair loss (β = `beta`) against `ref`, or against the LoRA-disabled base model
    when `ref` is None and the model is a PeftModel; otherwise the reference-free −log σ(β·m_θ).
    Exactly ⌈top_p·N⌉ entries are kept (ties broken by torch.topk). `chunk` pairs at a time are
    differentiated and their gradients summed (weighted by chunk size), so a large calibration set
    fits in memory; `.grad` is not touched. Data-parallel: `pairs` are this process's share of
    `total` pairs; the gradient is summed over processes (`reduce`) before the threshold, so every
    process selects the same subspace as one process would.
    """
    if not 0 < top_p <= 1:
        raise ValueError(f"saliency_mask: top_p must be in (0, 1], got {top_p}")
    params = list(params)
    if not params:
        return []
    try:
        from peft import PeftModel
        is_peft = isinstance(model, PeftModel)
    except ImportError:  # pragma: no cover
        is_peft = False
    n = len(pairs)
    size = chunk or max(n, 1)
    count = n if total is None else int(total)
    if count < 1:
        raise ValueError("saliency_mask: no pairs")
    summed = [torch.zeros_like(p, dtype=torch.float32) for p in params]
    for start in range(0, n, size):
        part = list(pairs[start:start + size])
        chosen, rejected = pair_logprobs(model, part, pad_id, device)
        if ref is not None:
            rc, rr = ref[0][start:start + size], ref[1][start:start + size]
        elif is_peft:
            rc, rr = reference_logprobs(model, part, pad_id, device)
        else:
            rc, rr = torch.zeros_like(chosen), torch.zeros_like(rejected)
        loss, _ = dpo_loss(chosen, rejected, rc, rr, beta=beta)
        for acc, g in zip(summed, _grads(loss * (len(part) / count), params)):
            acc.add_(g.float())
    flat = torch.cat([g.abs().flatten() for g in reduce.sum(summed)])
    keep = max(1, math.ceil(top_p * flat.numel()))
    chosen_idx = torch.topk(flat, keep, sorted=False).indices
    flat_mask = torch.zeros_like(flat)
    flat_mask[chosen_idx] = 1.0
    masks, offset = [], 0
    for p in params:
        masks.append(flat_mask[offset:offset + p.numel()].view_as(p).to(p.dtype))
        offset += p.numel()
    return masks


# ============================================================================ constrained SFT


def constrained_sft_loss(policy_logp_tokens: torch.Tensor, ref_logp_tokens: torch.Tensor, mask: torch.Tensor, *,
                         harmful: torch.Tensor, first_tokens: int = 5, kl_coef: float = 1.0) -> Tuple[torch.Tensor, Info]:
    """Token-wise constrained SFT (in the spirit of "safety alignment should be more than a few tokens deep").

    Inputs are `token_logprobs` outputs: [n, T] log-probs of the policy and the reference, and the
    response mask (responses are right-aligned, so a row's first response token is its first 1).

        NLL_i = −mean_t log π(y_i,t)                         (all response tokens of row i)
        P_i   = mean_{t ≤ first_tokens} (log π_ref(y_i,t) − log π(y_i,t))²   (first response tokens)
        loss  = mean_i [ NLL_i + kl_coef · harmful_i · P_i ]

    The penalty keeps the first tokens of the response to a harmful prompt (where a refusal is
    decided) close to the reference. The squared log-ratio of the target token is used instead of
    a full-vocabulary KL: it needs only the gathered log-probs already at hand, is ≥ 0 and zero
    exactly when the policy matches the reference on those tokens, and 2·KL ≈ E[(log ratio)²] to
    second order. On rows with harmful = False the loss is plain length-normalised NLL.
    info: loss, nll, penalty (mean P_i over harmful rows; 0 if none), harmful (their count).
    """
    mask = mask.to(policy_logp_tokens.dtype)
    harmful = harmful.to(device=policy_logp_tokens.device, dtype=torch.bool)
    if harmful.shape != mask.shape[:1]:
        raise ValueError(f"constrained_sft_loss: harmful has shape {tuple(harmful.shape)}, expected ({mask.shape[0]},)")
    nll = -mean_logprob(policy_logp_tokens * mask, mask)
    rank = mask.cumsum(-1) * mask
    first = ((rank >= 1) & (rank <= first_tokens)).to(mask.dtype)
    diff = (ref_logp_tokens.detach() - policy_logp_tokens) * first
    penalty = (diff ** 2).sum(-1) / first.sum(-1).clamp(min=1.0)
    h = harmful.to(mask.dtype)
    loss = (nll + kl_coef * h * penalty).mean()
    n_harmful = int(harmful.sum())
    info = {"loss": float(loss.detach()), "nll": float(nll.detach().mean()),
            "penalty": float((penalty.detach() * h).sum() / n_harmful) if n_harmful else 0.0,
            "harmful": float(n_harmful)}
    return loss, info


# ============================================================================ pairs


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


_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "bot": "assistant",
          "model": "assistant", "system": "system"}


class _Bad(Exception):
    """A row problem; the caller adds file and row."""


def load_preference_pairs(path) -> List[dict]:
    """Offline preference pairs: [{"prompt", "chosen", "rejected", "history"}], all strings but history.

    Accepted files: a JSON array or JSON Lines, rows in one of these layouts
      * ShareGPT (LLaMA-Factory's dpo_en_demo.json): "conversations" [{from, value}] ending with a
        human turn, "chosen"/"rejected" {from: gpt, value} (or plain strings);
      * "prompt"/"chosen"/"rejected" strings (the common JSONL layout); "prompt" may also be a list
        of {role, content} messages and "chosen"/"rejected" lists of messages (the last one is used)
        or a {role, content} / {from, value} dict;
      * alpaca-style "instruction" (+ "input") with "chosen"/"rejected".
    "prompt" is the last user turn; "history" holds the earlier turns as [{role, content}] (system
    turns included), as `data.loaders` does for chat rows, so `data.formatting` renders them.
    A malformed row raises DataError naming the file and the row (and line for JSON Lines).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"preference data: file not found: {path}")
    text = path.read_text(encoding="utf-8", errors="replace")
    rows = _read_json_rows(path, text)
    pairs = []
    for index, (line, row) in enumerate(rows):
        where = f"{path}:{line} (row {index + 1})" if line is not None else f"{path} row {index + 1}"
        try:
            pairs.append(_preference_row(row))
        except _Bad as exc:
            raise DataError(f"{where}: {exc}") from None
    if not pairs:
        raise DataError(f"preference data: {path} has no rows")
    return pairs


def _read_json_rows(path: Path, text: str) -> List[Tuple[Optional[int], object]]:
    """[(line or None, row)]: a JSON array (or {"data": [...]}) or JSON Lines."""
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{err.lineno}: not valid JSON: {err.msg}") from None
        return [(None, row) for row in data]
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append((number, json.loads(line)))
        except json.JSONDecodeError as err:
            if number == 1 and stripped.startswith("{"):
                try:  # one JSON document spread over several lines
                    data = json.loads(text)
                except json.JSONDecodeError:
                    pass
                else:
                    if isinstance(data, dict) and isinstance(data.get("data"), list):
                        return [(None, row) for row in data["data"]]
                    return [(None, data)]
            raise DataError(f"{path}:{number} (row {len(rows) + 1}): not valid JSON: {err.msg}") from None
    return rows


def _text(value, field: str) -> str:
    if not isinstance(value, str):
        raise _Bad(f"'{field}' must be a string, got {type(value).__name__}")
    if not value.strip():
        raise _Bad(f"'{field}' is empty")
    return value


def _turn(turn, field: str) -> dict:
    if not isinstance(turn, dict):
        raise _Bad(f"'{field}' turns must be objects, got {type(turn).__name__}")
    role = turn.get("role", turn.get("from"))
    content = turn.get("content", turn.get("value"))
    if not isinstance(role, str) or role.lower() not in _ROLES:
        raise _Bad(f"'{field}' has a turn with unknown role {role!r}")
    if not isinstance(content, str):
        raise _Bad(f"'{field}' has a turn without text ('value' or 'content')")
    return {"role": _ROLES[role.lower()], "content": content}


def _response(value, field: str) -> str:
    if isinstance(value, list):
        if not value:
            raise _Bad(f"'{field}' is an empty list")
        value = value[-1]
    if isinstance(value, dict):
        turn = _turn(value, field)
        if turn["role"] != "assistant":
            raise _Bad(f"'{field}' must be an assistant turn, got role {turn['role']!r}")
        value = turn["content"]
    return _text(value, field)


def _split_conversation(turns, field: str) -> Tuple[str, List[dict]]:
    if not isinstance(turns, list) or not turns:
        raise _Bad(f"'{field}' must be a non-empty list of turns")
    cleaned = [_turn(t, field) for t in turns]
    if cleaned[-1]["role"] != "user":
        raise _Bad(f"'{field}' must end with a user (human) turn, got {cleaned[-1]['role']!r}")
    return _text(cleaned[-1]["content"], field), cleaned[:-1]


def _preference_row(row) -> dict:
    if not isinstance(row, dict):
        raise _Bad(f"expected an object, got {type(row).__name__}")
    for key in ("chosen", "rejected"):
        if key not in row:
            raise _Bad(f"missing '{key}'")
    if "conversations" in row:
        prompt, history = _split_conversation(row["conversations"], "conversations")
    elif "prompt" in row:
        if isinstance(row["prompt"], list):
            prompt, history = _split_conversation(row["prompt"], "prompt")
        else:
            prompt, history = _text(row["prompt"], "prompt"), []
    elif "instruction" in row:
        instruction = _text(row["instruction"], "instruction")
        extra = row.get("input") or ""
        if not isinstance(extra, str):
            raise _Bad("'input' must be a string")
        prompt, history = (f"{instruction}\n\n{extra}" if extra.strip() else instruction), []
    else:
        raise _Bad("needs 'conversations', 'prompt' or 'instruction' next to 'chosen' and 'rejected'")
    return {"prompt": prompt, "chosen": _response(row["chosen"], "chosen"),
            "rejected": _response(row["rejected"], "rejected"), "history": history}
