"""The static-cache / CUDA-graph decoder against the dynamic engine (and so against `model.generate`).

On CPU the decoder runs eagerly (same cache, masks and sampler as on GPU, no graph); the CUDA
tests replay the captured graph and are skipped where there is no GPU. Comparisons between the two
engines run the tiny model in float64: their attention masks differ in form (additive vs boolean),
so in float32 a random model's near-tied logits can flip a token on some CPUs.
"""

import pytest
import torch

from aware_cli.config import compose
from aware_cli.models import load_model
from aware_cli.pipeline.rollout.engine import generate_k
from aware_cli.pipeline.rollout.static_decode import SlotCache, generate_k_static, supports_static

CPU = torch.device("cpu")
PROMPTS = [[1, 2, 3, 4, 5, 6], [7, 8, 9], [10, 11, 12, 13]]  # uneven: left padding inside the batch
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(scope="module")
def tiny():
    model, tok = load_model(compose("smoke", ["model.device=cpu"]).config.model, for_training=False)
    return model.double(), tok


@pytest.fixture(scope="module")
def tiny_lora():
    model, tok = load_model(compose("smoke", ["model.finetune=lora", "model.device=cpu"]).config.model,
                            for_training=True)
    return model.double(), tok


def both(model, tok, device, **kwargs):
    args = dict(pad_id=tok.pad_token_id, device=device, **kwargs)
    dynamic = generate_k(model, PROMPTS, cuda_graphs=False, **args)
    static = generate_k_static(model, PROMPTS, use_graph=device.type == "cuda", **args)
    return dynamic, static


def test_supports_the_tiny_llama(tiny):
    assert supports_static(tiny[0]) is None


def test_greedy_and_seeded_sampling_match_the_dynamic_engine(tiny):
    model, tok = tiny
    dynamic, static = both(model, tok, CPU, k=2, max_new_tokens=12, eos_ids=[-1], temperature=0.0)
    assert static == dynamic and len(static) == 6 and all(len(s) == 12 for s in static)
    # sampled at temperature 1 from near-uniform logits: one differing logit would change the draws
    dynamic, static = both(model, tok, CPU, k=3, max_new_tokens=12, eos_ids=[], seed=5, temperature=1.0)
    assert static == dynamic
    assert len({tuple(s) for s in static[:3]}) > 1  # the k samples of a prompt differ


def test_rows_end_at_eos_and_the_others_go_on(tiny):
    model, tok = tiny
    full = generate_k_static(model, PROMPTS, 1, max_new_tokens=12, eos_ids=[-1], pad_id=tok.pad_token_id,
                             device=CPU, temperature=0.0)
    stop = full[2][5]  # the third row produces it at step 5
    cut = generate_k_static(model, PROMPTS, 1, max_new_tokens=12, eos_ids=[stop], pad_id=tok.pad_token_id,
                            device=CPU, temperature=0.0, check_every=2)
    for whole, ended in zip(full, cut):
        assert ended == (whole[: whole.index(stop) + 1] if stop in whole else whole)


def test_lora_policy_is_decoded_with_its_adapters(tiny_lora):
    model, tok = tiny_lora
    with torch.no_grad():  # non-zero adapters, so that a decoder ignoring them would differ
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5, generator=torch.Generator().manual_seed(1))
    dynamic, static = both(model, tok, CPU, k=2, max_new_tokens=10, eos_ids=[], seed=3, temperature=1.0)
    assert static == dynamic
    assert model.training  # the training mode comes back


def test_slot_cache_writes_at_the_slot_and_repeats_rows():
    cache = SlotCache(length=5, device=CPU)
    keys = torch.arange(2 * 1 * 3 * 2, dtype=torch.float32).view(2, 1, 3, 2)
    k, v = cache.update(keys, -keys, 0)
    assert k.shape == (2, 1, 5, 2) and torch.equal(k[:, :, :3], keys) and not k[:, :, 3:].any()
    cache.repeat_rows(2)
    cache.slot.fill_(3)
    step = torch.ones(4, 1, 1, 2)
    k, v = cache.update(step, step, 0)
    assert torch.equal(k[:, :, 3], torch.ones(4, 1, 2)) and torch.equal(k[1, :, :3], keys[0])
    assert torch.equal(v[3, :, :3], -keys[1])


def cuda_tiny(dtype):
    model, tok = load_model(compose("smoke", ["model.device=cuda"]).config.model, for_training=False)
    return model.to(dtype), tok, next(model.parameters()).device


@cuda
def test_cuda_graph_decoding_matches_the_dynamic_engine():
    model, tok, device = cuda_tiny(torch.float64)
    dynamic, static = both(model, tok, device, k=4, max_new_tokens=24, eos_ids=[-1], temperature=0.0)
    assert static == dynamic
    dynamic, static = both(model, tok, device, k=4, max_new_tokens=24, eos_ids=[], seed=11, temperature=1.0,
                           top_p=0.9)
    assert static == dynamic


@cuda
def test_cuda_graph_replay_equals_eager_static_decoding_in_bf16():
    model, tok, device = cuda_tiny(torch.bfloat16)  # the same kernels, replayed: identical tokens
    args = dict(max_new_tokens=40, eos_ids=[], pad_id=tok.pad_token_id, device=device, seed=2, top_p=0.95)
    replayed = generate_k_static(model, PROMPTS, 4, use_graph=True, **args)
    eager = generate_k_static(model, PROMPTS, 4, use_graph=False, **args)
    assert replayed == eager and all(len(r) == 40 for r in replayed)


@cuda
def test_cuda_sampling_uses_the_graph_and_stops_at_eos():
    model, tok, device = cuda_tiny(torch.float64)
    full = generate_k(model, PROMPTS, 2, max_new_tokens=20, eos_ids=[-1], pad_id=tok.pad_token_id, device=device,
                      temperature=0.0)
    stop = full[4][6]
    cut = generate_k(model, PROMPTS, 2, max_new_tokens=20, eos_ids=[stop], pad_id=tok.pad_token_id, device=device,
                     temperature=0.0)
    for whole, ended in zip(full, cut):
        assert ended == (whole[: whole.index(stop) + 1] if stop in whole else whole)
    assert not getattr(model, "_aware_static_failed", None)  # the graph path ran, no fallback
