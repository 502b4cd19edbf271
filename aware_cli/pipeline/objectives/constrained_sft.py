"""constrained_sft: SFT on the targets that keeps the first response tokens of harmful prompts near the
base model (no sampling, no verifier; docs/objectives.md)."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from aware_cli.config.schema import AwareConfig
from aware_cli.models.logprobs import mean_logprob, token_logprobs
from aware_cli.pipeline.objectives.pairs import Info
from aware_cli.pipeline.objectives.registry import Objective, Rollout, Update, register_objective
from aware_cli.pipeline.update import UpdateResult


def constrained_sft_loss(policy_logp_tokens: torch.Tensor, ref_logp_tokens: torch.Tensor, mask: torch.Tensor, *,
                         harmful: torch.Tensor, first_tokens: int = 5, kl_coef: float = 1.0) -> Tuple[torch.Tensor, Info]:
    """Token-wise constrained SFT (in the spirit of "safety alignment should be more than a few tokens deep").

    Inputs are `token_logprobs` outputs: [n, T] log-probs of the policy and the reference, and the
    response mask (responses are right-aligned, so a row's first response token is its first 1).

        NLL_i = −mean_t log π(y_i,t)                         (all response tokens of row i)
        P_i   = mean_{t ≤ first_tokens} (log π_ref(y_i,t) − log π(y_i,t))²   (first response tokens)
        loss  = mean_i [ NLL_i + kl_coef · harmful_i · P_i ]

    The penalty keeps the first tokens of the response to a harmful prompt (where a refusal is
    decided) close to the reference. The squared log-ratio of the target token is used instead of
    a full-vocabulary KL: it needs only the gathered log-probs already at hand, is ≥ 0 and zero
    exactly when the policy matches the reference on those tokens, and 2·KL ≈ E[(log ratio)²] to
    second order. On rows with harmful = False the loss is plain length-normalised NLL.
    info: loss, nll, penalty (mean P_i over harmful rows; 0 if none), harmful (their count).
    """
    mask = mask.to(policy_logp_tokens.dtype)
    harmful = harmful.to(device=policy_logp_tokens.device, dtype=torch.bool)
    if harmful.shape != mask.shape[:1]:
        raise ValueError(f"constrained_sft_loss: harmful has shape {tuple(harmful.shape)}, expected ({mask.shape[0]},)")
    nll = -mean_logprob(policy_logp_tokens * mask, mask)
    rank = mask.cumsum(-1) * mask
    first = ((rank >= 1) & (rank <= first_tokens)).to(mask.dtype)
    diff = (ref_logp_tokens.detach() - policy_logp_tokens) * first
    penalty = (diff ** 2).sum(-1) / first.sum(-1).clamp(min=1.0)
    h = harmful.to(mask.dtype)
    loss = (nll + kl_coef * h * penalty).mean()
    n_harmful = int(harmful.sum())
    info = {"loss": float(loss.detach()), "nll": float(nll.detach().mean()),
            "penalty": float((penalty.detach() * h).sum() / n_harmful) if n_harmful else 0.0,
            "harmful": float(n_harmful)}
    return loss, info


def constrained_sft_update(policy, prompts: Sequence[List[int]], targets: Sequence[List[int]],
                           harmful: Sequence[Optional[bool]]) -> Tuple[float, Dict[str, Any]]:
    """SFT on the targets; on harmful prompts the first response tokens stay near the base model.

    The loss is the mean over the step's B rows (trainer.batch_size, every rank's rows): each rank
    adds its rows' losses / B, so the gradients and values summed over ranks are the 1-process ones.
    """
    cfg = policy.cfg.objective
    model, pad, device = policy.model, policy.tokenizer.pad_token_id, policy.device
    chunk, total, n = policy.cfg.trainer.logprob_batch, 0.0, len(prompts)
    rows = policy.cfg.trainer.batch_size  # the global batch: a mean over it, accumulated rank by rank
    for start in range(0, n, chunk):
        part = slice(start, start + chunk)
        logp, mask = token_logprobs(model, prompts[part], targets[part], pad, device)
        with torch.no_grad(), model.disable_adapter():
            ref, _ = token_logprobs(model, prompts[part], targets[part], pad, device)
        flags = torch.tensor([bool(h) for h in harmful[part]], device=logp.device)
        loss, _ = constrained_sft_loss(logp, ref, mask, harmful=flags, first_tokens=cfg.first_tokens,
                                       kl_coef=cfg.constraint_coef)
        weighted = loss * (flags.numel() / rows)  # a mean over rows, accumulated chunk by chunk
        weighted.backward()
        total += float(weighted.detach())
    return total, {"harmful_rows": sum(bool(h) for h in harmful)}


@register_objective("constrained_sft")
class ConstrainedSFT(Objective):
    """`constrained_sft_loss` on the reference targets, as a mean over the step's rows."""

    samples = False
    scaling = "rows"

    def needs_reference(self, cfg: AwareConfig) -> bool:
        return True

    def update(self, policy, rollout: Rollout, step: int) -> Update:
        value, info = constrained_sft_update(policy, rollout.prompts,
                                             [policy.target_ids[ex.id] for ex in rollout.batch],
                                             [ex.harmful for ex in rollout.batch])
        return Update(UpdateResult(loss=value, loss_kl=0.0, logprobs={}, tokens=0), info)
