"""Stage 4: the gated per-sample loss, its backward pass, and the optimizer/schedule.

Per input x (AWARE-ALGORITHM.md step 6):
    L(x) = (1 − β)·L_SFT(x) + β·λ_pg·L_PG(x)
    L_SFT = −mean_t log π(y_t)            over the target y (y* or a refusal)
    L_PG  = −(1/k) Σ_i A_i · mean_t log π(ŷ_i,t)
Batch loss = mean over inputs. Both terms are linear in per-sequence length-normalised
log-probs, so every sequence gets one weight and the backward pass runs in chunks of at most
`trainer.logprob_batch` sequences of similar length (`length_chunks`); sequences whose weight is 0 are
never forwarded.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Dict, List, Tuple

import torch
from torch.distributed.tensor import DTensor

from aware_cli.config.schema import TrainerConfig
from aware_cli.models.logprobs import mean_logprob, token_logprobs


@dataclass
class WeightedSequence:
    """One sequence of the update: prompt ids + response ids and its weight in the batch loss."""

    prompt: List[int]
    response: List[int]
    weight: float  # d(batch loss)/d(mean log-prob): negative, since raising log-prob lowers the loss
    is_sample: bool = False  # a sampled response (KL applies) rather than an SFT target
    unlikely: bool = False  # unlikelihood: the loss gains weight·(−log(1 − exp ℓ)), ℓ the mean log-prob


@dataclass
class UpdateResult:
    loss: float  # the batch loss whose gradient was accumulated
    loss_kl: float
    logprobs: Dict[int, float]  # index in `sequences` -> its length-normalised log-prob (forwarded ones only)
    tokens: int  # non-padding tokens forwarded
    backward: bool = True  # a gradient was accumulated (False: every weight was 0, nothing back-propagated)


def backward_gated_loss(model, sequences: List[WeightedSequence], *, num_samples: int, pad_id: int,
                        device: torch.device, chunk: int, kl_coef: float = 0.0) -> UpdateResult:
    """Accumulate gradients of Σ weight·mean_logprob (+ KL) in chunks; no optimizer step.

    Sequences with weight 0 (σ = 0 groups, β = 0 samples) are skipped unless the KL term needs them.
    `num_samples` (B·k) normalises the KL penalty to a mean over sampled responses.
    """
    active = [i for i, s in enumerate(sequences) if s.weight != 0.0 or (kl_coef > 0 and s.is_sample)]
    logprobs: Dict[int, float] = {}
    loss_value, kl_value, tokens, backward = 0.0, 0.0, 0, False
    for index in length_chunks(active, [len(s.prompt) + len(s.response) for s in sequences], chunk):
        part = [sequences[i] for i in index]
        logp, mask = token_logprobs(model, [s.prompt for s in part], [s.response for s in part], pad_id, device)
        lp = mean_logprob(logp, mask)
        weights = torch.tensor([s.weight for s in part], device=lp.device, dtype=lp.dtype)
        loss = (weights * unlikelihood_terms(lp, [s.unlikely for s in part])).sum()
        if kl_coef > 0:
            kl = _k3_kl(model, part, logp, mask, pad_id, device).sum() / num_samples
            loss = loss + kl_coef * kl
            kl_value += float(kl.detach())
        if loss.requires_grad:
            loss.backward()
            backward = True
        loss_value += float(loss.detach())
        tokens += int(mask.sum()) + sum(len(s.prompt) for s in part)
        logprobs.update(zip(index, lp.detach().tolist()))
    return UpdateResult(loss=loss_value, loss_kl=kl_value, logprobs=logprobs, tokens=tokens, backward=backward)


def unlikelihood_terms(lp: torch.Tensor, unlikely: List[bool]) -> torch.Tensor:
    """ℓ for ordinary sequences; −log(1 − exp ℓ) for `unlikely` ones (unlikelihood on the per-token geometric
    mean probability). Its slope in ℓ, e^ℓ/(1 − e^ℓ), vanishes as the sequence becomes unlikely: it pushes a
    response down only while the model still finds it likely, unlike −ℓ, which pushes forever."""
    if not any(unlikely):
        return lp
    mask = torch.tensor(unlikely, device=lp.device)
    p = torch.exp(lp.float()).clamp(max=1.0 - 1e-6)
    return torch.where(mask, -torch.log1p(-p).to(lp.dtype), lp)


def length_chunks(indices: List[int], lengths: List[int], max_size: int) -> List[List[int]]:
    """`indices` split into forward passes of ≤ `max_size` sequences that waste little on padding.

    Each pass is padded to its longest sequence, so a short sampled response batched with a long SFT target
    costs as much as the target. The indices are sorted by length and cut where the padded tokens saved
    exceed one extra pass's price, counted as one row of the longest sequence (dynamic programming over
    the cut points: minimise Σ rows·width + passes·longest). The loss is a sum over passes, so the order
    changes nothing but the floating-point summation order.
    """
    order = sorted(indices, key=lambda i: (lengths[i], i))
    n = len(order)
    if n == 0:
        return []
    price = max(lengths[i] for i in order)
    best = [0.0] + [math.inf] * n  # best[j]: cost of the first j sorted sequences
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        for i in range(max(0, j - max_size), j):  # the last pass holds order[i:j], padded to lengths[order[j-1]]
            cost = best[i] + (j - i) * lengths[order[j - 1]] + price
            if cost < best[j]:
                best[j], cut[j] = cost, i
    chunks, j = [], n
    while j > 0:
        chunks.append(order[cut[j]:j])
        j = cut[j]
    return chunks[::-1]


def _k3_kl(model, part, logp, mask, pad_id, device) -> torch.Tensor:
    """Per-sequence mean of the k3 estimator exp(r) − r − 1, r = log π_ref − log π, on sample tokens only."""
    is_sample = torch.tensor([s.is_sample for s in part], device=logp.device, dtype=logp.dtype)
    with torch.no_grad(), model.disable_adapter():
        ref_logp, _ = token_logprobs(model, [s.prompt for s in part], [s.response for s in part], pad_id, device)
    r = (ref_logp - logp) * mask
    k3 = (torch.exp(r) - r - 1.0) * mask
    return k3.sum(-1) / mask.sum(-1).clamp(min=1.0) * is_sample


def compute_precision(precision: str, device: torch.device):
    """The forward/backward context of `trainer.precision` (resolved): bfloat16 autocast for mixed."""
    if precision == "mixed":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def build_optimizer(params, cfg: TrainerConfig) -> torch.optim.Optimizer:
    fused = bool(params) and params[0].is_cuda
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused or None)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainerConfig) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up to lr, then cosine decay to lr·min_lr_ratio at max_steps."""

    def factor(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / (cfg.warmup_steps + 1)
        span = max(1, cfg.max_steps - cfg.warmup_steps)
        progress = min(1.0, (step - cfg.warmup_steps) / span)
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def clip_and_step(model_params, optimizer, scheduler, max_grad_norm: float, loss: float) -> Tuple[float, bool]:
    """Clip, step and zero grads; returns (pre-clip gradient norm, skipped).

    A non-finite loss or gradient norm skips the update (grads are dropped, the schedule does not
    advance), so one bad batch cannot write NaNs into the weights.
    """
    grads = [p.grad for p in model_params if p.grad is not None]
    if grads and isinstance(grads[0], DTensor):  # fsdp2 shards: the norm of the whole gradient, same on every rank
        norm = float(torch.nn.utils.get_total_norm(grads).full_tensor())
    else:
        norm = float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))) if grads else 0.0
    skipped = not (math.isfinite(loss) and math.isfinite(norm))
    if not skipped:
        if max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(model_params, max_grad_norm)
        optimizer.step()
        scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return norm, skipped
