"""Safety anchors: prompt-only rows aware adds to every training step (`data.anchors`).

`load_anchors` reads them (seeded order, ids prefixed `anchor-`); `anchors_for_step` says which ones a step
uses (consecutive slices of per-epoch seeded permutations, a pure function of the step as for task rows, so a
resumed run sees the same anchors). With `data.anchors.label_field` an anchor keeps its curator's harmful/benign
label and is marked `meta["curated_label"]`, which verifiers may trust (harm does) where they ignore task rows'
labels. With `data.anchors.pair_field` the rows come in (harmful, benign) pairs on one subject and a step takes
whole pairs (`unit=2`). Their reference answers are the base model's and are made by the trainer
(`pipeline/train.py`), which owns the model.
"""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path
from typing import List, Optional

from aware_cli.config.schema import AnchorsConfig, DataConfig
from aware_cli.data.loaders import CURATED_LABEL, Example, load_examples
from aware_cli.errors import DataError

ANCHOR_PREFIX = "anchor-"
HELD_OUT_SPLITS = {"heldout", "held_out", "test", "eval", "validation"}  # a `split` column's evaluation values


def load_anchors(cfg: AnchorsConfig, data: DataConfig, base_dir: Optional[Path] = None) -> List[Example]:
    """The anchor rows (prompts only), or [] when `data.anchors` is off."""
    if not cfg.path or cfg.per_step == 0:
        return []
    source = dataclasses.replace(data, path=cfg.path, format=cfg.format, prompt_field=cfg.prompt_field,
                                 input_field=None, response_field=None, label_field=cfg.label_field, label_default=None,
                                 where=cfg.where, limit=None, shuffle=True, eval_size=0, missing_hint=None)
    rows = load_examples(source, base_dir)
    if len(rows) < cfg.per_step:
        raise DataError(f"data.anchors.per_step={cfg.per_step}: only {len(rows)} anchor rows in {cfg.path} "
                        f"(data.anchors.where={cfg.where})")
    held_out = sorted({str(ex.meta.get("columns", {}).get("split")) for ex in rows} & HELD_OUT_SPLITS)
    if held_out:
        raise DataError(f"data.anchors.where={cfg.where} selects rows of the held-out split {held_out[0]!r} of "
                        f"{cfg.path}: anchors are trained on; select the training rows (data.anchors.where.split=train)")
    if not cfg.label_field:
        if cfg.pair_field:
            raise DataError(f"data.anchors.pair_field={cfg.pair_field} needs data.anchors.label_field: a pair is one "
                            "harmful and one benign request, and only the curator's labels say which is which")
        return [dataclasses.replace(ex, id=ANCHOR_PREFIX + ex.id, harmful=None) for ex in rows]
    rows = [dataclasses.replace(ex, id=ANCHOR_PREFIX + ex.id, meta={**ex.meta, CURATED_LABEL: True}) for ex in rows]
    return _pairs(rows, cfg) if cfg.pair_field else rows


def _pairs(rows: List[Example], cfg: AnchorsConfig) -> List[Example]:
    """(harmful, benign) pairs on one subject, flattened: rows 2i and 2i+1 are pair i, in the rows' seeded order.

    Within a subject the i-th harmful row (in that order) is paired with the i-th benign one; rows left over, and
    subjects with only one label, are not used.
    """
    if cfg.per_step % 2:
        raise DataError(f"data.anchors.per_step={cfg.per_step} must be even with data.anchors.pair_field "
                        f"(a step takes whole harmful/benign pairs)")
    harmful: dict = {}
    benign: dict = {}
    for ex in rows:
        subject = ex.meta.get("columns", {}).get(cfg.pair_field)
        if subject is None or ex.harmful is None:
            continue
        (harmful if ex.harmful else benign).setdefault(subject, []).append(ex)
    pairs = [pair for subject in harmful for pair in zip(harmful[subject], benign.get(subject, []))]
    if len(pairs) * 2 < cfg.per_step:
        raise DataError(f"data.anchors.pair_field={cfg.pair_field}: only {len(pairs)} harmful/benign pairs in "
                        f"{cfg.path} (data.anchors.per_step={cfg.per_step} takes {cfg.per_step // 2} a step)")
    return [ex for pair in pairs for ex in pair]


def anchors_for_step(step: int, count: int, per_step: int, seed: int, unit: int = 1) -> List[int]:
    """Indices of the step's anchors: slices of per-epoch seeded permutations of the `count // unit` units of
    `unit` consecutive rows (unit 2: the harmful/benign pairs of `data.anchors.pair_field`)."""
    units, wanted = count // unit, per_step // unit
    out: List[int] = []
    position = step * wanted
    while len(out) < wanted:
        epoch, offset = divmod(position, units)
        order = list(range(units))
        random.Random(seed * 104_729 + epoch + 1).shuffle(order)
        take = min(wanted - len(out), units - offset)
        out.extend(order[offset:offset + take])
        position += take
    return [u * unit + j for u in out for j in range(unit)]


def used_anchors(count: int, per_step: int, steps: int, seed: int, unit: int = 1) -> List[int]:
    """Every anchor index some step of a `steps`-step run uses, in first-use order."""
    seen: dict = {}
    for step in range(steps):
        for index in anchors_for_step(step, count, per_step, seed, unit):
            seen.setdefault(index, None)
    return list(seen)


def anchor_unit(cfg: AnchorsConfig) -> int:
    """Rows a step takes together: 2 (a harmful/benign pair) with data.anchors.pair_field, else 1."""
    return 2 if cfg.pair_field else 1
