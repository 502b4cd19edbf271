"""The sampling engine against transformers' generate, its sampler, and its EOS handling."""

import pytest
import torch

from aware_cli.config import compose
from aware_cli.models import load_model
from aware_cli.pipeline.rollout.engine import generate_k, sample_next, sampling_weights
from aware_cli.pipeline.rollout.sample import eos_token_ids, generate

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
    assert 0.62 < share < 0.71  # 0.6439 / (0.6439 + 0.2369 + 0.0871) = 0.665 renormalised; ±4σ at n = 2000


def test_sampling_weights_casts_while_sampling_and_restores_the_weights():
    torch.manual_seed(0)
    layer = torch.nn.Linear(8, 8)
    weight = layer.weight.detach().clone()
    with sampling_weights(layer, "bfloat16"):
        assert layer.weight.dtype == torch.bfloat16
        first = layer.weight.data
    assert layer.weight.dtype == torch.float32 and torch.equal(layer.weight, weight)
    with sampling_weights(layer, "bfloat16"):
        assert layer.weight.data.data_ptr() == first.data_ptr()  # unchanged weight: the cast copy is reused
    layer(torch.ones(1, 8)).sum().backward()
    torch.optim.SGD(layer.parameters(), lr=1.0).step()  # an update bumps the version: cast again
    with sampling_weights(layer, "bfloat16"):
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


def test_sampling_weights_merge_lora_exactly_and_rebuild_after_an_update():
    trained, tok = load_model(compose("smoke").config.model)  # the training model: peft LoRA on tiny
    lora = [m for m in trained.modules() if hasattr(m, "lora_B")]
    assert lora
    torch.manual_seed(0)
    with torch.no_grad():  # LoRA B starts at 0 (ΔW = 0): give the adapters something to merge
        for layer in lora:
            layer.lora_B["default"].weight.normal_(std=0.05)
    ids = torch.tensor([PROMPTS[0]])
    trained.eval()
    with torch.no_grad():
        reference = trained(input_ids=ids).logits
        with sampling_weights(trained, "model", merge_lora=True):
            assert all(layer.disable_adapters for layer in lora)  # the adapters are folded into the weights
            merged = trained(input_ids=ids).logits
            merged_ptr = lora[0].base_layer.weight.data_ptr()
        with sampling_weights(trained, "model", merge_lora=True):
            assert lora[0].base_layer.weight.data_ptr() == merged_ptr  # unchanged adapters: the copy is reused
        with sampling_weights(trained, "model", merge_lora=False):
            unmerged = trained(input_ids=ids).logits
    with torch.no_grad(), trained.disable_adapter():
        base_only = trained(input_ids=ids).logits
    assert not torch.allclose(base_only, reference, atol=1e-3)  # the adapters do change the function
    assert torch.allclose(merged, reference, atol=1e-5)
    assert torch.equal(unmerged, reference)
    assert not any(layer.disable_adapters for layer in lora)  # restored
    assert all(p.requires_grad for layer in lora for p in layer.lora_A["default"].parameters())
    assert lora[0].base_layer.weight.data_ptr() != merged_ptr  # the frozen base is back
    # an optimizer step changes the adapters: the merged copy is rebuilt and matches the new model
    trained.train()
    trained(input_ids=ids, labels=ids).loss.backward()
    torch.optim.SGD([p for p in trained.parameters() if p.requires_grad], lr=0.5).step()
    trained.eval()
    with torch.no_grad():
        updated = trained(input_ids=ids).logits
        with sampling_weights(trained, "bfloat16", merge_lora=True):
            assert lora[0].base_layer.weight.dtype == torch.bfloat16
            assert lora[0].base_layer.weight.data_ptr() != merged_ptr
            merged_bf16 = trained(input_ids=ids).logits.float()
    assert not torch.allclose(updated, reference, atol=1e-3)
    assert torch.allclose(merged_bf16, updated, atol=0.1)  # bf16 rounding of the merged weights only


def test_sample_next_draws_from_the_softmax():
    probs = torch.tensor([0.5, 0.25, 0.15, 0.1, 0.0])
    logits = probs.clamp(min=1e-30).log().repeat(20000, 1)
    logits[:, -1] = -float("inf")
    drawn = sample_next(logits, 1.0, 1.0, torch.Generator().manual_seed(3))
    counts = torch.bincount(drawn, minlength=5).double()
    expected = probs.double() * len(drawn)
    assert counts[-1] == 0  # a zero-probability token is never drawn
    chi2 = float((((counts[:4] - expected[:4]) ** 2) / expected[:4]).sum())
    assert chi2 < 16.3  # χ² with 3 degrees of freedom, p = 0.001
    again = sample_next(logits, 1.0, 1.0, torch.Generator().manual_seed(3))
    assert torch.equal(drawn, again)  # seeded
