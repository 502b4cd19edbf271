"""The CPU decode-step attention against transformers' SDPA function, and the switch that installs it."""

import types

import pytest
import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from aware_cli.config import compose
from aware_cli.models import load_model
from aware_cli.pipeline.rollout.attention import NAME, cpu_decode_attention, decode_attention

CPU = torch.device("cpu")


def inputs(queries=1, rows=4, heads=6, kv_heads=2, keys=9, dim=8, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(rows, heads, queries, dim, generator=g, dtype=dtype)
    k = torch.randn(rows, kv_heads, keys, dim, generator=g, dtype=dtype)
    v = torch.randn(rows, kv_heads, keys, dim, generator=g, dtype=dtype)
    module = types.SimpleNamespace(num_key_value_groups=heads // kv_heads, is_causal=True, training=False)
    return module, q, k, v


@pytest.mark.parametrize("mask", ["none", "bool", "additive"])
def test_one_query_steps_match_transformers_sdpa(mask):
    module, q, k, v = inputs()
    allowed = torch.ones(4, 1, 1, 9, dtype=torch.bool)
    allowed[0, ..., :3] = False  # left padding of the first row
    attention_mask = {"none": None, "bool": allowed,
                      "additive": torch.zeros(4, 1, 1, 9).masked_fill(~allowed, torch.finfo(torch.float32).min)}[mask]
    ours, _ = decode_attention(module, q, k, v, attention_mask, scaling=0.3)
    theirs, _ = sdpa_attention_forward(module, q, k, v, attention_mask, scaling=0.3)
    assert ours.shape == theirs.shape == (4, 1, 6, 8)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_prefill_goes_to_transformers_sdpa(monkeypatch):
    module, q, k, v = inputs(queries=9)
    seen = []
    import transformers.integrations.sdpa_attention as sdpa

    monkeypatch.setattr(sdpa, "sdpa_attention_forward", lambda *a, **kw: seen.append(a[1].shape) or ("sdpa", None))
    assert decode_attention(module, q, k, v, None)[0] == "sdpa" and seen == [q.shape]


def test_the_switch_applies_to_sdpa_models_on_cpu_only_and_is_undone():
    model, _ = load_model(compose("smoke").config.model, for_training=False)
    assert model.config._attn_implementation == "sdpa"
    with cpu_decode_attention(model, CPU):
        assert model.config._attn_implementation == NAME
    assert model.config._attn_implementation == "sdpa"
    with cpu_decode_attention(model, torch.device("meta")):  # not the CPU: untouched
        assert model.config._attn_implementation == "sdpa"
    with pytest.raises(RuntimeError), cpu_decode_attention(model, CPU):
        raise RuntimeError("a failed decode")
    assert model.config._attn_implementation == "sdpa"
