"""The sampling engine against transformers' generate, its sampler, and its EOS handling."""

import pytest
import torch

from aware_cli.config import compose
from aware_cli.models import load_model
from aware_cli.pipeline.engine import generate_k, sample_next, sampling_precision
from aware_cli.pipeline.sample import eos_token_ids, generate

CPU = torch.device("cpu")
PROMPTS = [[1, 2, 3, 4, 5, 6], [7, 8, 9], [10, 11, 12, 13]]


@pytest.fixture(scope="module")
def tiny():
    model, tokenizer = load_model(compose("smoke").config.model, for_training=False)
    return model, tokenizer


def test_greedy_matches_transformers_generate(tiny):
    model, tok = tiny
    hf = generate(model, tok, PROMPTS, num_return=1, max_new_tokens=12, do_sample=False, device=CPU, engine="hf")
    ours = generate(model, tok, PROMPTS, num_return=1, max_new_tokens=12, do_sample=False, device=CPU, engine="aware")
    assert ours.ids == hf.ids


def test_k_samples_share_the_prefill_and_are_seeded(tiny):
    model, tok = tiny
    args = dict(max_new_tokens=10, eos_ids=eos_token_ids(model, tok), pad_id=tok.pad_token_id, device=CPU)
    a = generate_k(model, PROMPTS, 4, seed=7, **args)
    b = generate_k(model, PROMPTS, 4, seed=7, **args)
    c = generate_k(model, PROMPTS, 4, seed=8, **args)
    assert len(a) == 12 and a == b and a != c
    assert len({tuple(x) for x in a[:4]}) > 1  # the k samples of one prompt differ
    before = torch.get_rng_state()
    generate_k(model, PROMPTS, 2, seed=1, **args)
    assert torch.equal(before, torch.get_rng_state())  # its own generator: the global RNG is untouched


def test_rows_stop_at_eos_and_leave_the_batch(tiny):
    model, tok = tiny
    # make a frequent token the "EOS": rows end at different steps, and the rest must keep going correctly
    greedy = generate_k(model, PROMPTS, 1, max_new_tokens=12, eos_ids=[-1], pad_id=tok.pad_token_id, device=CPU,
                        temperature=0.0)
    stop = greedy[0][3]
    cut = generate_k(model, PROMPTS, 1, max_new_tokens=12, eos_ids=[stop], pad_id=tok.pad_token_id, device=CPU,
                     temperature=0.0)
    for full, ended in zip(greedy, cut):
        if stop in full:
            assert ended == full[: full.index(stop) + 1]
        else:
            assert ended == full  # rows still running after others left the batch are unchanged


def test_sample_next_temperature_and_top_p():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]] * 2000)
    g = torch.Generator().manual_seed(0)
    assert sample_next(logits[:3], 0.0, 1.0, g).tolist() == [0, 0, 0]  # temperature 0: greedy
    assert set(sample_next(logits, 1.0, 0.5, g).tolist()) == {0}  # top token holds 64% ≥ 0.5
    drawn = sample_next(logits, 1.0, 0.9, g).tolist()  # 64% + 24% = 88% < 0.9: three tokens kept
    assert set(drawn) == {0, 1, 2}
    share = drawn.count(0) / len(drawn)
    assert 0.66 < share < 0.78  # 0.6439 / 0.9362 renormalised ≈ 0.69


def test_sampling_precision_casts_while_sampling_and_restores_the_weights():
    torch.manual_seed(0)
    layer = torch.nn.Linear(8, 8)
    weight = layer.weight.detach().clone()
    with sampling_precision(layer, "bfloat16"):
        assert layer.weight.dtype == torch.bfloat16
        first = layer.weight.data
    assert layer.weight.dtype == torch.float32 and torch.equal(layer.weight, weight)
    with sampling_precision(layer, "bfloat16"):
        assert layer.weight.data.data_ptr() == first.data_ptr()  # unchanged weight: the cast copy is reused
    layer(torch.ones(1, 8)).sum().backward()
    torch.optim.SGD(layer.parameters(), lr=1.0).step()  # an update bumps the version: cast again
    with sampling_precision(layer, "bfloat16"):
        assert layer.weight.data.data_ptr() != first.data_ptr()
        refreshed = layer.weight.data.float()
    assert not torch.allclose(refreshed, weight.bfloat16().float())
    assert torch.allclose(refreshed, layer.weight.detach(), atol=1e-2)


def test_bfloat16_sampling_keeps_greedy_output_close_and_the_model_in_float32(tiny):
    model, tok = tiny
    fp32 = generate(model, tok, PROMPTS, num_return=1, max_new_tokens=8, do_sample=False, device=CPU)
    bf16 = generate(model, tok, PROMPTS, num_return=1, max_new_tokens=8, do_sample=False, device=CPU,
                    dtype="bfloat16")
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert [len(x) for x in bf16.ids[0]] and bf16.ids[0][0][:2] == fp32.ids[0][0][:2]  # same start, rounding aside
