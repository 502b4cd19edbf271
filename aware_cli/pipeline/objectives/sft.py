"""sft: plain supervised fine-tuning on the reference targets (no sampling, no verifier call).

With nothing sampled the gate puts every input in the SFT regime (β = 0), so the gated update is
−mean_x mean_t log π(y*_t).
"""

from __future__ import annotations

from aware_cli.pipeline.objectives.aware import GatedObjective
from aware_cli.pipeline.objectives.registry import register_objective


@register_objective("sft")
class SFT(GatedObjective):
    samples = False
