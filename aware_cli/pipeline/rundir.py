"""The run directory: config.yaml, status.json, metrics.jsonl, samples.jsonl, tb/, checkpoints/, final/.

Checkpoints are written to a temporary directory and renamed into place, so a `checkpoints/step-N`
directory that exists is complete; a `COMPLETE` marker inside makes that checkable.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import torch
import yaml

from aware_cli.errors import ConfigError

COMPLETE = "COMPLETE"
TRAINING_STATE = "training_state.pt"
TRAINER_JSON = "trainer_state.json"


def default_output_dir(recipe: str) -> Path:
    return Path("runs") / f"{recipe}-{time.strftime('%Y%m%d-%H%M%S')}"


def prepare(output_dir: Path, resolved: Dict[str, Any], *, resume: Optional[str], overwrite: bool) -> Path:
    """Create (or reuse, when resuming) the run directory and write config.yaml."""
    holds_run = (output_dir / "config.yaml").exists() or (output_dir / "metrics.jsonl").exists()
    if holds_run and not resume:
        if not overwrite:
            raise ConfigError(f"output_dir: {output_dir} holds another run (pass resume=auto to continue it "
                              f"or overwrite=true to replace it)")
        shutil.rmtree(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(output_dir / "config.yaml", yaml.safe_dump(resolved, sort_keys=False, allow_unicode=True))
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


def list_checkpoints(run_dir: Path) -> List[Path]:
    """Complete checkpoints, oldest first."""
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.glob("step-*") if p.is_dir() and (p / COMPLETE).exists()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def write_dir_atomic(path: Path, write: Callable[[Path], None]) -> Path:
    """Fill a temporary sibling directory with `write(tmp)`, then rename it to `path`."""
    tmp = path.with_name(f".tmp-{path.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write(tmp)
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)
    return path


def save_checkpoint(run_dir: Path, step: int, save_weights: Callable[[Path], None], optimizer, scheduler,
                    trainer_state: Dict[str, Any]) -> Path:
    """checkpoints/step-N: weights (via `save_weights(dir)`), optimizer + scheduler, trainer_state.json."""

    def write(tmp: Path) -> None:
        save_weights(tmp)
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, tmp / TRAINING_STATE)
        (tmp / TRAINER_JSON).write_text(json.dumps(trainer_state, indent=2) + "\n")
        (tmp / COMPLETE).write_text(f"step {step}\n")

    return write_dir_atomic(run_dir / "checkpoints" / f"step-{step}", write)


def load_training_state(ckpt: Path, optimizer, scheduler) -> Dict[str, Any]:
    """Restore optimizer and scheduler (tensors only, no pickled objects) and return trainer_state.json."""
    state = torch.load(ckpt / TRAINING_STATE, map_location="cpu", weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    return json.loads((ckpt / TRAINER_JSON).read_text())


def resolve_resume(run_dir: Path, resume: Optional[str]) -> Optional[Path]:
    """`auto` → the newest complete checkpoint (None if there is none); a path → that checkpoint."""
    if not resume:
        return None
    if resume == "auto":
        found = list_checkpoints(run_dir)
        return found[-1] if found else None
    path = Path(resume)
    if not (path / COMPLETE).exists():
        raise ConfigError(f"resume: {path} is not a complete checkpoint directory")
    return path


def truncate_jsonl(path: Path, last_step: int) -> None:
    """Drop lines logged after `last_step` (they will be logged again when the steps rerun)."""
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= last_step]
    write_atomic(path, "".join(line + "\n" for line in kept))
