"""Safety anchors: prompt-only rows aware adds to every training step (`data.anchors`).

`load_anchors` reads them (seeded order, ids prefixed `anchor-`); `anchors_for_step` says which ones a step
uses (consecutive slices of per-epoch seeded permutations, a pure function of the step as for task rows, so a
resumed run sees the same anchors). With `data.anchors.label_field` an anchor keeps its curator's harmful/benign
label and is marked `meta["curated_label"]`, which verifiers may trust (harm does) where they ignore task rows'
labels. Their reference answers are the base model's and are made by the trainer
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
    if not cfg.label_field:
        return [dataclasses.replace(ex, id=ANCHOR_PREFIX + ex.id, harmful=None) for ex in rows]
    return [dataclasses.replace(ex, id=ANCHOR_PREFIX + ex.id, meta={**ex.meta, CURATED_LABEL: True}) for ex in rows]


def anchors_for_step(step: int, count: int, per_step: int, seed: int) -> List[int]:
    """Indices of the step's anchors: slices of per-epoch seeded permutations of `count` rows."""
    out: List[int] = []
    position = step * per_step
    while len(out) < per_step:
        epoch, offset = divmod(position, count)
        order = list(range(count))
        random.Random(seed * 104_729 + epoch + 1).shuffle(order)
        take = min(per_step - len(out), count - offset)
        out.extend(order[offset:offset + take])
        position += take
    return out


def used_anchors(count: int, per_step: int, steps: int, seed: int) -> List[int]:
    """Every anchor index some step of a `steps`-step run uses, in first-use order."""
    seen: dict = {}
    for step in range(steps):
        for index in anchors_for_step(step, count, per_step, seed):
            seen.setdefault(index, None)
    return list(seen)
