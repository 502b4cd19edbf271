"""Load what `aware train` produced for evaluation: a run directory, a checkpoint, or an adapter dir.

- a run directory (config.yaml + final/) → the run's base model + `final/` (adapter or full weights);
- a checkpoint or any PEFT adapter directory (adapter_config.json) → its base + the adapter;
- anything else → `load_model` as usual (HF id, model dir, .gguf, embedded:, tiny).

A run that itself continued from a run (`model.name_or_path=<run>`) has that run as its base: the
chain is followed by `load_model` (see `lineage.py`).
The run's config.yaml supplies the base model's name, finetune and LoRA settings, never
`trust_remote_code`: that comes from the evaluating command line only (`model.trust_remote_code=true`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional, Tuple

from ..config.schema import ModelConfig
from .lineage import base_config, find_trained, run_model_config
from .loading import load_model

__all__ = ["load_for_eval", "resolve_trained", "run_model_config"]


def resolve_trained(cfg: ModelConfig) -> Tuple[ModelConfig, Optional[Path], Optional[Path]]:
    """(config of the base model to load, adapter dir or None, run dir or None) for `cfg.name_or_path`."""
    source = find_trained(cfg.name_or_path)
    if source is None:
        return cfg, None, None
    base = base_config(source, cfg)
    if source.adapter:
        return base, source.weights, source.run_dir
    return dataclasses.replace(base, name_or_path=str(source.weights), gguf_file=None), None, source.run_dir


def load_for_eval(cfg: ModelConfig):
    """(model, tokenizer, run_dir or None), frozen and in eval mode, adapter applied when there is one."""
    from peft import PeftModel

    base_cfg, adapter, run_dir = resolve_trained(cfg)
    model, tokenizer = load_model(base_cfg, for_training=False)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, str(adapter)).eval()
    return model, tokenizer, run_dir
