"""The run directory: config.yaml, status.json, metrics.jsonl, samples.jsonl, tb/, checkpoints/, final/.

Every run directory aware creates holds a marker, `.aware-run.json` (aware version, creation
time), and a lock file, `.aware.lock`: a second `aware train` on the same directory while one runs
gets a one-line error (filelock). `overwrite=true` replaces only a directory with the marker and
removes only the names aware writes (`AWARE_NAMES`); any other file stays where it is.

Checkpoints are written into a temporary sibling directory, fsynced, given a `COMPLETE` manifest
(sha256 of every file) and renamed into place. A checkpoint whose manifest is missing or whose
files do not match it is never loaded: resume falls back to the previous one with a warning.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import time
from pathlib import Path
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Dict, List, Optional, Tuple
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import torch
import yaml

from aware_cli.errors import ConfigError
from aware_cli.files import COMPLETE, file_sha256, jsonl_lines, write_atomic, write_dir_atomic

TRAINING_STATE = "training_state.pt"
TRAINER_JSON = "aware_state.json"  # aware's own schema; not Hugging Face's trainer_state.json
LEGACY_TRAINER_JSON = "trainer_state.json"  # its former name, still read so older runs resume
OBJECTIVE_STATE = "objective_state.safetensors"
MARKER = ".aware-run.json"
LOCK = ".aware.lock"
# What `aware train` (and `aware eval` into a run directory) writes; overwrite=true removes these and nothing else.
AWARE_NAMES = ("config.yaml", "status.json", "metrics.jsonl", "samples.jsonl", "split.json", "tb", "checkpoints",
               "final", "eval", "anchors.json", "trackers.json", "wandb", "mlruns", "align_plot.png",
               "eval_before.json", MARKER)
# Temporaries of `write_atomic` (.NAME.tmp) and `write_dir_atomic` (.tmp-NAME) that a killed process may leave.
_TEMPORARY = re.compile(r"^(\..+\.tmp|\.tmp-.+)$")


@dataclass
class SampleRecord:
    """One line of samples.jsonl: an input of a step, its k responses and scores, and what the gate made of them.

    Written by the training step (`step.train_step`) and by `align_plot.points_from_scores` ("before"
    points, the first nine fields only); read by `align_plot.load_points`.
    """

    step: int
    id: str
    prompt: Optional[str]
    responses: Optional[List[str]]
    scores: List[Optional[float]]
    mu: Optional[float]  # None when no sample could be judged
    sigma: Optional[float]
    beta: float
    regime: str  # sft | pg | abstain
    # what a training step adds (`zero_std` is None on points that no training step made)
    zero_std: Optional[bool] = None
    loss_sft: Optional[float] = None
    loss_pg: Optional[float] = None
    target: Optional[str] = None  # reference | refusal | none
    refusal_score: Optional[float] = None
    target_score: Optional[float] = None
    extra: Dict[str, Any] = field(default_factory=dict)  # e.g. chosen_tokens / rejected_tokens of offline pairs

    def to_dict(self) -> Dict[str, Any]:
        """The JSON object of the line (keys in field order, `extra` last)."""
        names = [f.name for f in fields(self) if f.name != "extra"]
        if self.zero_std is None:
            names = names[:names.index("zero_std")]
        return {**{name: getattr(self, name) for name in names}, **self.extra}

    @classmethod
    def from_dict(cls, values: Dict[str, Any]) -> "SampleRecord":
        """A line's object as a record: unknown keys go to `extra`, a missing step is 0."""
        known = {f.name for f in fields(cls)} - {"extra"}
        args = {k: v for k, v in values.items() if k in known}
        args.setdefault("step", 0)
        for name in ("id", "prompt", "responses", "mu", "sigma"):
            args.setdefault(name, None)
        args.setdefault("scores", [])
        args.setdefault("beta", 0.0)
        args.setdefault("regime", None)
        return cls(**args, extra={k: v for k, v in values.items() if k not in known})


