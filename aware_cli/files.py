"""Atomic file writes, the one helper every writer of aware uses (run directories, checkpoints, ALIGN-PLOTs,
calibrated gate files, eval results, exports); and `jsonl_lines`, how every JSONL reader splits a file.

A file is written into a temporary sibling (`.NAME.PID.tmp`), fsynced and renamed onto its path; a
directory is filled in a temporary sibling (`.tmp-NAME`), fsynced and renamed into place. A reader
sees the old content or the new one, never a part; a failure leaves the path as it was.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

COMPLETE = "COMPLETE"  # the manifest `write_dir_atomic` writes last: every file's sha256


def jsonl_lines(text: str) -> List[str]:
    """The lines of a JSONL text. Split at "\\n" only: str.splitlines() also splits at U+2028, U+2029 and
    U+0085, which json.dumps(ensure_ascii=False) leaves raw inside strings (model outputs carry them)."""
    return text.split("\n")


def replace_atomic(path: Path, write: Callable[[Path], Any]) -> Path:
    """`write(tmp)` into a temporary sibling of `path`, fsync it, then rename it onto `path`."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def write_atomic(path: Path, text: str) -> Path:
    """Write `text` (UTF-8) to `path` atomically."""
    return replace_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_dir_atomic(path: Path, write: Callable[[Path], None], *, manifest: Optional[Dict[str, Any]] = None) -> Path:
    """Fill a temporary sibling directory with `write(tmp)`, fsync it, then rename it to `path`.

    With `manifest`, a `COMPLETE` file listing every file's sha256 is written last. If anything
    fails (disk full, an exception in `write`), the temporary directory is removed and `path` is
    left as it was.
    """
    tmp = path.with_name(f".tmp-{path.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        write(tmp)
        if manifest is not None:
            files = {str(p.relative_to(tmp)): file_sha256(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
            (tmp / COMPLETE).write_text(json.dumps({**manifest, "files": files}, indent=1) + "\n")
        _fsync_tree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)
    _fsync_dir(path.parent)
    return path


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
