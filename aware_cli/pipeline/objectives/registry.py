"""The objective registry: what an objective needs from a step, and its update (stage 4).

An objective is a subclass of `Objective` registered under `objective.name=<name>`::

    @register_objective("my_loss")
    class MyLoss(Objective):
        samples = False                      # trains on the targets: no sampling, no verifier call

        def update(self, policy, rollout, step):
            ...                              # add the loss's gradient to `.grad`
            return Update(UpdateResult(loss=value, loss_kl=0.0, logprobs={}, tokens=0))

Its class attributes say what the step must do for it (sample and score, score the reference
targets or the refusal, pair up samples), what the configuration must allow (a reference model,
FSDP2) and how its loss adds up across ranks. `step.py` asks them and calls `gate` and `update`;
`config/compose.py` and `parallel/fsdp.py` ask `check`, `needs_reference` and `fsdp2`. Every module
of this package is imported on first use (see `__init__.py`), so a new objective is one new file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Type

from aware_cli.config.schema import AwareConfig
from aware_cli.config.validate import suggest
from aware_cli.data import Example
from aware_cli.errors import ConfigError
from aware_cli.pipeline.gate import GroupGate, gate_group
from aware_cli.pipeline.parallel.distributed import Ranks, sum_value
from aware_cli.pipeline.update import UpdateResult


@dataclass
class Rollout:
    """What stages 1-3 produced for this rank's inputs, handed to the objective's update."""

    batch: List[Example]
    prompts: List[List[int]]  # chat-formatted prompt ids per input
    targets: List[List[int]]  # the SFT target per input after the gate: y*, or y_ref when it abstains
    samples: List[List[List[int]]]  # k sampled response ids per input ([] when the objective does not sample)
    scores: List[List[Optional[float]]]  # the verifier's score of each sample (None: unjudged)
    target_scores: Optional[List[Optional[float]]]  # scores of the reference targets (when `scores_targets`)
    gates: List[GroupGate]  # the gate's decision per input
    batch_size: int  # B, the step's global batch (every rank's inputs): loss weights are normalised by it
    k: int
    refusals: Optional[List[List[int]]] = None  # each input's refusal y_ref (ids), for the over-refusal term


@dataclass
class Update:
    """What an update did: the gradient is in `.grad`; the caller reduces, clips and steps."""

    result: UpdateResult
    info: Dict[str, Any] = field(default_factory=dict)  # diagnostics, logged as objective/<key>
    losses: Optional[List[tuple]] = None  # per input (L_SFT, L_PG) for samples.jsonl; None: not per input


class Objective:
    """Base class: an objective that samples, has the samples scored and trains on the gated loss.

    Subclasses override the attributes and `update`; the defaults suit most online objectives.
    """

    name = ""
    samples = True  # stage 1-2: draw k responses per prompt and have the verifier score them
    pairwise = False  # trains on preference pairs (online from the samples, or offline from objective.pairs_path)
    fsdp2 = True  # runs under trainer.parallel=fsdp2 (False: it shifts the sharded weights in place)
    # how each rank's part adds up to the 1-process loss: "batch" (weights / B), "pairs" (share of the
    # step's pairs, summed over ranks) or "rows" (a mean over the step's B rows, rank by rank)
    scaling = "batch"
    settles = False  # two-stage sampling (sampling.k_first) may stop after the first draw for inputs its gate settles

    def sampled(self, cfg: AwareConfig) -> bool:
        """Whether this step samples and verifies (offline pairs: no)."""
        return self.samples and not (self.pairwise and cfg.objective.pairs_path)

    def needs_reference(self, cfg: AwareConfig) -> bool:
        """Needs the reference model (the base with LoRA adapters disabled)."""
        return False

    def scores_targets(self, cfg: AwareConfig) -> bool:
        """The verifier also scores each input's reference target y* (stage 2)."""
        return False

    def scores_refusals(self, cfg: AwareConfig) -> bool:
        """The verifier also scores each input's refusal target y_ref (stage 2)."""
        return False

    def gate(self, scores: Sequence[Optional[float]], cfg: AwareConfig, dual: float, *,
             refusal_score: Optional[float], target_score: Optional[float]) -> GroupGate:
        """Stage 3 for one input: β, the regime, the advantages and the SFT target."""
        return gate_group(scores, cfg.gate, dual, refusal_score=refusal_score)

    def update(self, policy, rollout: Rollout, step: int) -> Update:
        """Stage 4: add this rank's part of the loss's gradient to `.grad` (see `scaling`)."""
        raise NotImplementedError

    def any_gradient(self, update: Update, ranks: Ranks) -> bool:
        """Whether any rank back-propagated this step (a collective: every rank calls it)."""
        return sum_value(float(update.result.backward), ranks) > 0

    def check(self, cfg: AwareConfig) -> None:
        """Compose-time checks of the configuration this objective runs under (ConfigError)."""
        if self.needs_reference(cfg) and cfg.model.finetune != "lora":
            raise ConfigError(f"objective={cfg.objective.name} needs the reference model, which aware takes from "
                              f"the base with LoRA adapters disabled: use model.finetune=lora")
        if cfg.objective.pairs_path and not self.pairwise:
            pairwise = names(pairwise=True)
            raise ConfigError(f"objective.pairs_path: offline preference pairs train objective="
                              f"{' or '.join([', '.join(pairwise[:-1]), pairwise[-1]] if len(pairwise) > 1 else pairwise)}"
                              f", not objective={cfg.objective.name}")


OBJECTIVES: Dict[str, Objective] = {}


def register_objective(name: str) -> Callable[[Type[Objective]], Type[Objective]]:
    """Class decorator: register an `Objective` subclass under `objective.name=<name>`."""

    def decorator(cls: Type[Objective]) -> Type[Objective]:
        previous = OBJECTIVES.get(name)
        if previous is not None and _qualified(type(previous)) != _qualified(cls):
            raise ValueError(f"objective {name!r} is already registered by {_qualified(type(previous))}")
        instance = cls()
        instance.name = name
        OBJECTIVES[name] = instance
        return cls

    return decorator


def names(**attributes: Any) -> List[str]:
    """Registered objective names, those whose attributes equal `attributes` (e.g. pairwise=True)."""
    return [n for n, o in OBJECTIVES.items() if all(getattr(o, k) == v for k, v in attributes.items())]


def unknown(name: str) -> ConfigError:
    """The error for an objective.name nothing registered."""
    return ConfigError(f"objective.name: expected one of {', '.join(OBJECTIVES)}, got {name!r}"
                       f"{suggest(name, list(OBJECTIVES))}")


def _qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"
