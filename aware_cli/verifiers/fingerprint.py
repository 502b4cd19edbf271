"""What makes a verifier's scores what they are, as plain data: the building blocks of its identity.

A verifier's identity (`base.verifier_identity`) keys the on-disk score cache (`disk_cache.py`).
Each verifier module declares its own part when it registers (`register_verifier(name, blocks=...,
fingerprint=...)`, `register_block(block)`); the helpers here know no verifier: they hash values,
file contents and the (name, size, mtime) of local model files.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional

from aware_cli import files


def digest(value: Any) -> str:
    """SHA-256 of `value` as canonical JSON (sorted keys; repr for what JSON cannot hold)."""
    text = json.dumps(value, sort_keys=True, default=repr, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def file_sha256(path: Path) -> Optional[str]:
    """SHA-256 of a file's bytes (None when it cannot be read)."""
    try:
        return files.file_sha256(Path(path))
    except OSError:
        return None


def path_fingerprint(name: str) -> Optional[List[Any]]:
    """(name, size, mtime) of a local model file or of the files directly in a model directory."""
    path = Path(name).expanduser()
    try:
        if path.is_file():
            stat = path.stat()
            return [[path.name, stat.st_size, stat.st_mtime_ns]]
        if path.is_dir():
            rows = []
            for child in sorted(path.iterdir()):
                if child.is_file():
                    stat = child.stat()
                    rows.append([child.name, stat.st_size, stat.st_mtime_ns])
            return rows
    except OSError:
        return None
    return None  # a hub id: its name (in the block) is the identity


def block_payload(values: Any, *, paths: Iterable[str] = (), drop: Iterable[str] = ()) -> Dict[str, Any]:
    """A config block as a dict, without the fields in `drop`, plus `<field>_files` for each of `paths`
    (fields naming local files or model directories whose contents change the scores)."""
    out = dataclasses.asdict(values)
    for name in drop:
        out.pop(name, None)
    for name in paths:
        if out.get(name):
            out[f"{name}_files"] = path_fingerprint(str(out[name]))
    return out