def default_output_dir(recipe: str) -> Path:
    return Path("runs") / f"{recipe}-{time.strftime('%Y%m%d-%H%M%S')}"


# ----------------------------------------------------------------------------- secrets in config.yaml

# Key names that say "credential": secret, password, API/access/private key, a bare `token`, or a
# *_token naming an auth token (not max_new_tokens, first_tokens, safe_token or model.tokenizer).
CREDENTIAL_KEY = re.compile(
    r"(secret|passw(or)?d|passphrase|api_?key|access_?key|private_?key|credential|authorization|cookie"
    r"|^(token|auth|bearer)$|(^|_)(auth|access|bearer|refresh|session|oauth|api|hf|github|gh)_?token$)",
    re.IGNORECASE)
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")
REDACTED = "***"


def redact(value: Any, key: str = "", *, environ: Optional[Dict[str, str]] = None) -> Any:
    """The config with its credentials replaced by '***', everything else exactly as it was.

    Redacted: the value of a key whose name says credential (`CREDENTIAL_KEY`: secret, password,
    api_key, access_token, ...; `*_env` keys name an environment variable and are kept), the value
    of any environment variable named by an `*api_key_env` key wherever it appears, and the user
    info and query string of URLs. `max_new_tokens`, `safe_token`, `model.tokenizer` and the like
    are not credentials and are written as they are, so the file reproduces the run.
    """
    env = os.environ if environ is None else environ
    secrets = sorted({env[name] for name in _key_env_names(value) if len(env.get(name) or "") >= 4},
                     key=len, reverse=True)
    return _redact(value, key, secrets)


def _key_env_names(value: Any) -> List[str]:
    names: List[str] = []
    if isinstance(value, dict):
        for k, v in value.items():
            if str(k).endswith("api_key_env") and isinstance(v, str) and v:
                names.append(v)
            names.extend(_key_env_names(v))
    elif isinstance(value, list):
        for v in value:
            names.extend(_key_env_names(v))
    return names


def _redact(value: Any, key: str, secrets: List[str]) -> Any:
    if isinstance(value, dict):
        return {k: _redact(v, str(k), secrets) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact(v, key, secrets) for v in value]
    if value is not None and CREDENTIAL_KEY.search(key) and not key.endswith("_env"):
        return REDACTED
    if isinstance(value, str):
        for secret in secrets:
            value = value.replace(secret, REDACTED)
        if "://" in value:
            value = _URL.sub(lambda m: redact_url(m.group(0)), value)
    return value


