"""The statistics of scripts/experiment_alignment.py on hand-checkable numbers."""

import importlib.util
import math
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "experiment_alignment.py"
spec = importlib.util.spec_from_file_location("experiment_alignment", SCRIPT)
exp = importlib.util.module_from_spec(spec)
spec.loader.exec_module(exp)


def test_wilson_interval_known_values():
    lo, hi = exp.wilson(39, 40)
    assert lo == pytest.approx(0.871, abs=1e-3) and hi == pytest.approx(0.996, abs=1e-3)
    assert exp.wilson(0, 43)[0] == 0.0
    assert all(math.isnan(x) for x in exp.wilson(0, 0))


def test_row_values_skip_unjudged_rates_and_missing_means():
    rows = [{"id": 1, "score": 0.2}, {"id": 2, "score": 0.9}, {"id": 3, "score": None}]
    assert exp.row_values(rows, lambda r: r["score"] < 0.5, "rate") == {"1": 1.0, "2": 0.0}
    rows = [{"id": "a", "score": None, "task_scores": {"rouge_l": 0.5}},
            {"id": "b", "score": None, "task_scores": {"rouge_l": None}}]
    assert exp.row_values(rows, lambda r: r["task_scores"]["rouge_l"], "mean") == {"a": 0.5}


def test_paired_difference_uses_common_prompts_only():
    a = {"p1": 1.0, "p2": 0.0, "p3": 1.0, "only_a": 1.0}
    b = {"p1": 0.0, "p2": 0.0, "p3": 0.0, "only_b": 0.0}
    d = exp.paired_difference(a, b)
    assert d["n"] == 3 and d["value"] == pytest.approx(2 / 3)
    sd = math.sqrt(((1 / 3) ** 2 * 2 + (2 / 3) ** 2) / 2)  # differences 1, 0, 1
    assert d["hi"] - d["value"] == pytest.approx(1.96 * sd / math.sqrt(3))
    assert exp.paired_difference({"x": 1.0}, {"x": 0.0})["value"] is None  # one pair: no interval


def test_paired_table_rows_and_signs():
    per_row = {key: {} for key in exp.SUITES}
    columns = {name: {"per_row": {**per_row, "task_rouge": values}} for name, values in
               [("base", {"1": 0.2, "2": 0.4}), ("sft", {"1": 0.3, "2": 0.5}), ("aware", {"1": 0.25, "2": 0.45})]}
    text = exp.paired_table(columns)
    assert "aware − base" in text and "aware − SFT".lower() in text.lower()
    rouge = next(line for line in text.splitlines() if line.startswith("| task ROUGE-L"))
    assert "+0.050" in rouge and "-0.050" in rouge


def test_split_ids_are_excluded_only_from_the_suite_that_was_mixed_in(tmp_path):
    split = tmp_path / "split.json"
    split.write_text('{"mix_source": "builtin:advbench", "train_ids": ["3"]}')
    assert exp.excluded("advbench", split) == [f"exclude_ids={split}"]
    assert exp.excluded("truthfulqa", split) == []
    split.write_text('{"mix_source": "builtin:truthfulqa", "train_ids": ["3"]}')
    assert exp.excluded("truthfulqa", split) == [f"exclude_ids={split}"]
    assert exp.excluded("advbench", split) == [] and exp.excluded("advbench", None) == []
