"""ShaPO: sharpness-aware preference optimisation on a salient subspace (reconstructed from its abstract;
docs/objectives.md). The subspace (`saliency_mask`) is re-selected every `objective.saliency_every`
steps and kept in `policy.state` (saved with checkpoints). It perturbs the weights in place, so it
does not run under FSDP2.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from aware_cli.config.schema import AwareConfig
from aware_cli.pipeline.objectives.dpo import dpo_loss
from aware_cli.pipeline.objectives.pairs import (LOCAL, Info, LogprobPair, Pair, PairwiseObjective, Reduce,
                                                 pair_logprobs, reference_logprobs)
from aware_cli.pipeline.objectives.perturb import Perturbation, ascent_step, global_norm, param_grads
from aware_cli.pipeline.objectives.registry import register_objective


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
            grads = param_grads(clean * backward_scale, params)  # this process's part of the batch gradient
            del clean
        else:
            grads = [torch.zeros_like(p) for p in params]
        step, grad_norm = ascent_step(reduce.sum(grads), rho, mask)
        del grads
    total = sum(p.numel() for p in params)
    kept = sum(float(m.sum()) for m in mask) if mask is not None else float(total)
    if not has_pairs:
        return torch.zeros((), device=device), {"grad_norm": grad_norm, "mask_density": kept / total if total else 0.0}
    with Perturbation(params, step):
        loss, info = base_loss()
        (loss * backward_scale).backward()
    value = float(loss.detach())
    if loss_clean is None:
        loss_clean = value
    info = {"loss": value, "loss_clean": loss_clean, "sharpness": value - loss_clean,
            "perturbation_norm": global_norm([s for s in step if s is not None]) if step else 0.0,
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
        for acc, g in zip(summed, param_grads(loss * (len(part) / count), params)):
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


@register_objective("shapo")
class ShaPO(PairwiseObjective):
    """`shapo_loss` on the step's pairs, on the subspace of `saliency_mask` (re-selected every N steps)."""

    fsdp2 = False  # it shifts and differentiates `policy.params`, which FSDP2 keeps sharded

    def needs_reference(self, cfg: AwareConfig) -> bool:
        return cfg.objective.shapo_level == "reward"

    def pair_loss(self, policy, pairs: Sequence[Pair], step: int, *, total: int, scale: float,
                  reduce: Reduce) -> Tuple[float, Dict[str, Any]]:
        cfg = policy.cfg.objective
        model, pad, device = policy.model, policy.tokenizer.pad_token_id, policy.device
        if policy.state.get("saliency_mask") is None or step % cfg.saliency_every == 0:
            policy.state["saliency_mask"] = saliency_mask(model, pairs, pad, device, policy.params,
                                                          top_p=cfg.saliency_top_p, beta=cfg.beta,
                                                          total=total, reduce=reduce)
        loss, info = shapo_loss(model, pairs, pad, device, policy.params, policy.state["saliency_mask"],
                                beta=cfg.beta, rho=cfg.rho, level=cfg.shapo_level,
                                label_smoothing=cfg.label_smoothing, backward_scale=scale, reduce=reduce)
        return float(loss.detach()) * scale, info  # shapo_loss ran its own backward
