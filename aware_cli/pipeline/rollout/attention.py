"""Decode-step attention on CPU: one query per row, computed as q·Kᵀ → softmax → ·V.

PyTorch's CPU SDPA kernel is built for long queries. In a decode step each row has one query (transformers packs
the grouped-query heads into g queries per key/value head), and there the kernel costs ~2.3× what two small
matmuls and a softmax do for the embedded model (docs/performance.md: 14% of a CPU decode went to it).
`cpu_decode_attention` registers that computation with transformers as the attention implementation
`aware_sdpa` and switches a model using `sdpa` to it for a `with` block; every call that is not a one-query step
on the CPU (the prefill, dropout, attention sinks, ...) still goes to transformers' own SDPA function, and the
masks are transformers' SDPA masks.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

NAME = "aware_sdpa"
_registered = False


def decode_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                     is_causal=None, **kwargs):
    """transformers' attention-function contract: ([rows, queries, heads, dim] output, None)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    rows, heads, queries, dim = query.shape
    kv_heads = key.shape[1]
    unusual = any(kwargs.get(name) is not None for name in ("position_bias", "softcap", "s_aux", "sinks"))
    if queries != 1 or query.device.type != "cpu" or dropout or unusual or heads % kv_heads:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    q = query.reshape(rows, kv_heads, heads // kv_heads, dim)  # the heads sharing a key/value head, as queries
    scores = torch.matmul(q, key.transpose(-1, -2)).float() * (dim ** -0.5 if scaling is None else scaling)
    if attention_mask is not None:  # [rows, 1, 1, keys]: boolean (True = attend) or additive
        if attention_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attention_mask, float("-inf"))
        else:
            scores = scores + attention_mask.float()
    out = torch.matmul(torch.softmax(scores, dim=-1).to(value.dtype), value)
    return out.reshape(rows, heads, 1, dim).transpose(1, 2).contiguous(), None


def _register() -> None:
    global _registered
    if not _registered:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

        AttentionInterface.register(NAME, decode_attention)
        AttentionMaskInterface.register(NAME, sdpa_mask)
        _registered = True


@contextlib.contextmanager
def cpu_decode_attention(model, device: torch.device) -> Iterator[None]:
    """Within the block, a model on the CPU whose attention is `sdpa` runs its one-query steps through
    `decode_attention`; other models and devices are left as they are."""
    configs = {} if device.type != "cpu" else {
        id(c): c for c in (getattr(m, "config", None) for m in model.modules())
        if getattr(c, "_attn_implementation", None) == "sdpa"}
    if not configs:
        yield
        return
    _register()
    try:
        for config in configs.values():
            config._attn_implementation = NAME
        yield
    finally:
        for config in configs.values():
            config._attn_implementation = "sdpa"
