"""Stage 4, the objectives: one module each, registered by name (`registry.py`).

aware (gated SFT + PG with abstention), sft, pg / grpo, dpo, gapo, shapo and constrained_sft; the
preference pairs they share (online mining, log-probabilities, the pairwise update) are in
`pairs.py`. Every module of this package is imported here, so an objective in a new file here is
registered without touching any other; `get_objective(name)` returns the registered one.
"""

from __future__ import annotations

import importlib
import pkgutil

from aware_cli.pipeline.objectives.registry import (OBJECTIVES, Objective, Rollout, Update, names,
                                                    register_objective, unknown)


def _import_all() -> None:
    for module in pkgutil.iter_modules(__path__):
        if not module.name.startswith("_"):
            importlib.import_module(f"{__name__}.{module.name}")


_import_all()

from aware_cli.pipeline.objectives.constrained_sft import constrained_sft_loss  # noqa: E402
from aware_cli.pipeline.objectives.dpo import dpo_loss  # noqa: E402
from aware_cli.pipeline.objectives.gapo import gapo_loss, gapo_weights  # noqa: E402
from aware_cli.pipeline.objectives.pairs import (LOCAL, Pair, Reduce, pair_logprobs, pair_update,  # noqa: E402
                                                 pairs_from_groups, reference_logprobs)
from aware_cli.pipeline.objectives.shapo import saliency_mask, shapo_loss  # noqa: E402


def get_objective(name: str) -> Objective:
    """The objective registered under `objective.name=<name>` (ConfigError naming the choices if none)."""
    objective = OBJECTIVES.get(name)
    if objective is None:
        raise unknown(name)
    return objective


__all__ = [
    "LOCAL", "OBJECTIVES", "Objective", "Pair", "Reduce", "Rollout", "Update", "constrained_sft_loss", "dpo_loss",
    "gapo_loss", "gapo_weights", "get_objective", "names", "pair_logprobs", "pair_update", "pairs_from_groups",
    "reference_logprobs", "register_objective", "saliency_mask", "shapo_loss",
]