def redact_url(url: str) -> str:
    """`url` with its user info and query string replaced by '***' (either may hold a credential)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return url
    if not (parts.username or parts.password or parts.query):
        return url
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    netloc = (f"{REDACTED}@" if parts.username or parts.password else "") + host + (f":{port}" if port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, REDACTED if parts.query else "", parts.fragment))


# ----------------------------------------------------------------------------- the directory


def holds_run(output_dir: Path) -> bool:
    """Whether `output_dir` holds a run (aware's marker, or the files of a run written before markers)."""
    return any((output_dir / name).exists() for name in (MARKER, "config.yaml", "metrics.jsonl"))


def check_output_dir(output_dir: Path, *, resume: Optional[str], overwrite: bool) -> None:
    """Refuse a target before anything is written: another run without resume/overwrite, or an unsafe overwrite.

    overwrite=true (without resume) refuses the root, the home and the current directory outright, and
    a directory holding a run without aware's marker (`.aware-run.json`): aware did not write it.
    """
    if output_dir.exists() and not output_dir.is_dir():
        raise ConfigError(f"output_dir: {output_dir} exists and is not a directory")
    if overwrite and not resume:
        resolved = output_dir.resolve()
        if resolved in (Path(resolved.anchor), Path.home().resolve(), Path.cwd().resolve()):
            raise ConfigError(f"output_dir: overwrite=true refuses {output_dir} (the root, home or current "
                              f"directory); choose a run directory")
    if not holds_run(output_dir) or resume:
        return
    if not overwrite:
        raise ConfigError(f"output_dir: {output_dir} holds another run (pass resume=auto to continue it "
                          f"or overwrite=true to replace it)")
    if not (output_dir / MARKER).is_file():
        raise ConfigError(f"output_dir: overwrite=true refuses {output_dir}: it has no {MARKER}, so aware did not "
                          f"create it (or an older aware did); remove it yourself or choose another output_dir")


def lock_run_dir(output_dir: Path):
    """Hold `output_dir/.aware.lock` for the run (a FileLock; release() it at the end); busy → ConfigError."""
    from filelock import FileLock, Timeout

    lock = FileLock(str(output_dir / LOCK), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise ConfigError(f"output_dir: {output_dir} is in use by another aware run (it holds {output_dir / LOCK}); "
                          f"wait for it to finish or choose another output_dir") from None
    return lock


def open_run_dir(output_dir: Path, resolved: Dict[str, Any], *, resume: Optional[str], overwrite: bool):
    """Check, create and lock the run directory, clear it for overwrite=true, write the marker and config.yaml.

    Returns the held lock (release it when the run ends).
    """
    check_output_dir(output_dir, resume=resume, overwrite=overwrite)
    output_dir.mkdir(parents=True, exist_ok=True)
    lock = lock_run_dir(output_dir)
    try:
        check_output_dir(output_dir, resume=resume, overwrite=overwrite)  # again, now that we hold the lock
        prepare(output_dir, resolved, resume=resume, overwrite=overwrite)
    except BaseException:
        lock.release()
        raise
    return lock


def prepare(output_dir: Path, resolved: Dict[str, Any], *, resume: Optional[str], overwrite: bool) -> Path:
    """Create (or reuse, when resuming) the run directory and write the marker and config.yaml."""
    check_output_dir(output_dir, resume=resume, overwrite=overwrite)
    if holds_run(output_dir) and not resume:  # overwrite=true of a directory aware created
        remove_run_files(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    remove_temporaries(output_dir)
    if not (output_dir / MARKER).exists() and not holds_run(output_dir):
        from aware_cli import __version__

        write_atomic(output_dir / MARKER, json.dumps({"aware": __version__, "created": time.time()}) + "\n")
    write_atomic(output_dir / "config.yaml", yaml.safe_dump(redact(resolved), sort_keys=False, allow_unicode=True))
    return output_dir


def remove_run_files(output_dir: Path) -> List[str]:
    """Remove what aware wrote into `output_dir` (`AWARE_NAMES` and its temporaries); returns what is left."""
    for name in AWARE_NAMES:
        _remove(output_dir / name)
    remove_temporaries(output_dir)
    return sorted(p.name for p in output_dir.iterdir() if p.name != LOCK)


def remove_temporaries(root: Path) -> None:
    """Temporaries of atomic writes (`.NAME.tmp`, `.tmp-NAME`) in `root` and `root/checkpoints`."""
    for folder in (root, root / "checkpoints"):
        if folder.is_dir():
            for path in folder.iterdir():
                if _TEMPORARY.match(path.name):
                    _remove(path)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def set_status(run_dir: Path, state: str, **extra: Any) -> None:
    """running | completed | failed | interrupted, with the time and any detail."""
    write_atomic(run_dir / "status.json", json.dumps({"state": state, "time": time.time(), **extra}) + "\n")


# ----------------------------------------------------------------------------- checkpoints


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
        if file_sha256(path) != digest:
            return f"checksum mismatch in {name}"
    return None


def checkpoint_step(path: Path) -> Optional[int]:
    """N of a `step-N` directory, else None."""
    head, _, tail = path.name.partition("-")
    return int(tail) if head == "step" and tail.isdigit() else None


def list_checkpoints(run_dir: Path) -> List[Path]:
    """Checkpoint directories `checkpoints/step-N` (complete or not), oldest first."""
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.glob("step-*") if p.is_dir() and checkpoint_step(p) is not None]
    return sorted(found, key=checkpoint_step)


def rng_snapshot() -> Dict[str, Any]:
    """The torch (CPU, CUDA), Python and NumPy RNG states now, to write into a later checkpoint."""
    return {**_torch_rng(), "python_rng": _python_rng()}


def save_checkpoint(run_dir: Path, step: int, save_weights: Callable[[Path], None], optimizer, scheduler,
                    trainer_state: Dict[str, Any], keep_last: int = 0, *, rng: Optional[Dict[str, Any]] = None,
                    objective_state: Optional[Dict[str, torch.Tensor]] = None) -> Path:
    """checkpoints/step-N: weights, optimizer + scheduler + RNG tensors, aware_state.json, manifest.

    `rng`: an `rng_snapshot()` taken earlier (default: the RNG states now). `objective_state`:
    tensors an objective keeps across steps (shapo's saliency mask), saved as safetensors.
    Pruning keeps the newest `keep_last` checkpoints up to `step`; a checkpoint numbered above
    `step` belongs to an abandoned timeline and is removed.
    """
    rng = rng or rng_snapshot()

    def write(tmp: Path) -> None:
        save_weights(tmp)
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "torch_rng": rng["torch_rng"], "cuda_rng": rng["cuda_rng"]}, tmp / TRAINING_STATE)
        state = {**trainer_state, "python_rng": rng["python_rng"]}
        (tmp / TRAINER_JSON).write_text(json.dumps(state, indent=2) + "\n")
        if objective_state:
            from safetensors.torch import save_file

            save_file({k: v.detach().contiguous().cpu() for k, v in objective_state.items()},
                      str(tmp / OBJECTIVE_STATE))

    path = write_dir_atomic(run_dir / "checkpoints" / f"step-{step}", write, manifest={"step": step})
    newer = [p for p in list_checkpoints(run_dir) if checkpoint_step(p) > step]
    older = [p for p in list_checkpoints(run_dir) if checkpoint_step(p) <= step]
    for old in newer + (older[:-keep_last] if keep_last else []):
        shutil.rmtree(old, ignore_errors=True)
    return path


