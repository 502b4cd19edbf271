"""Training data with a second source mixed in, and the split that keeps its held-out rows unseen.

`alpaca_harmful_mix`: Alpaca rows plus a share (default 10%) of AdvBench harmful goal → compliance
pairs — the adversarial fine-tuning setting where plain SFT learns to comply. `truthful`: Alpaca rows
plus TruthfulQA questions whose answer columns the truthfulness verifier checks. The mixed-in source is
split (seeded) into a training part and a held-out part; only the training part can be sampled, and
the ids of both parts go to the run's split.json so evaluation can leave the training part out
(`exclude_ids=<run>/split.json`: the ids are row numbers of the source file, as the eval suites number them).
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from aware_cli.config.schema import DataConfig
from aware_cli.data.loaders import Example, load_examples, split_examples
from aware_cli.errors import DataError

MIX_PREFIX = "mix-"


@dataclass
class TrainingData:
    train: List[Example]
    held_out: List[Example]  # in-training evaluation: data.mix.eval_rows held-out mixed rows, then the task's
    split: Dict[str, Any]  # written to split.json


def load_training_data(cfg: DataConfig, base_dir: Optional[Path] = None) -> TrainingData:
    """The task rows (train / held-out) plus, when `data.mix.path` is set, the mixed-in training rows."""
    task = load_examples(cfg, base_dir)
    train, held_out = split_examples(task, cfg.eval_size)
    split: Dict[str, Any] = {"data": cfg.path, "seed": cfg.seed, "task_heldout_ids": [ex.id for ex in held_out]}
    if cfg.mix.path and cfg.mix.share > 0:
        mixed, mix_eval, mix_split = _mixed_rows(cfg, len(train), base_dir)
        train = _interleave(train, mixed, cfg.seed)
        held_out = mix_eval + held_out  # first, so eval.max_prompts keeps them
        split.update(mix_split)
    return TrainingData(train=train, held_out=held_out, split=split)


def _mixed_rows(cfg: DataConfig, task_rows: int,
                base_dir: Optional[Path]) -> Tuple[List[Example], List[Example], Dict[str, Any]]:
    """(training rows, held-out rows for in-training evaluation, split.json entries) of the mixed-in source."""
    mix = cfg.mix
    source = dataclasses.replace(cfg, path=mix.path, format=mix.format, prompt_field=mix.prompt_field,
                                 input_field=None, response_field=mix.response_field, label_field=None,
                                 label_default=mix.harmful, limit=None, shuffle=True, eval_size=0,
                                 missing_hint=None, where=mix.where)
    rows = load_examples(source, base_dir)  # shuffled with data.seed: the split below is seeded too
    heldout_count = int(round(len(rows) * mix.heldout_fraction))
    held, pool = rows[:heldout_count], rows[heldout_count:]
    wanted = int(round(mix.share / (1 - mix.share) * task_rows))  # share of the combined training set
    if wanted > len(pool):
        raise DataError(f"data.mix.share={mix.share}: needs {wanted} rows from {mix.path} but only {len(pool)} "
                        f"are outside the held-out part (data.mix.heldout_fraction={mix.heldout_fraction})")
    chosen = pool[:wanted]
    split = {"mix_source": mix.path, "train_ids": sorted((ex.id for ex in chosen), key=_id_order),
             "heldout_ids": sorted((ex.id for ex in held), key=_id_order)}
    if mix.eval_rows > len(held):
        raise DataError(f"data.mix.eval_rows={mix.eval_rows}: only {len(held)} rows of {mix.path} are held out "
                        f"(data.mix.heldout_fraction={mix.heldout_fraction})")
    mixed = [dataclasses.replace(ex, id=MIX_PREFIX + ex.id, harmful=mix.harmful) for ex in chosen]
    evaluated = [dataclasses.replace(ex, id=MIX_PREFIX + ex.id, harmful=mix.harmful) for ex in held[:mix.eval_rows]]
    return mixed, evaluated, split


def _interleave(task: List[Example], mixed: List[Example], seed: int) -> List[Example]:
    rows = task + mixed
    random.Random(seed + 1).shuffle(rows)
    return rows


def _id_order(row_id: str) -> Tuple[int, str]:
    """Numeric ids in numeric order ("9" before "10"), anything else after, alphabetically."""
    return (len(row_id), row_id)
