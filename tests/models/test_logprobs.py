"""The memory-lean selected log-probabilities against log_softmax + gather, values and gradients."""

import torch

from aware_cli.models.logprobs import lean_selected_logprobs, selected_logprobs


def reference(logits, targets):
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def test_values_and_gradients_match_log_softmax_gather():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 7, 11, generator=g, dtype=torch.float64) * 3
    targets = torch.randint(0, 11, (5, 7), generator=g)
    weights = torch.randn(5, 7, generator=g, dtype=torch.float64)
    mine = logits.clone().requires_grad_(True)
    theirs = logits.clone().requires_grad_(True)
    out = lean_selected_logprobs(mine, targets, rows=2)  # slices of 2, 2 and 1 sequences
    (out.double() * weights).sum().backward()
    expected = torch.log_softmax(theirs, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    (expected * weights).sum().backward()
    assert out.dtype == torch.float32
    assert torch.allclose(out.double(), expected, atol=1e-6)
    assert torch.allclose(mine.grad, theirs.grad, atol=1e-6)


def test_bf16_logits_keep_their_dtype_and_give_float32_logprobs():
    logits = torch.randn(3, 4, 50, dtype=torch.bfloat16, requires_grad=True)
    targets = torch.randint(0, 50, (3, 4))
    out = lean_selected_logprobs(logits, targets)
    assert out.dtype == torch.float32
    assert torch.allclose(out, reference(logits.detach(), targets), atol=1e-5)
    out.sum().backward()
    assert logits.grad.dtype == torch.bfloat16
    # each position's gradient sums to ~0 (softmax sums to one): 1 − Σ softmax
    assert logits.grad.float().sum(-1).abs().max() < 0.05


def test_no_grad_path_needs_no_autograd():
    logits = torch.randn(2, 3, 9)
    targets = torch.randint(0, 9, (2, 3))
    with torch.no_grad():
        out = lean_selected_logprobs(logits, targets)
    assert torch.allclose(out, reference(logits, targets), atol=1e-6) and not out.requires_grad


def test_cpu_uses_the_plain_form_with_the_same_values():
    logits = torch.randn(2, 3, 9, requires_grad=True)
    targets = torch.randint(0, 9, (2, 3))
    out = selected_logprobs(logits, targets)
    assert out.grad_fn is not None and "SelectedLogProbs" not in type(out.grad_fn).__name__  # not the lean form
    assert torch.allclose(out, lean_selected_logprobs(logits, targets), atol=1e-6)
