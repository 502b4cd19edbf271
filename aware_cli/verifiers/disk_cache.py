"""An on-disk verifier score cache (`verifier.cache_dir`), shared by runs, resumes and processes.

One SQLite file (`<cache_dir>/verifier_scores.sqlite`, WAL mode) holds one table of
(key → score). A key is the SHA-256 of the verifier's identity, the prompt, the completion and
the row's keyword arguments that can change the score (`harmful`, `references`, `metas`, ...;
not `ids`). The identity is the verifier's own (`base.verifier_identity`): each verifier declares
what its scores depend on when it registers; this module knows no verifier.

Usage (how `Verifier` can wire it)::

    cache = DiskCache(cfg.cache_dir)
    identity = verifier_identity(cfg)
    keys = batch_keys(identity, prompts, completions, kwargs)
    hits, misses = cache.split(keys)                 # {index: score or None}, [indices to score]
    ...score the misses...
    cache.put_many((keys[i], score) for i, score in new_scores)

`get_many` returns, per key, None for a miss, the float for a hit, or `NONE_SCORE` for a stored
"could not judge". `put_many` skips None scores unless `include_none=True`: most Nones are
transient (timeouts, an endpoint down) and should be retried by the next run.
"""

from __future__ import annotations

import math
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

from aware_cli.verifiers.fingerprint import digest

DB_NAME = "verifier_scores.sqlite"
# Per-row kwargs that never change a score (row ids are bookkeeping).
IGNORED_ROW_KWARGS = frozenset({"ids"})
_CHUNK = 400  # keys per SELECT (below SQLite's bound-variable limit)


class _NoneScore:
    """A stored "could not judge" (None) score, distinct from a cache miss."""

    _instance: Optional["_NoneScore"] = None

    def __new__(cls):
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "NONE_SCORE"

    def __bool__(self) -> bool:
        return False

    def __reduce__(self):
        return (_NoneScore, ())


NONE_SCORE = _NoneScore()
CachedValue = Union[float, _NoneScore, None]


# ----------------------------------------------------------------------------- keys


def cache_key(identity: str, prompt: str, completion: str, row: Optional[Mapping[str, Any]] = None, *,
              ignore: Iterable[str] = IGNORED_ROW_KWARGS) -> str:
    """The cache key of one (prompt, completion) under `identity`, with that row's kwargs."""
    ignored = set(ignore)
    extras = sorted((k, v) for k, v in (row or {}).items() if k not in ignored)
    return digest([identity, prompt, completion, extras])


def batch_keys(identity: str, prompts: Sequence[str], completions: Sequence[str],
               kwargs: Optional[Mapping[str, Any]] = None, *,
               ignore: Iterable[str] = IGNORED_ROW_KWARGS) -> List[str]:
    """Keys of a whole call: list kwargs as long as the batch are per row, others shared by all rows."""
    n = len(completions)
    kwargs = dict(kwargs or {})
    per_row = {k: v for k, v in kwargs.items() if isinstance(v, (list, tuple)) and len(v) == n}
    shared = {k: v for k, v in kwargs.items() if k not in per_row}
    return [cache_key(identity, prompts[i], completions[i], {**shared, **{k: v[i] for k, v in per_row.items()}},
                      ignore=ignore) for i in range(n)]


# ----------------------------------------------------------------------------- the store


class DiskCache:
    """Scores in one SQLite file, safe for several threads and processes (WAL, busy timeout).

    `path` is a directory (the file `verifier_scores.sqlite` inside it is used) or a file ending
    in .sqlite, .sqlite3 or .db. Each process opens its own connection (also after a fork).
    """

    def __init__(self, path: Union[str, os.PathLike], *, timeout: float = 60.0):
        path = Path(path).expanduser()
        if path.suffix not in (".sqlite", ".sqlite3", ".db"):
            path = path / DB_NAME
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.timeout = float(timeout)
        self._lock = threading.Lock()
        self._conn: Optional[sqlite3.Connection] = None
        self._pid = -1
        self.stats: Dict[str, int] = {"hits": 0, "misses": 0, "writes": 0}
        with self._lock:
            self._connection()

    def __repr__(self) -> str:
        return f"DiskCache({str(self.path)!r})"

    # -- connection

    def _connection(self) -> sqlite3.Connection:
        if self._conn is not None and self._pid == os.getpid():
            return self._conn
        # After a fork the parent's connection must not be used (or closed) here: open a new one.
        conn = sqlite3.connect(str(self.path), timeout=self.timeout, isolation_level=None, check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
        self._retry_locked(lambda: conn.execute("PRAGMA journal_mode = WAL").fetchone())
        conn.execute("PRAGMA synchronous = NORMAL")
        self._retry_locked(lambda: conn.execute(
            "CREATE TABLE IF NOT EXISTS scores (key TEXT PRIMARY KEY, score REAL, created REAL NOT NULL)"))
        self._conn, self._pid = conn, os.getpid()
        return conn

    def _retry_locked(self, action):
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                return action()
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc).lower() and "busy" not in str(exc).lower() \
                        or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
            self._conn = None

    def __enter__(self) -> "DiskCache":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- reads and writes

    def get_many(self, keys: Sequence[str]) -> List[CachedValue]:
        """Per key: None (miss), a float (hit) or NONE_SCORE (a stored None)."""
        found: Dict[str, Optional[float]] = {}
        unique = list(dict.fromkeys(keys))
        with self._lock:
            conn = self._connection()
            for start in range(0, len(unique), _CHUNK):
                chunk = unique[start:start + _CHUNK]
                marks = ",".join("?" * len(chunk))
                rows = self._retry_locked(lambda: conn.execute(
                    f"SELECT key, score FROM scores WHERE key IN ({marks})", chunk).fetchall())
                found.update(rows)
        out: List[CachedValue] = []
        for key in keys:
            if key not in found:
                out.append(None)
            else:
                score = found[key]
                out.append(NONE_SCORE if score is None else float(score))
        hits = sum(v is not None for v in out)
        self.stats["hits"] += hits
        self.stats["misses"] += len(out) - hits
        return out

    def split(self, keys: Sequence[str]) -> Tuple[Dict[int, Optional[float]], List[int]]:
        """({index: cached score or None}, [indices not in the cache])."""
        hits: Dict[int, Optional[float]] = {}
        misses: List[int] = []
        for i, value in enumerate(self.get_many(keys)):
            if value is None:
                misses.append(i)
            else:
                hits[i] = None if value is NONE_SCORE else float(value)  # type: ignore[arg-type]
        return hits, misses

    def put_many(self, items: Iterable[Tuple[str, Optional[float]]], *, include_none: bool = False) -> int:
        """Store (key, score) pairs in one transaction; returns how many were written (non-finite skipped)."""
        now = time.time()
        rows = [(key, None if score is None else float(score), now) for key, score in items
                if (score is None and include_none) or (score is not None and math.isfinite(score))]
        if not rows:
            return 0
        with self._lock:
            conn = self._connection()

            def write() -> None:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    conn.executemany("INSERT OR REPLACE INTO scores (key, score, created) VALUES (?, ?, ?)", rows)
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")

            self._retry_locked(write)
        self.stats["writes"] += len(rows)
        return len(rows)

    def __len__(self) -> int:
        with self._lock:
            conn = self._connection()
            return int(conn.execute("SELECT COUNT(*) FROM scores").fetchone()[0])

    def clear(self) -> None:
        with self._lock:
            conn = self._connection()
            self._retry_locked(lambda: conn.execute("DELETE FROM scores"))
