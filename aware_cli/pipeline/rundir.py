"""The run directory: config.yaml, status.json, metrics.jsonl, samples.jsonl, tb/, checkpoints/, final/.

Checkpoints are written into a temporary sibling directory, fsynced, given a `COMPLETE` manifest
(sha256 of every file) and renamed into place. A checkpoint whose manifest is missing or whose
files do not match it is never loaded: resume falls back to the previous one with a warning.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
import yaml

from aware_cli.errors import ConfigError

COMPLETE = "COMPLETE"
TRAINING_STATE = "training_state.pt"
TRAINER_JSON = "aware_state.json"  # aware's own schema; not Hugging Face's trainer_state.json
LEGACY_TRAINER_JSON = "trainer_state.json"  # its former name, still read so older runs resume


def default_output_dir(recipe: str) -> Path:
    return Path("runs") / f"{recipe}-{time.strftime('%Y%m%d-%H%M%S')}"


SECRET_KEY = re.compile(r"(api_?key|token|secret|password|authorization)", re.IGNORECASE)


def redact(value: Any, key: str = "") -> Any:
    """The config with values of secret-looking keys (api_key, token, ...) replaced by '***'.

    `*_env` keys name an environment variable, not a secret, and are kept.
    """
    if isinstance(value, dict):
        return {k: redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v, key) for v in value]
    if value is not None and SECRET_KEY.search(key) and not key.endswith("_env"):
        return "***"
    return value


def prepare(output_dir: Path, resolved: Dict[str, Any], *, resume: Optional[str], overwrite: bool) -> Path:
    """Create (or reuse, when resuming) the run directory and write config.yaml."""
    holds_run = (output_dir / "config.yaml").exists() or (output_dir / "metrics.jsonl").exists()
    if holds_run and not resume:
        if not overwrite:
            raise ConfigError(f"output_dir: {output_dir} holds another run (pass resume=auto to continue it "
                              f"or overwrite=true to replace it)")
        shutil.rmtree(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(output_dir / "config.yaml", yaml.safe_dump(redact(resolved), sort_keys=False, allow_unicode=True))
    return output_dir


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def set_status(run_dir: Path, state: str, **extra: Any) -> None:
    """running | completed | failed | interrupted, with the time and any detail."""
    write_atomic(run_dir / "status.json", json.dumps({"state": state, "time": time.time(), **extra}) + "\n")


# ----------------------------------------------------------------------------- checkpoints


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync_tree(root: Path) -> None:
    for path in sorted(root.rglob("*")):
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
    _fsync_dir(root)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_dir_atomic(path: Path, write: Callable[[Path], None], *, manifest: Optional[Dict[str, Any]] = None) -> Path:
    """Fill a temporary sibling directory with `write(tmp)`, fsync it, then rename it to `path`.

    With `manifest`, a `COMPLETE` file listing every file's sha256 is written last.
    """
    tmp = path.with_name(f".tmp-{path.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write(tmp)
    if manifest is not None:
        files = {str(p.relative_to(tmp)): _sha256(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
        (tmp / COMPLETE).write_text(json.dumps({**manifest, "files": files}, indent=1) + "\n")
    _fsync_tree(tmp)
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)
    _fsync_dir(path.parent)
    return path


def checkpoint_problem(ckpt: Path) -> Optional[str]:
    """Why `ckpt` must not be loaded (missing/partial/corrupt), or None when it is complete and intact."""
    marker = ckpt / COMPLETE
    if not marker.is_file():
        return "no COMPLETE manifest (partial write)"
    try:
        files = json.loads(marker.read_text())["files"]
    except (ValueError, KeyError, TypeError):
        return "unreadable COMPLETE manifest"
    for name, digest in files.items():
        path = ckpt / name
        if not path.is_file():
            return f"missing {name}"
        if _sha256(path) != digest:
            return f"checksum mismatch in {name}"
    return None


def list_checkpoints(run_dir: Path) -> List[Path]:
    """Checkpoint directories `checkpoints/step-N` (complete or not), oldest first."""
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.glob("step-*") if p.is_dir() and p.name.split("-")[1].isdigit()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def save_checkpoint(run_dir: Path, step: int, save_weights: Callable[[Path], None], optimizer, scheduler,
                    trainer_state: Dict[str, Any], keep_last: int = 0) -> Path:
    """checkpoints/step-N: weights, optimizer + scheduler + RNG tensors, aware_state.json, manifest."""

    def write(tmp: Path) -> None:
        save_weights(tmp)
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), **_torch_rng()},
                   tmp / TRAINING_STATE)
        state = {**trainer_state, "python_rng": _python_rng()}
        (tmp / TRAINER_JSON).write_text(json.dumps(state, indent=2) + "\n")

    path = write_dir_atomic(run_dir / "checkpoints" / f"step-{step}", write, manifest={"step": step})
    if keep_last:
        for old in list_checkpoints(run_dir)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    return path


def load_training_state(ckpt: Path, optimizer, scheduler) -> Dict[str, Any]:
    """Restore optimizer, scheduler and RNG states (tensors only: weights_only=True, no pickle)."""
    state = torch.load(ckpt / TRAINING_STATE, map_location="cpu", weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    if torch.cuda.is_available() and state.get("cuda_rng"):
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    state_json = ckpt / TRAINER_JSON if (ckpt / TRAINER_JSON).is_file() else ckpt / LEGACY_TRAINER_JSON
    trainer_state = json.loads(state_json.read_text())
    _restore_python_rng(trainer_state.pop("python_rng", None))
    return trainer_state


def _torch_rng() -> Dict[str, Any]:
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    return {"torch_rng": torch.get_rng_state(), "cuda_rng": cuda}


def _python_rng() -> Dict[str, Any]:
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {"python": [version, list(internal), gauss],
            "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)]}


def _restore_python_rng(state: Optional[Dict[str, Any]]) -> None:
    if not state:
        return
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))


def resolve_resume(run_dir: Path, resume: Optional[str]) -> Tuple[Optional[Path], List[str]]:
    """(checkpoint to load, warnings). `auto` → the newest intact checkpoint, skipping broken ones."""
    if not resume:
        return None, []
    if resume != "auto":
        path = Path(resume)
        problem = checkpoint_problem(path) if path.is_dir() else "not a directory"
        if problem:
            raise ConfigError(f"resume: {path} cannot be loaded: {problem}")
        return path, []
    warnings = []
    for ckpt in reversed(list_checkpoints(run_dir)):
        problem = checkpoint_problem(ckpt)
        if problem is None:
            return ckpt, warnings
        warnings.append(f"skipping checkpoint {ckpt}: {problem}")
    return None, warnings


def truncate_jsonl(path: Path, last_step: int) -> None:
    """Drop lines logged after `last_step` (they will be logged again when the steps rerun).

    A torn last line (the process died mid-write) is dropped too.
    """
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("step", 0) <= last_step:
            kept.append(line)
    write_atomic(path, "".join(line + "\n" for line in kept))
