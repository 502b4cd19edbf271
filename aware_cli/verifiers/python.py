"""The `python` verifier: your own reward function, named by `verifier.target`.

Accepted targets:
- `pkg.module:function` or `pkg.module.function` (imported from sys.path, with the working
  directory searched last; `function` may be a dotted attribute path such as `Class.method`
  after the colon);
- `path/to/file.py:function` (loaded from the file, relative to the working directory).

The function is called as `fn(prompts, completions, **verifier.kwargs, **pipeline_kwargs)`, where
the pipeline passes `harmful`, `references` and `ids`. It must return one score in [0, 1] or None
per completion; `Verifier` checks that.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, List, Optional, Sequence, Tuple

from aware_cli.config.schema import VerifierConfig
from aware_cli.errors import ConfigError
from aware_cli.verifiers.base import Verifier, register_verifier
from aware_cli.verifiers.fingerprint import file_sha256

# Names the pipeline passes itself; a verifier.kwargs entry with one of them would collide.
RESERVED_KWARGS = ("prompts", "completions", "harmful", "references", "ids")


def target_fingerprint(cfg: VerifierConfig) -> dict:
    """The python verifier's identity beyond its name: the contents of a `file.py:fn` target's file."""
    if not cfg.target:
        return {}
    location = cfg.target.rsplit(":", 1)[0]
    path = Path(location).expanduser()
    return {"target_file": file_sha256(path) if location.endswith(".py") and path.is_file() else None}


@register_verifier("python", blocks=(), fingerprint=target_fingerprint)
def build_python_verifier(cfg: VerifierConfig) -> Verifier:
    fn = load_target(cfg.target)
    clashes = sorted(set(cfg.kwargs) & set(RESERVED_KWARGS))
    if clashes:
        raise ConfigError(f"verifier.kwargs: {', '.join(clashes)} is passed by the pipeline; rename it")
    fixed_kwargs = dict(cfg.kwargs)

    def score(prompts: Sequence[str], completions: Sequence[str], **call_kwargs: Any) -> List[Optional[float]]:
        return fn(prompts, completions, **fixed_kwargs, **call_kwargs)

    verifier = Verifier(score, name=f"python:{cfg.target}", batch_size=cfg.batch_size, cache=cfg.cache)
    if callable(getattr(fn, "write_refusals", None)):  # an object that can also write refusal targets
        verifier.write_refusals = fn.write_refusals
    return verifier


def load_target(target: Optional[str]) -> Callable[..., Any]:
    """The callable named by `target`, or a one-line ConfigError naming verifier.target."""
    if not target or not target.strip():
        raise ConfigError("verifier.target: the python verifier needs a target such as "
                          "'pkg.module:function' or 'path/to/file.py:function'")
    location, attribute = _split_target(target.strip())
    module = _load_file(location, target) if _is_file_path(location) else _import_module(location, target)
    fn = _get_attribute(module, attribute, target)
    if not callable(fn):
        raise ConfigError(f"verifier.target: {target!r} is a {type(fn).__name__}, not a function")
    return fn


def _split_target(target: str) -> Tuple[str, str]:
    if ":" in target:
        location, attribute = target.rsplit(":", 1)
    elif "." in target:
        location, attribute = target.rsplit(".", 1)
    else:
        location, attribute = "", ""
    if not location or not attribute:
        raise ConfigError(f"verifier.target: {target!r} is not 'pkg.module:function', 'pkg.module.function' "
                          "or 'path/to/file.py:function'")
    return location, attribute


def _is_file_path(location: str) -> bool:
    return location.endswith(".py") or "/" in location or "\\" in location


def _import_module(name: str, target: str) -> ModuleType:
    # The `aware` console script does not put the working directory on sys.path; users expect
    # `my_rewards:fn` next to their recipe to import, so look there last.
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.append(cwd)
    try:
        return importlib.import_module(name)
    except Exception as exc:  # noqa: BLE001 - any failure while importing user code is a config problem
        raise ConfigError(f"verifier.target: cannot import module {name!r} for {target!r} ({_one_line(exc)})") from exc


def _load_file(location: str, target: str) -> ModuleType:
    path = Path(location).expanduser().resolve()
    if not path.is_file():
        raise ConfigError(f"verifier.target: file {location!r} not found (from {target!r})")
    # A name unique per file, so two verifier files called e.g. `reward.py` do not collide.
    module_name = f"aware_user_verifier_{path.stem}_{hashlib.sha256(str(path).encode()).hexdigest()[:10]}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"verifier.target: cannot load {location!r} as a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses, pickling etc. look the module up by name
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # noqa: BLE001
        del sys.modules[module_name]
        raise ConfigError(f"verifier.target: error while loading {location!r} ({_one_line(exc)})") from exc
    return module


def _get_attribute(module: ModuleType, attribute: str, target: str) -> Any:
    obj: Any = module
    for part in attribute.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"verifier.target: {target!r}: no attribute {part!r} in the loaded module")
        obj = getattr(obj, part)
    return obj


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"
