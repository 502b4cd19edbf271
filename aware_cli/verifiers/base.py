"""The verifier contract, the `Verifier` wrapper that enforces it, and the registry.

A verifier is a TRL-style reward function::

    fn(prompts: list[str], completions: list[str], **kwargs) -> list[float | None]

one score in [0, 1] per completion (1 = aligned), None where it cannot judge. The pipeline
passes the per-row kwargs `harmful` (list[Optional[bool]]), `references` (list[str]) and
`ids` (list[str]) and `metas` (list[dict]: the row's meta; `meta["curated_label"]` marks a `harmful` label
from a curated safety set, see `data.anchors.label_field`); a verifier must accept and ignore the ones it does
not use.

`Verifier` wraps such a function: it batches the calls, checks every result against the
contract (raising `VerifierError` with a one-line message) and caches scores by hash.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import logging
import math
import numbers
import sqlite3
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

from aware_cli.config.schema import VerifierConfig
from aware_cli.errors import AwareError, ConfigError
from aware_cli.verifiers.disk_cache import DiskCache, batch_keys
from aware_cli.verifiers.fingerprint import block_payload, digest

log = logging.getLogger(__name__)

RewardFn = Callable[..., Sequence[Optional[float]]]
Factory = Callable[[VerifierConfig], Union["Verifier", RewardFn]]

VERIFIERS: Dict[str, Factory] = {}
# What each verifier's scores depend on (its disk-cache identity, `verifier_identity`), declared as it registers:
BLOCKS: Dict[str, Tuple[str, ...]] = {}  # verifier.name → the config blocks it reads (unlisted: every block)
FINGERPRINTS: Dict[str, Callable[[VerifierConfig], Dict[str, Any]]] = {}  # verifier.name → extra identity fields
BLOCK_FINGERPRINTS: Dict[str, Callable[[VerifierConfig], Any]] = {}  # block → its identity (default: its fields)
# VerifierConfig fields that do not affect scores.
EXCLUDED_FIELDS = frozenset({"batch_size", "cache", "cache_dir", "device", "max_none_frac"})
COMMON_FIELDS = ("name", "target", "aligned_when", "kwargs")
IDENTITY_SCHEMA = 1  # the identity's own layout; bump to invalidate every cached score


class VerifierError(AwareError):
    """A verifier returned something that breaks the contract (wrong length, not a score in [0, 1])."""


def register_verifier(name: str, *, blocks: Optional[Sequence[str]] = None,
                      fingerprint: Optional[Callable[[VerifierConfig], Dict[str, Any]]] = None
                      ) -> Callable[[Factory], Factory]:
    """Decorator: register `factory(cfg: VerifierConfig) -> Verifier` under `verifier.name=<name>`.

    `blocks`: the `verifier.<block>` config blocks whose values change its scores (None: every block);
    `fingerprint(cfg)`: further identity fields (e.g. the contents of a file it reads). Together with
    `register_block` they are the verifier's cache identity (`verifier_identity`).
    """

    def decorator(factory: Factory) -> Factory:
        previous = VERIFIERS.get(name)
        # Re-importing the same module may register again; a different factory under a taken name is a bug.
        if previous is not None and _qualified_name(previous) != _qualified_name(factory):
            raise ValueError(f"verifier {name!r} is already registered by {_qualified_name(previous)}")
        VERIFIERS[name] = factory
        if blocks is not None:
            BLOCKS[name] = tuple(blocks)
        if fingerprint is not None:
            FINGERPRINTS[name] = fingerprint
        return factory

    return decorator


def register_block(block: str) -> Callable[[Callable[[VerifierConfig], Any]], Callable[[VerifierConfig], Any]]:
    """Decorator: `fn(cfg) -> identity of verifier.<block>` for a block whose plain field values are not
    enough (transport fields to leave out, files whose contents count); default: `block_payload`."""

    def decorator(fn: Callable[[VerifierConfig], Any]) -> Callable[[VerifierConfig], Any]:
        BLOCK_FINGERPRINTS[block] = fn
        return fn

    return decorator


def verifier_identity(cfg: VerifierConfig) -> str:
    """A stable SHA-256 of what makes this verifier's scores what they are (see `identity_payload`)."""
    return digest(identity_payload(cfg))


