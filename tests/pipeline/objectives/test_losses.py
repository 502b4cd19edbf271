"""Loss masking and length normalisation, and the gated loss against its formula, on a tiny Llama."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from aware_cli.config.schema import TrainerConfig
from aware_cli.models.logprobs import mean_logprob, token_logprobs
from aware_cli.pipeline.update import WeightedSequence, backward_gated_loss, build_scheduler, length_chunks

PAD = 0
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, pad_token_id=PAD)
    return LlamaForCausalLM(config).eval()


@torch.no_grad()
def manual_logprobs(model, prompt, response):
    """log π of each response token from one unpadded forward pass."""
    ids = torch.tensor([prompt + response])
    logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
    return [float(logp[len(prompt) + t - 1, tok]) for t, tok in enumerate(response)]


def test_token_logprobs_match_unpadded_forward_and_mask_prompt(model):
    prompts = [[5, 6, 7], [8, 9, 10, 11, 12, 13]]
    responses = [[20, 21, 22, 23], [30]]
    with torch.no_grad():
        logp, mask = token_logprobs(model, prompts, responses, PAD, CPU)
    assert mask.tolist() == [[1, 1, 1, 1], [0, 0, 0, 1]]  # response tokens only, never the prompt
    assert logp[0].tolist() == pytest.approx(manual_logprobs(model, prompts[0], responses[0]), abs=1e-5)
    assert logp[1, -1].item() == pytest.approx(manual_logprobs(model, prompts[1], responses[1])[0], abs=1e-5)
    assert logp[1, :3].tolist() == [0.0, 0.0, 0.0]


def test_changing_the_prompt_length_of_a_neighbour_changes_nothing(model):
    with torch.no_grad():
        alone, _ = token_logprobs(model, [[5, 6, 7]], [[20, 21]], PAD, CPU)
        padded, _ = token_logprobs(model, [[5, 6, 7], [1] * 12], [[20, 21], [3, 4, 5, 6, 7]], PAD, CPU)
    assert padded[0, -2:].tolist() == pytest.approx(alone[0].tolist(), abs=1e-5)


def test_mean_logprob_is_length_normalised():
    logp = torch.tensor([[0.0, -1.0, -3.0], [0.0, 0.0, -2.0]])
    mask = torch.tensor([[0.0, 1.0, 1.0], [0.0, 0.0, 1.0]])
    assert mean_logprob(logp, mask).tolist() == [-2.0, -2.0]


def test_gated_loss_matches_formula_and_skips_zero_weights(model):
    B, k, beta, lam = 2, 2, 0.25, 1.0
    prompt, target = [5, 6, 7], [20, 21, 22]
    samples = [[30, 31], [32, 33, 34]]
    adv = [1.0, -1.0]
    seqs = [WeightedSequence(prompt, target, weight=-(1 - beta) / B)]
    seqs += [WeightedSequence(prompt, s, weight=-beta * lam * a / (k * B), is_sample=True) for s, a in zip(samples, adv)]
    seqs += [WeightedSequence([8, 9], [40], weight=-1.0 / B),                     # second input: plain SFT (β=0)
             WeightedSequence([8, 9], [41], weight=0.0, is_sample=True)]          # zero weight: never forwarded
    model.zero_grad()
    result = backward_gated_loss(model, seqs, num_samples=B * k, pad_id=PAD, device=CPU, chunk=2)
    assert sorted(result.logprobs) == [0, 1, 2, 3]

    def lp(p, r):
        values = manual_logprobs(model, p, r)
        return sum(values) / len(values)

    l_sft = -lp(prompt, target)
    l_pg = -(adv[0] * lp(prompt, samples[0]) + adv[1] * lp(prompt, samples[1])) / k
    expected = ((1 - beta) * l_sft + beta * lam * l_pg + (-lp([8, 9], [40]))) / B
    assert result.loss == pytest.approx(expected, abs=1e-5)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    model.zero_grad()


def test_gradient_is_the_same_in_one_chunk_or_many(model):
    seqs = [WeightedSequence([5, 6], [7, 8], -0.5), WeightedSequence([9], [10, 11, 12], -0.3, True),
            WeightedSequence([13, 14, 15], [16], 0.2, True)]
    grads = []
    for chunk in (1, 3):
        model.zero_grad()
        backward_gated_loss(model, seqs, num_samples=2, pad_id=PAD, device=CPU, chunk=chunk)
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    assert torch.allclose(grads[0], grads[1], atol=1e-6)
    model.zero_grad()


def test_length_chunks_partition_and_keep_short_samples_apart_from_long_targets():
    lengths = [180, 70, 175, 60, 178, 65, 182, 72]  # SFT targets (long) interleaved with sampled responses
    chunks = length_chunks(list(range(8)), lengths, 16)
    assert sorted(i for c in chunks for i in c) == list(range(8))
    assert [sorted(c) for c in chunks] == [[1, 3, 5, 7], [0, 2, 4, 6]]  # one pass each, not one padded to 182
    # equal lengths: no split beyond what the size limit forces; every pass within the limit
    assert len(length_chunks(list(range(10)), [50] * 10, 16)) == 1
    sized = length_chunks(list(range(40)), [30 + i for i in range(40)], 7)
    assert all(len(c) <= 7 for c in sized) and sorted(i for c in sized for i in c) == list(range(40))
    assert length_chunks([], [], 4) == []


def test_warmup_then_cosine_schedule():
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([param], lr=1.0)
    sched = build_scheduler(opt, TrainerConfig(lr=1.0, warmup_steps=1, max_steps=3, min_lr_ratio=0.0))
    lrs = []
    for _ in range(4):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.5, 1.0, 0.5, 0.0])
