"""Trained models as sources: a run directory, one of its checkpoints, or a bare PEFT adapter directory.

`find_trained(path)` says what `path` holds (None for anything else: an HF id, a model directory,
`tiny`, `embedded:...`). `load_trained` turns it into a plain model: the adapter merged into its base
with peft's `merge_and_unload`, or the full weights as saved. `load_model` calls it for
`model.name_or_path=<run or checkpoint>`, which is how a new run continues from a trained one, and how
`aware export` and `aware eval` load runs that themselves started from a run (the chain is followed
through each run's config.yaml).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import yaml

from ..config.schema import ModelConfig
from ..errors import ModelError

CONFIG = "config.yaml"
FINAL = "final"
ADAPTER_CONFIG = "adapter_config.json"


@dataclass(frozen=True)
class TrainedSource:
    """Weights written by `aware train` and what they apply to."""

    weights: Path  # final/, checkpoints/step-N, checkpoints/best, or an adapter directory
    run_dir: Optional[Path]  # the run they belong to (config.yaml), None for a bare adapter directory
    adapter: bool  # a PEFT adapter (else a full Hugging Face model directory)
    base: ModelConfig  # the model the adapter applies to (full weights: the run's model block)

    @property
    def label(self) -> str:
        """`run` or `run/checkpoints/step-N`, for messages and model cards."""
        if self.run_dir is None:
            return str(self.weights)
        return str(self.run_dir) if self.weights.name == FINAL else str(self.weights)


def read_run_config(run_dir: Path) -> Dict[str, Any]:
    """A run's config.yaml as a dict (one-line ModelError when it is unreadable)."""
    path = Path(run_dir) / CONFIG
    try:
        value = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ModelError(f"{path}: cannot read the run's config ({type(e).__name__})") from e
    if not isinstance(value, dict):
        raise ModelError(f"{path}: expected a mapping")
    return value


def run_model_config(run_dir: Path) -> ModelConfig:
    """The `model` block of a run's config.yaml."""
    from ..config.validate import build

    return build(ModelConfig, read_run_config(run_dir).get("model") or {}, "model.")


def _is_run(path: Path) -> bool:
    return (path / CONFIG).is_file() and ((path / FINAL).is_dir() or (path / "metrics.jsonl").is_file()
                                          or (path / "checkpoints").is_dir())


def _owning_run(weights: Path) -> Optional[Path]:
    """The run directory above `final/` or `checkpoints/<name>/`."""
    if weights.name == FINAL and _is_run(weights.parent):
        return weights.parent
    if weights.parent.name == "checkpoints" and _is_run(weights.parent.parent):
        return weights.parent.parent
    return None


def find_trained(name_or_path: str) -> Optional[TrainedSource]:
    """What `name_or_path` is when it is a run, a checkpoint or an adapter directory; None otherwise."""
    if not name_or_path or name_or_path == "tiny" or name_or_path.startswith("embedded:"):
        return None
    path = Path(name_or_path).expanduser()
    if not path.is_dir():
        return None
    path = path.resolve()
    if _is_run(path):
        final = path / FINAL
        if not final.is_dir():
            raise ModelError(f"model.name_or_path: run {path} has no final/ weights (did it finish? see "
                             f"{path / 'status.json'}); point at a checkpoint in {path / 'checkpoints'}")
        return _source(final, path)
    run = _owning_run(path)
    if (path / ADAPTER_CONFIG).is_file() or run is not None:
        return _source(path, run)
    return None


def _source(weights: Path, run: Optional[Path]) -> TrainedSource:
    adapter = (weights / ADAPTER_CONFIG).is_file()
    if not adapter and not (weights / "config.json").is_file():
        raise ModelError(f"model.name_or_path: {weights} holds no weights (neither {ADAPTER_CONFIG} nor config.json)")
    if run is not None:
        base = run_model_config(run)
    else:
        base = ModelConfig(name_or_path=_adapter_base(weights))
    return TrainedSource(weights=weights, run_dir=run, adapter=adapter, base=base)


def _adapter_base(adapter_dir: Path) -> str:
    config = json.loads((adapter_dir / ADAPTER_CONFIG).read_text())
    base = config.get("base_model_name_or_path")
    if not base:
        raise ModelError(f"model.name_or_path: {adapter_dir} is an adapter without a base model; "
                         f"use the run directory instead")
    return base


def base_config(source: TrainedSource, cfg: ModelConfig) -> ModelConfig:
    """The base's model block with `cfg`'s device, dtype and trust_remote_code (what the user said now)."""
    return dataclasses.replace(source.base, device=cfg.device, dtype=cfg.dtype,
                               trust_remote_code=cfg.trust_remote_code)


def continues_adapter(cfg: ModelConfig) -> Optional[TrainedSource]:
    """The source whose adapter a `model.from_run=adapter` run keeps training (None: not such a run)."""
    if cfg.from_run != "adapter":
        return None
    source = find_trained(cfg.name_or_path)
    if source is None:
        return None
    if not source.adapter:
        raise ModelError(f"model.from_run=adapter: {source.weights} holds full weights, not a LoRA adapter "
                         f"(use model.from_run=merge)")
    return source


def lineage(name_or_path: str, limit: int = 16) -> List[TrainedSource]:
    """The chain of trained sources behind a model name: the source itself, its parent run's source, ..."""
    chain: List[TrainedSource] = []
    current: Optional[str] = name_or_path
    while current and len(chain) < limit:
        try:
            source = find_trained(current)
        except ModelError:
            break
        if source is None:
            break
        chain.append(source)
        current = source.base.name_or_path
    return chain


def ancestor_runs(name_or_path: str) -> Iterator[Path]:
    """Run directories in the chain behind `name_or_path` (nearest first)."""
    for source in lineage(name_or_path):
        if source.run_dir is not None:
            yield source.run_dir


def root_model(name_or_path: str) -> str:
    """The model at the bottom of the chain (an HF id, `embedded:...`, `tiny`, a directory)."""
    chain = lineage(name_or_path)
    return chain[-1].base.name_or_path if chain else name_or_path