def identity_payload(cfg: VerifierConfig) -> Dict[str, Any]:
    """The fields `verifier_identity` hashes, as a plain dict: the name, target, aligned_when, kwargs, the
    verifier's own blocks and fingerprint and the aware version; never batch_size, cache, cache_dir,
    device or max_none_frac. A verifier registered without `blocks` hashes every field and block."""
    from aware_cli import __version__

    payload: Dict[str, Any] = {"aware": __version__, "schema": IDENTITY_SCHEMA}
    for name in COMMON_FIELDS:
        payload[name] = getattr(cfg, name)
    if cfg.name in FINGERPRINTS:
        payload.update(FINGERPRINTS[cfg.name](cfg))
    blocks = BLOCKS.get(cfg.name)
    if blocks is None:  # a third-party verifier: every field but the excluded ones
        blocks = tuple(f.name for f in dataclasses.fields(cfg) if dataclasses.is_dataclass(getattr(cfg, f.name)))
        payload.update({f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)
                        if f.name not in EXCLUDED_FIELDS and f.name not in blocks and f.name not in payload})
    for block in blocks:
        rule = BLOCK_FINGERPRINTS.get(block)
        payload[block] = rule(cfg) if rule is not None else block_payload(getattr(cfg, block))
    return payload


def build_verifier(cfg: VerifierConfig, device: Any = None) -> "Verifier":
    """The `Verifier` named by `cfg.name`, built from `cfg`.

    `device`: where `verifier.device=auto` puts the verifier's model (the policy's device, so the judge
    shares it unless told otherwise); None keeps auto (cuda when available, else cpu).
    """
    if device is not None and cfg.device == "auto":
        cfg = dataclasses.replace(cfg, device=str(device))
    factory = VERIFIERS.get(cfg.name)
    if factory is None:
        raise ConfigError(_unknown_name_message(cfg.name))
    built = factory(cfg)
    if not isinstance(built, Verifier):
        # Third-party factories may return the bare reward function; wrap it with the config's settings.
        built = Verifier(built, name=cfg.name, batch_size=cfg.batch_size, cache=cfg.cache)
    # A composite's components cache on disk themselves (they inherit cache_dir): storing twice buys nothing.
    if cfg.cache_dir and cfg.name != "composite":
        try:
            built.attach_disk_cache(DiskCache(cfg.cache_dir), verifier_identity(cfg))
        except DISK_ERRORS as exc:  # a corrupt file, a read-only or full disk: score without the cache
            built.disk_cache_failed(exc)
    return built


def verifier_device(name: str):
    """`verifier.device` as a torch.device (auto: cuda when available, else cpu); a bad name is a ConfigError."""
    from aware_cli.errors import ModelError
    from aware_cli.models.loading import resolve_device

    try:
        return resolve_device(name)
    except ModelError as exc:
        raise ConfigError(str(exc).replace("model.device", "verifier.device", 1)) from None


# What an on-disk cache can raise that must not stop a run: SQLite errors (corrupt file, disk full, locking on a
# network file system) and OS errors (permissions, disk full).
DISK_ERRORS = (sqlite3.Error, OSError)


