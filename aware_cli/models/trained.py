"""Load what `aware train` produced for evaluation: a run directory, a checkpoint, or an adapter dir.

- a run directory (config.yaml + final/) → the run's base model + `final/` (adapter or full weights);
- a checkpoint or any PEFT adapter directory (adapter_config.json) → its base + the adapter;
- anything else → `load_model` as usual (HF id, model dir, .gguf, embedded:, tiny).

The run's config.yaml supplies the base model's name, finetune and LoRA settings, never
`trust_remote_code`: that comes from the evaluating command line only (`model.trust_remote_code=true`).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Optional, Tuple

import yaml

from ..config.schema import ModelConfig
from ..config.validate import build
from ..errors import ModelError
from .loading import load_model


def run_model_config(run_dir: Path) -> ModelConfig:
    """The `model` block of a run's config.yaml."""
    resolved = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    return build(ModelConfig, resolved.get("model", {}), "model.")


def _adapter_base(adapter_dir: Path) -> str:
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    base = config.get("base_model_name_or_path")
    if not base:
        raise ModelError(f"model.name_or_path: {adapter_dir} is an adapter without a base model; "
                         f"use the run directory instead")
    return base


def resolve_trained(cfg: ModelConfig) -> Tuple[ModelConfig, Optional[Path], Optional[Path]]:
    """(config of the base model to load, adapter dir or None, run dir or None) for `cfg.name_or_path`."""
    path = Path(cfg.name_or_path).expanduser()
    own = dict(device=cfg.device, dtype=cfg.dtype, trust_remote_code=cfg.trust_remote_code)  # from this command
    if (path / "config.yaml").is_file() and (path / "final").is_dir():
        final = path / "final"
        base = run_model_config(path)
        if (final / "adapter_config.json").is_file():
            return dataclasses.replace(base, **own), final, path
        return dataclasses.replace(base, name_or_path=str(final), gguf_file=None, **own), None, path
    if (path / "config.yaml").is_file() and (path / "metrics.jsonl").is_file():
        raise ModelError(f"model.name_or_path: run {path} has no final/ weights (did it finish? "
                         f"see {path / 'status.json'}); point at a checkpoint in {path / 'checkpoints'}")
    if (path / "adapter_config.json").is_file():
        run = path.parent.parent if path.parent.name == "checkpoints" else None
        base = run_model_config(run) if run and (run / "config.yaml").is_file() else dataclasses.replace(
            cfg, name_or_path=_adapter_base(path), gguf_file=None)
        return dataclasses.replace(base, **own), path, run
    return cfg, None, None


def load_for_eval(cfg: ModelConfig):
    """(model, tokenizer, run_dir or None), frozen and in eval mode, adapter applied when there is one."""
    from peft import PeftModel

    base_cfg, adapter, run_dir = resolve_trained(cfg)
    model, tokenizer = load_model(base_cfg, for_training=False)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, str(adapter)).eval()
    return model, tokenizer, run_dir
