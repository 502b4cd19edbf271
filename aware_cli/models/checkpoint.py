"""Save and restore the trained weights: a LoRA adapter or the full model, as safetensors.

Checkpoints are ordinary Hugging Face / PEFT directories, so they load without `aware`:
`AutoModelForCausalLM.from_pretrained(dir)` (full) or
`PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), dir)` (LoRA).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Optional

import torch

from ..config.schema import ModelConfig
from ..errors import ModelError
from .embedded import embedded_model_dir
from .loading import EMBEDDED_PREFIX, TINY

ADAPTER_WEIGHTS = "adapter_model.safetensors"
FULL_WEIGHTS = "model.safetensors"
FULL_WEIGHTS_INDEX = "model.safetensors.index.json"


def save_model(model, tokenizer, out_dir: Path, *, base_model_path: Optional[str] = None,
               state_dict: Optional[Dict[str, torch.Tensor]] = None) -> None:
    """Write `model` (adapter only if it is a PeftModel) and `tokenizer` into `out_dir`.

    `base_model_path` is recorded as the adapter's base model, so that the adapter can be
    loaded again offline (for the embedded model: its cached Hugging Face directory).
    `state_dict` replaces the model's own weights (whole tensors gathered from FSDP2 shards).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if _is_peft(model):
        _save_adapter(model, out_dir, base_model_path, state_dict)
    else:
        model.save_pretrained(out_dir, safe_serialization=True, state_dict=state_dict)
    tokenizer.save_pretrained(out_dir)


def load_trainable_state(model, ckpt_dir: Path) -> None:
    """Load the weights `save_model` wrote in `ckpt_dir` into `model`, in place (safetensors only)."""
    ckpt_dir = Path(ckpt_dir)
    if _is_peft(model):
        _load_adapter_state(model, ckpt_dir)
    else:
        _load_full_state(model, ckpt_dir)


def base_model_path(cfg: ModelConfig) -> Optional[str]:
    """The base model an adapter trained from `cfg` should point to (None for `tiny`: built in code).

    A run continued from another run points to that run (merged on load); with `model.from_run=adapter`
    it points to the parent adapter's own base, since the adapter it trains applies to that base.
    """
    from .lineage import base_config, continues_adapter

    name = cfg.name_or_path
    if name == TINY:
        return None
    parent = continues_adapter(cfg) if cfg.finetune == "lora" else None
    if parent is not None:
        return base_model_path(base_config(parent, cfg))
    if name.startswith(EMBEDDED_PREFIX):
        return str(embedded_model_dir(name[len(EMBEDDED_PREFIX):]))
    path = Path(name).expanduser()
    if not path.exists():
        return name  # a Hub id
    path = path.resolve()
    return str(path / cfg.gguf_file) if cfg.gguf_file and path.is_dir() else str(path)


def _is_peft(model) -> bool:
    from peft import PeftModel

    return isinstance(model, PeftModel)


def _save_adapter(model, out_dir: Path, base: Optional[str], state_dict=None) -> None:
    configs = model.peft_config.values()
    recorded = [config.base_model_name_or_path for config in configs]
    if base is not None:
        for config in configs:
            config.base_model_name_or_path = base
    try:
        # save_embedding_layers=False: aware never resizes the vocabulary, so peft need not fetch the base's
        # config.json (from the hub, or from a run directory that has none) to compare vocabulary sizes
        model.save_pretrained(out_dir, safe_serialization=True, state_dict=state_dict, save_embedding_layers=False)
    finally:  # the live model keeps what peft recorded
        for config, original in zip(configs, recorded):
            config.base_model_name_or_path = original


def _load_adapter_state(model, ckpt_dir: Path) -> None:
    from peft import set_peft_model_state_dict

    state = _read_safetensors([ckpt_dir / ADAPTER_WEIGHTS])
    result = set_peft_model_state_dict(model, state)
    if result.unexpected_keys:
        raise ModelError(f"{ckpt_dir / ADAPTER_WEIGHTS}: does not match the model's adapter "
                         f"(unexpected weight {result.unexpected_keys[0]})")


def _load_full_state(model, ckpt_dir: Path) -> None:
    state = _read_safetensors(_full_weight_files(ckpt_dir))
    result = model.load_state_dict(state, strict=False)
    missing = _not_tied_to_loaded(model, result.missing_keys, state)
    if result.unexpected_keys or missing:
        detail = f"unexpected weight {result.unexpected_keys[0]}" if result.unexpected_keys \
            else f"missing weight {missing[0]}"
        raise ModelError(f"{ckpt_dir}: checkpoint does not match the model ({detail})")


def _full_weight_files(ckpt_dir: Path) -> List[Path]:
    """model.safetensors, or the shards listed in its index when save_pretrained split it."""
    index = ckpt_dir / FULL_WEIGHTS_INDEX
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [ckpt_dir / shard for shard in shards]
    return [ckpt_dir / FULL_WEIGHTS]


def _read_safetensors(files: List[Path]) -> Dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    state: Dict[str, torch.Tensor] = {}
    for file in files:
        if not file.is_file():
            raise ModelError(f"{file}: checkpoint weights not found")
        state.update(load_file(str(file)))
    return state


def _not_tied_to_loaded(model, missing: List[str], loaded: Dict[str, torch.Tensor]) -> List[str]:
    """The missing keys that matter: save_pretrained drops one of two tied weights (e.g. lm_head),
    and loading the other one fills both."""
    tensors = model.state_dict(keep_vars=True)
    loaded_storage = {tensors[key].data_ptr() for key in loaded if key in tensors}
    return [key for key in missing if tensors[key].data_ptr() not in loaded_storage]
