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
    logits = out.logits[:, :-1, :].float()  # position t predicts token t+1
    targets = ids[:, -width:]
    logp = torch.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    mask = torch.zeros_like(logp)
    for row, n in enumerate(lengths):
        if n:
            mask[row, width - n:] = 1.0
    return logp * mask, mask


def mean_logprob(logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Length-normalised log-probability per sequence: (1/|y|) Σ_t log π(y_t | ...)."""
    return logp.sum(-1) / mask.sum(-1).clamp(min=1.0)