def drop_later_checkpoints(run_dir: Path, step: int) -> List[str]:
    """Remove `checkpoints/step-M` with M > `step` (a timeline abandoned by resuming from `step`); messages."""
    dropped = []
    for path in list_checkpoints(run_dir):
        if checkpoint_step(path) > step:
            shutil.rmtree(path, ignore_errors=True)
            dropped.append(f"removed checkpoint {path}: resuming from step {step} abandons the steps after it")
    return dropped


def load_training_state(ckpt: Path, optimizer, scheduler) -> Dict[str, Any]:
    """Restore optimizer, scheduler and RNG states (tensors only: weights_only=True, no pickle).

    The objective's tensors (`objective_state.safetensors`), if any, come back under
    "objective_state" in the returned trainer state.
    """
    state = torch.load(ckpt / TRAINING_STATE, map_location="cpu", weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    if torch.cuda.is_available() and state.get("cuda_rng"):
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    state_json = ckpt / TRAINER_JSON if (ckpt / TRAINER_JSON).is_file() else ckpt / LEGACY_TRAINER_JSON
    trainer_state = json.loads(state_json.read_text())
    _restore_python_rng(trainer_state.pop("python_rng", None))
    if (ckpt / OBJECTIVE_STATE).is_file():
        from safetensors.torch import load_file

        trainer_state["objective_state"] = load_file(str(ckpt / OBJECTIVE_STATE))
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
    for line in jsonl_lines(path.read_text()):
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("step", 0) <= last_step:
            kept.append(line)
    write_atomic(path, "".join(line + "\n" for line in kept))
