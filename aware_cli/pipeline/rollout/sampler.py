"""The token sampler shared by both decoding engines (`engine`, `static_decode`).

Temperature / top-p sampling by inverse transform, from a seeded generator or from per-prompt
uniforms (`row_uniforms`), so a prompt's k samples do not depend on the rest of the batch.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch


def draws(row_seeds: Optional[Sequence[int]], seed: Optional[int], temperature: float, k: int, steps: int,
          device: torch.device) -> Tuple[Optional[torch.Generator], Optional[torch.Tensor]]:
    """(generator, uniforms) of one `generate` call: per-prompt uniforms with `row_seeds`, else a generator
    seeded `seed`; neither when greedy (temperature 0) or unseeded (the global RNG draws)."""
    generator = uniforms = None
    if row_seeds is not None and temperature > 0:
        uniforms = row_uniforms(row_seeds, k, steps, device)
    elif seed is not None and temperature > 0:
        generator = torch.Generator(device=device)
        generator.manual_seed(seed)
    return generator, uniforms


def row_uniforms(row_seeds: Sequence[int], k: int, steps: int, device: torch.device) -> torch.Tensor:
    """[len(row_seeds)·k, steps] float64 uniforms in [0, 1): prompt b's k rows from a generator seeded row_seeds[b].

    Row b·k + j, column t is the draw of prompt b's sample j at decode step t, whatever else is in the batch.
    """
    blocks = [torch.rand((k, steps), generator=torch.Generator().manual_seed(int(seed) % (1 << 63)),
                         dtype=torch.float64) for seed in row_seeds]
    return torch.cat(blocks).to(device) if blocks else torch.zeros((0, steps), dtype=torch.float64, device=device)


def sample_next(logits: torch.Tensor, temperature: float, top_p: float,
                generator: Optional[torch.Generator], uniforms: Optional[torch.Tensor] = None) -> torch.Tensor:
    """One token per row: greedy when temperature == 0, else softmax(logits / T) truncated to top-p.

    Drawn by inverse transform, one U[0, 1) value per row against the row's cumulative distribution
    (float64): `uniforms` when given (each row's token then depends on its own draw only), else one draw
    per row from `generator`. A row's worth of random numbers, not `torch.multinomial`'s exponential draw
    over the whole vocabulary (~10% of a CPU decode step at 49k tokens).
    """
    if temperature == 0.0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        outside = sorted_probs.cumsum(-1) - sorted_probs > top_p  # keep the smallest prefix with mass ≥ top_p
        sorted_probs = sorted_probs.masked_fill(outside, 0.0)
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_probs)
    if uniforms is None:
        uniforms = torch.rand(probs.shape[0], generator=generator, device=probs.device, dtype=torch.float64)
    cdf = probs.double().cumsum(-1)
    target = uniforms.to(device=cdf.device, dtype=cdf.dtype)[:, None] * cdf[:, -1:]  # first token whose cdf exceeds it
    return torch.searchsorted(cdf, target, right=True).squeeze(-1).clamp_(max=probs.shape[-1] - 1)
