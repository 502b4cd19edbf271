"""Parameter helpers shared by the sharpness-aware objectives (gapo, shapo): gradients without `.grad`,
a global norm, a normalised ascent step and an in-place perturbation restored bit-for-bit."""

from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import torch


def param_grads(loss: torch.Tensor, params: Sequence[torch.Tensor], *, retain_graph: bool = False) -> List[torch.Tensor]:
    """d loss / d params without touching `.grad`; parameters the loss does not reach get zeros."""
    grads = torch.autograd.grad(loss, list(params), retain_graph=retain_graph, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]


def global_norm(tensors: Sequence[torch.Tensor]) -> float:
    if not tensors:
        return 0.0
    return float(torch.linalg.vector_norm(torch.stack([t.detach().float().norm() for t in tensors])))


class Perturbation:
    """Add `deltas` to `params` in place and put the exact original values back afterwards.

    The shift is written through `p.data`, which does not bump autograd's version counter: a graph
    built at θ (GAPO keeps one for the policy margins) stays usable because θ is restored
    bit-for-bit (from saved copies, not by subtracting) before anything reads it again.
    """

    def __init__(self, params: Sequence[torch.Tensor], deltas: Sequence[torch.Tensor]):
        self.items = [(p, d) for p, d in zip(params, deltas) if d is not None]
        self.saved: List[torch.Tensor] = []

    def __enter__(self) -> "Perturbation":
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


def ascent_step(grads: Sequence[torch.Tensor], rho: float,
                 mask: Optional[Sequence[torch.Tensor]] = None) -> Tuple[List[Optional[torch.Tensor]], float]:
    """ε = rho · (g⊙mask)/‖g⊙mask‖ (norm over all tensors); ([] if ‖g⊙mask‖ = 0, that norm)."""
    if mask is not None:
        grads = [g * m.to(device=g.device, dtype=g.dtype) for g, m in zip(grads, mask)]
    norm = global_norm(grads)
    if rho == 0 or norm == 0.0 or not math.isfinite(norm):
        return [], norm
    scale = rho / norm
    return [g * scale for g in grads], norm
