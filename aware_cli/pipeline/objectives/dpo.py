"""DPO: the standard preference loss against the reference model (the base with LoRA disabled).

docs/objectives.md gives the formula, its constants and diagnostics.
"""

from __future__ import annotations

from typing import Any, Dict, Sequence, Tuple

import torch
import torch.nn.functional as F

from aware_cli.config.schema import AwareConfig
from aware_cli.pipeline.objectives.pairs import (Info, Pair, PairwiseObjective, Reduce, pair_logprobs,
                                                 reference_logprobs)
from aware_cli.pipeline.objectives.registry import register_objective


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, *, beta: float = 0.1, label_smoothing: float = 0.0) -> Tuple[torch.Tensor, Info]:
    """Standard DPO.

        z_i  = β·((log π(y_w) − log π_ref(y_w)) − (log π(y_l) − log π_ref(y_l)))
        loss = mean_i [ −(1 − ε)·log σ(z_i) − ε·log σ(−z_i) ]        (ε = label_smoothing, cDPO)

    info: loss, reward_margin (mean z), accuracy (share of z > 0), chosen_reward, rejected_reward
    (means of β·(log π − log π_ref)).
    """
    ref_chosen, ref_rejected = ref_chosen.detach(), ref_rejected.detach()
    chosen_reward = beta * (policy_chosen - ref_chosen)
    rejected_reward = beta * (policy_rejected - ref_rejected)
    z = chosen_reward - rejected_reward
    losses = -(1.0 - label_smoothing) * F.logsigmoid(z) - label_smoothing * F.logsigmoid(-z)
    loss = losses.mean()
    info = {"loss": float(loss.detach()), "reward_margin": float(z.detach().mean()),
            "accuracy": float((z.detach() > 0).float().mean()),
            "chosen_reward": float(chosen_reward.detach().mean()),
            "rejected_reward": float(rejected_reward.detach().mean())}
    return loss, info


@register_objective("dpo")
class DPO(PairwiseObjective):
    """`dpo_loss` on the step's pairs against the reference model."""

    def needs_reference(self, cfg: AwareConfig) -> bool:
        return True

    def pair_loss(self, policy, pairs: Sequence[Pair], step: int, *, total: int, scale: float,
                  reduce: Reduce) -> Tuple[float, Dict[str, Any]]:
        if not pairs:
            return 0.0, {}
        cfg = policy.cfg.objective
        model, pad, device = policy.model, policy.tokenizer.pad_token_id, policy.device
        reference = reference_logprobs(model, pairs, pad, device)
        loss, info = dpo_loss(*pair_logprobs(model, pairs, pad, device), *reference, beta=cfg.beta,
                              label_smoothing=cfg.label_smoothing)
        (loss * scale).backward()
        return float(loss.detach()) * scale, info
