"""Turn a plain (composed) config dict into typed dataclasses, naming the key on any error."""

from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from typing import Any, Dict, List, Optional, Tuple, Type, TypeVar, Union

from aware_cli.errors import ConfigError

T = TypeVar("T")


def schema_keys(cls: type, prefix: str = "") -> List[str]:
    """Every dotted key of a dataclass tree (e.g. `gate.tau_mu`)."""
    keys = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        keys.append(key)
        sub = _dataclass_type(hints[f.name])
        if sub is not None:
            keys.extend(schema_keys(sub, key + "."))
    return keys


def mapping_keys(cls: type, prefix: str = "") -> List[str]:
    """Dotted keys of free-form mapping fields (e.g. `verifier.kwargs`), whose sub-keys are anything."""
    hints = typing.get_type_hints(cls)
    keys = []
    for f in dataclasses.fields(cls):
        tp = _strip_optional(hints[f.name])[0]
        sub = _dataclass_type(tp)
        if sub is not None:
            keys.extend(mapping_keys(sub, f"{prefix}{f.name}."))
        elif typing.get_origin(tp) in (dict, Dict):
            keys.append(prefix + f.name)
    return keys


def suggest(key: str, valid: List[str]) -> str:
    """' (did you mean a, b?)' for the closest valid names, or ''."""
    close = difflib.get_close_matches(key, valid, n=3, cutoff=0.6)
    if not close:  # compare last components too: `gate.tau_muu` vs `gate.tau_mu`
        leaf = key.rsplit(".", 1)[-1]
        close = [v for v in valid if difflib.get_close_matches(leaf, [v.rsplit(".", 1)[-1]], n=1, cutoff=0.75)][:3]
    return f" (did you mean {', '.join(close)}?)" if close else ""


def build(cls: Type[T], values: Dict[str, Any], prefix: str = "") -> T:
    """Instantiate dataclass `cls` from `values`, checking names, types and ranges."""
    if not isinstance(values, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for name in values:
        if name not in fields:
            valid = [prefix + n for n in fields]
            raise ConfigError(f"unknown config key '{prefix}{name}'{suggest(prefix + str(name), valid)}")
    kwargs = {}
    for name, value in values.items():
        f, key = fields[name], prefix + name
        try:
            kwargs[name] = _convert(value, hints[name], key)
        except _TypeMismatch:
            raise ConfigError(f"{key}: expected {_expected(hints[name], f.metadata)}, got {value!r}") from None
        _check_range(kwargs[name], f.metadata, key)
    return cls(**kwargs)


class _TypeMismatch(Exception):
    """A leaf value of the wrong type; `build` reports it with the field's range."""


def _dataclass_type(tp: Any) -> Optional[type]:
    tp = _strip_optional(tp)[0]
    return tp if dataclasses.is_dataclass(tp) else None


def _strip_optional(tp: Any) -> Tuple[Any, bool]:
    if typing.get_origin(tp) is Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _type_name(tp: Any) -> str:
    tp, optional = _strip_optional(tp)
    origin = typing.get_origin(tp)
    if origin in (list, List):
        name = f"list of {_type_name(typing.get_args(tp)[0])}"
    elif origin in (dict, Dict):
        name = "mapping"
    else:
        name = getattr(tp, "__name__", str(tp))
    return f"{name} or null" if optional else name


def _convert(value: Any, tp: Any, key: str) -> Any:
    inner, optional = _strip_optional(tp)
    if value is None:
        if optional:
            return None
        raise _TypeMismatch()
    if dataclasses.is_dataclass(inner):
        return build(inner, value, key + ".")
    origin = typing.get_origin(inner)
    if origin in (list, List):
        if not isinstance(value, (list, tuple)):
            raise _TypeMismatch()
        item_tp = typing.get_args(inner)[0]
        return [_convert(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin in (dict, Dict):
        if not isinstance(value, dict):
            raise _TypeMismatch()
        return dict(value)
    if inner is Any:
        return value
    if inner is bool:
        if isinstance(value, bool):
            return value
    elif inner is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif inner is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
    elif inner is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    raise _TypeMismatch()


def _check_range(value: Any, meta: Any, key: str) -> None:
    if value is None:
        return
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        raise ConfigError(f"{key}: expected one of {', '.join(map(str, choices))}, got {value!r}"
                          f"{suggest(str(value), list(map(str, choices)))}")
    checks = {"ge": lambda v, b: v >= b, "gt": lambda v, b: v > b, "le": lambda v, b: v <= b,
              "lt": lambda v, b: v < b}
    if any(name in meta and not ok(value, meta[name]) for name, ok in checks.items()):
        raise ConfigError(f"{key}: expected {_range_text(meta)}, got {value!r}")


def _range_text(meta: Any) -> str:
    """`in [0, 1]`, `>= 1`, `> 0` from a field's bounds."""
    lo = ("[", meta["ge"]) if "ge" in meta else ("(", meta["gt"]) if "gt" in meta else None
    hi = ("]", meta["le"]) if "le" in meta else (")", meta["lt"]) if "lt" in meta else None
    if lo and hi:
        return f"a value in {lo[0]}{lo[1]}, {hi[1]}{hi[0]}"
    if lo:
        return f"a value {'>=' if lo[0] == '[' else '>'} {lo[1]}"
    if hi:
        return f"a value {'<=' if hi[0] == ']' else '<'} {hi[1]}"
    return "a valid value"


def _expected(tp: Any, meta: Any) -> str:
    """`float in [0.0, 1.0]`, `int >= 1`, `one of soft, hard` — what a key accepts."""
    if meta.get("choices"):
        return "one of " + ", ".join(map(str, meta["choices"]))
    bounds = _range_text(meta) if any(b in meta for b in ("ge", "gt", "le", "lt")) else ""
    return f"{_type_name(tp)} {bounds[len('a value '):]}".strip() if bounds else _type_name(tp)


def field_docs(cls: type, prefix: str = "") -> List[Tuple[str, str, Any, str]]:
    """(key, type, default, doc) for every leaf field: the config reference in README/docs."""
    rows = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = prefix + f.name
        sub = _dataclass_type(hints[f.name])
        if sub is not None:
            rows.extend(field_docs(sub, key + "."))
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        rows.append((key, _type_name(hints[f.name]), default, f.metadata.get("doc", "")))
    return rows