class Verifier:
    """A reward function with batching, contract checks and a score cache.

    `stats` counts: `calls` (invocations of the wrapped function), `scored` (responses it scored),
    `cached_hits` (responses answered from the cache, including duplicates within one call),
    `none` (None scores returned to the caller) and `seconds` (wall time spent in `__call__`).
    """

    def __init__(self, fn: RewardFn, *, name: str, batch_size: int = 64, cache: bool = True):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.fn = fn
        self.name = name
        self.batch_size = batch_size
        self.cache_enabled = cache
        self._cache: Dict[str, Optional[float]] = {}
        self.stats: Dict[str, float] = {"calls": 0, "scored": 0, "cached_hits": 0, "none": 0, "seconds": 0.0}
        self._disk = None  # DiskCache shared across runs (verifier.cache_dir), with this verifier's identity
        self._identity = ""

    def refusal_writer(self) -> Optional[Callable[[List[str]], List[Optional[str]]]]:
        """`write_refusals(prompts)` of verifiers that can write refusal targets (guard_lm, http_judge, ...)."""
        return self.__dict__.get("write_refusals") or getattr(self.fn, "write_refusals", None)

    def attach_disk_cache(self, disk, identity: str) -> None:
        """Reuse scores stored on disk by earlier runs of the same verifier (keyed by its identity)."""
        self._disk, self._identity = disk, identity
        self.stats["disk_hits"] = 0

    def disk_cache_failed(self, exc: BaseException) -> None:
        """The on-disk cache failed (`DISK_ERRORS`): warn once and score without it from now on."""
        where = getattr(self._disk, "path", None)
        self._disk = None
        self.stats["disk_errors"] = self.stats.get("disk_errors", 0) + 1
        if self.stats["disk_errors"] == 1:
            log.warning("verifier %s: the score cache%s failed (%s: %s); continuing without it", self.name,
                        f" {where}" if where else "", type(exc).__name__, exc)

    def __repr__(self) -> str:
        return f"Verifier(name={self.name!r}, batch_size={self.batch_size}, cache={self.cache_enabled})"

    def clear_cache(self) -> None:
        self._cache.clear()

    def __call__(self, prompts: Sequence[str], completions: Sequence[str], **kwargs: Any) -> List[Optional[float]]:
        start = time.perf_counter()
        try:
            return self._call(prompts, completions, **kwargs)
        finally:
            self.stats["seconds"] += time.perf_counter() - start

    def _call(self, prompts: Sequence[str], completions: Sequence[str], **kwargs: Any) -> List[Optional[float]]:
        n = len(completions)
        if len(prompts) != n:
            raise ValueError(f"verifier {self.name!r}: {len(prompts)} prompts but {n} completions")
        # A list-valued kwarg as long as the batch holds one value per response; anything else is shared.
        per_item = {k: v for k, v in kwargs.items() if isinstance(v, (list, tuple)) and len(v) == n}
        shared = {k: v for k, v in kwargs.items() if k not in per_item}

        scores: List[Optional[float]] = [None] * n
        keys = [self._key(prompts[i], completions[i], per_item, shared, i) for i in range(n)]
        todo = self._indices_to_score(keys, scores)
        disk_keys: Dict[int, str] = {}
        if self._disk is not None and todo:
            try:
                todo, disk_keys = self._from_disk(todo, prompts, completions, per_item, shared, scores, keys)
            except DISK_ERRORS as exc:
                self.disk_cache_failed(exc)
        for start in range(0, len(todo), self.batch_size):
            batch = todo[start:start + self.batch_size]
            for i, score in zip(batch, self._score_batch(prompts, completions, per_item, shared, batch)):
                scores[i] = score
                if self.cache_enabled:
                    self._cache[keys[i]] = score
        if self.cache_enabled:
            self._fill_duplicates(keys, scores, todo)
        if disk_keys and self._disk is not None:
            try:
                self._disk.put_many([(disk_keys[i], scores[i]) for i in todo])
            except DISK_ERRORS as exc:
                self.disk_cache_failed(exc)

        self.stats["none"] += sum(score is None for score in scores)
        return scores

    def _from_disk(self, todo, prompts, completions, per_item, shared, scores, keys):
        """Fill `scores` from the disk cache; returns (indices still to score, their disk keys)."""
        row_kwargs = {k: [v[i] for i in todo] for k, v in per_item.items()}
        dkeys = batch_keys(self._identity, [prompts[i] for i in todo], [completions[i] for i in todo],
                           {**row_kwargs, **shared})
        hits, misses = self._disk.split(dkeys)
        for j, score in hits.items():
            scores[todo[j]] = score
            if self.cache_enabled:
                self._cache[keys[todo[j]]] = score
        self.stats["disk_hits"] += len(hits)
        return [todo[j] for j in misses], {todo[j]: dkeys[j] for j in misses}

    def _indices_to_score(self, keys: List[str], scores: List[Optional[float]]) -> List[int]:
        """Indices that need the wrapped function; cache hits are written into `scores` now."""
        if not self.cache_enabled:
            return list(range(len(keys)))
        todo, pending = [], set()
        for i, key in enumerate(keys):
            if key in self._cache:
                scores[i] = self._cache[key]
                self.stats["cached_hits"] += 1
            elif key in pending:
                self.stats["cached_hits"] += 1  # a repeat within this call; filled after scoring
            else:
                pending.add(key)
                todo.append(i)
        return todo

    def _fill_duplicates(self, keys: List[str], scores: List[Optional[float]], scored: List[int]) -> None:
        scored_set = set(scored)
        for i, key in enumerate(keys):
            if i not in scored_set and key in self._cache:
                scores[i] = self._cache[key]

    def _score_batch(self, prompts, completions, per_item, shared, batch: List[int]) -> List[Optional[float]]:
        batch_kwargs = {k: [v[i] for i in batch] for k, v in per_item.items()}
        result = self.fn([prompts[i] for i in batch], [completions[i] for i in batch], **batch_kwargs, **shared)
        self.stats["calls"] += 1
        self.stats["scored"] += len(batch)
        return self._checked(result, batch)

    def _checked(self, result: Any, batch: List[int]) -> List[Optional[float]]:
        """`result` as a list of floats/None, or VerifierError naming the verifier and the bad item."""
        if isinstance(result, (str, bytes)) or not hasattr(result, "__len__"):
            raise VerifierError(
                f"verifier {self.name!r} returned {type(result).__name__}, expected a list of scores")
        result = list(result)
        if len(result) != len(batch):
            raise VerifierError(
                f"verifier {self.name!r} returned {len(result)} scores for {len(batch)} responses")
        return [self._checked_score(value, index) for value, index in zip(result, batch)]

    def _checked_score(self, value: Any, index: int) -> Optional[float]:
        if value is None:
            return None
        if hasattr(value, "item") and not isinstance(value, numbers.Number):
            value = value.item()  # 0-d numpy/torch values
        if isinstance(value, bool):
            return 1.0 if value else 0.0
        if not isinstance(value, numbers.Real):
            raise VerifierError(
                f"verifier {self.name!r} returned {value!r} ({type(value).__name__}) for response {index}; "
                "expected a number in [0, 1] or None")
        score = float(value)
        if not math.isfinite(score) or not 0.0 <= score <= 1.0:
            raise VerifierError(
                f"verifier {self.name!r} returned {score!r} for response {index}; expected a number in [0, 1] or None")
        return score

    @staticmethod
    def _key(prompt: str, completion: str, per_item: Dict[str, Sequence], shared: Dict[str, Any], i: int) -> str:
        payload = [prompt, completion, sorted((k, v[i]) for k, v in per_item.items()), sorted(shared.items())]
        text = json.dumps(payload, default=repr, ensure_ascii=False)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _qualified_name(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


def _unknown_name_message(name: str) -> str:
    choices = sorted(VERIFIERS)
    message = f"verifier.name: unknown verifier {name!r} (choose from: {', '.join(choices)})"
    close = difflib.get_close_matches(name, choices, n=1)
    if close:
        message += f"; did you mean {close[0]!r}?"
    return message
