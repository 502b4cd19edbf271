"""pg (and its alias grpo): the group-normalised policy-gradient term alone.

Every judged input is in the PG regime (β = 1): L = −(λ_pg/k) Σ_i A_i·mean_t log π(ŷ_i,t), with
A_i = (r_i − μ)/(σ + ε) over the input's k samples, through the same gated update as AWARE
(no SFT term on judged inputs; an input with nothing judged falls back to SFT on y*).
"""

from __future__ import annotations

from typing import Optional, Sequence

from aware_cli.config.schema import AwareConfig
from aware_cli.pipeline.gate import PG, GroupGate, gate_group
from aware_cli.pipeline.objectives.aware import GatedObjective
from aware_cli.pipeline.objectives.registry import register_objective


@register_objective("grpo")
@register_objective("pg")
class PolicyGradient(GatedObjective):
    def gate(self, scores: Sequence[Optional[float]], cfg: AwareConfig, dual: float, *,
             refusal_score: Optional[float], target_score: Optional[float]) -> GroupGate:
        return gate_group(scores, cfg.gate, dual, objective=PG, refusal_score=refusal_score)
