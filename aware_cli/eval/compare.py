"""`aware eval compare DIR ...`: every scalar metric of several evaluations side by side."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Tuple

from aware_cli.errors import DataError

SKIP = {"seconds"}


def find_metrics(directory: Path) -> List[Path]:
    """metrics.json files of an eval/<suite> dir, or of every eval/*/ under a run or output dir."""
    if (directory / "metrics.json").is_file():
        return [directory / "metrics.json"]
    found = sorted(directory.glob("eval/*/metrics.json")) + sorted(directory.glob("*/metrics.json"))
    if not found:
        raise DataError(f"{directory}: no metrics.json (expected DIR/eval/<suite>/metrics.json)")
    return found


def flatten(metrics: Dict, prefix: str) -> Dict[str, float]:
    """`suite.key` → number, descending into dicts (per-category, per-type)."""
    out: Dict[str, float] = {}
    for key, value in metrics.items():
        name = f"{prefix}.{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and key not in SKIP:
            out[name] = value
    return out


def collect(directories: List[Path]) -> Tuple[List[str], Dict[str, Dict[str, float]]]:
    """(column labels, {label: {metric: value}}) — one column per directory."""
    columns: Dict[str, Dict[str, float]] = {}
    for directory in directories:
        label = directory.name if directory.name not in columns else str(directory)
        values: Dict[str, float] = {}
        for path in find_metrics(directory):
            try:
                metrics = json.loads(path.read_text())
            except ValueError as e:
                raise DataError(f"{path}: not valid JSON ({e})") from e
            values.update(flatten(metrics, metrics.get("suite", path.parent.name)))
        columns[label] = values
    return list(columns), columns


def to_markdown(labels: List[str], columns: Dict[str, Dict[str, float]]) -> str:
    rows = sorted({key for values in columns.values() for key in values})
    lines = ["| metric | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
    for key in rows:
        cells = [_fmt(columns[label].get(key)) for label in labels]
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _fmt(value) -> str:
    if value is None:
        return "–"
    return f"{value:.4g}" if isinstance(value, float) else str(value)
