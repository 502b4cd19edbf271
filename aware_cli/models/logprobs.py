"""Token log-probabilities of responses given prompts, prompt tokens masked.

Sequences are left-padded ([pad.. prompt response]) so every response ends at the last column:
the forward pass then only needs logits for the last `max_response_len + 1` positions
(`logits_to_keep`), which keeps the (tokens × vocabulary) logits tensor small.
"""

from __future__ import annotations

from typing import List, Sequence, Tuple

import torch


def pack_left(sequences: Sequence[List[int]], pad_id: int, device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
    """Left-pad id lists into (input_ids, attention_mask)."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, width - len(seq):] = torch.tensor(seq, dtype=torch.long)
        mask[row, width - len(seq):] = 1
    return ids.to(device), mask.to(device)


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that start at 0 on the first real token, as `generate` does with left padding."""
    return (attention_mask.cumsum(-1) - 1).clamp(min=0)


def token_logprobs(model, prompts: Sequence[List[int]], responses: Sequence[List[int]], pad_id: int,
                   device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
    """log π(y_t | x, y_<t) for every response token: (logp, mask), both [n, max_response_len].

    `mask` is 1 on response tokens and 0 on padding, so prompt tokens never contribute.
    """
    lengths = [len(r) for r in responses]
    width = max(lengths)
    ids, attn = pack_left([list(p) + list(r) for p, r in zip(prompts, responses)], pad_id, device)
    out = model(input_ids=ids, attention_mask=attn, position_ids=position_ids(attn), logits_to_keep=width + 1,
                use_cache=False)
    targets = ids[:, -width:]
    logp = selected_logprobs(out.logits[:, :-1, :], targets)  # position t predicts token t+1
    mask = torch.zeros_like(logp)
    for row, n in enumerate(lengths):
        if n:
            mask[row, width - n:] = 1.0
    return logp * mask, mask


class _SelectedLogProbs(torch.autograd.Function):
    """log_softmax(logits)[target] in float32, keeping only the logits themselves for the backward pass.

    `log_softmax(logits.float()).gather(target)` would keep a float32 copy of the whole
    (sequences × tokens × vocabulary) tensor alive until the backward pass, twice the size of bf16
    logits and usually the largest tensor of the update. Here the forward keeps the logits as they
    came (bf16 on GPU) and the per-position log-sum-exp; the backward recomputes the softmax a slice
    at a time: d/dz_v log p(y) = 1[v = y] − softmax(z)_v.
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor, rows: int) -> torch.Tensor:
        logp, lse = _selected(logits, targets, rows)
        ctx.save_for_backward(logits, targets, lse)
        ctx.rows = rows
        return logp

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        logits, targets, lse = ctx.saved_tensors
        grad_logits = torch.empty_like(logits)
        for start in range(0, logits.shape[0], ctx.rows):
            part = slice(start, start + ctx.rows)
            g = grad[part].float()
            d = torch.exp(logits[part].float() - lse[part].unsqueeze(-1)).mul_(-g.unsqueeze(-1))
            d.scatter_add_(-1, targets[part].unsqueeze(-1), g.unsqueeze(-1))
            grad_logits[part] = d.to(logits.dtype)
        return grad_logits, None, None


def _selected(logits: torch.Tensor, targets: torch.Tensor, rows: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """(log p(target), log-sum-exp) per position, the float32 softmax built `rows` sequences at a time."""
    lse = torch.empty(targets.shape, dtype=torch.float32, device=logits.device)
    for start in range(0, logits.shape[0], rows):
        lse[start:start + rows] = torch.logsumexp(logits[start:start + rows].float(), dim=-1)
    picked = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1).float()
    return picked - lse, lse


def selected_logprobs(logits: torch.Tensor, targets: torch.Tensor, rows: int = 4) -> torch.Tensor:
    """log softmax(logits)[..., target] as float32 ([n, T, V], [n, T] → [n, T]).

    On accelerators the memory-lean form (`_SelectedLogProbs`): there memory is what runs out, and
    the recomputed softmax is a few memory-bound passes next to the model's matmuls. On the CPU the
    plain form: RAM is ample and the recomputation measured ~1.8× slower there.
    """
    if logits.device.type == "cpu":
        return torch.log_softmax(logits.float(), dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return lean_selected_logprobs(logits, targets, rows)


def lean_selected_logprobs(logits: torch.Tensor, targets: torch.Tensor, rows: int = 4) -> torch.Tensor:
    """The memory-lean form on any device (what `selected_logprobs` uses on accelerators; tested on CPU)."""
    if not (torch.is_grad_enabled() and logits.requires_grad):  # nothing to differentiate: no autograd node
        return _selected(logits, targets, rows)[0]
    return _SelectedLogProbs.apply(logits, targets, rows)


def mean_logprob(logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Length-normalised log-probability per sequence: (1/|y|) Σ_t log π(y_t | ...)."""
    return logp.sum(-1) / mask.sum(-1).clamp(min=1.0)
