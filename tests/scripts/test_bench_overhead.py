"""scripts/bench_overhead.py's pooling of alternating rounds, on hand-checkable step times."""

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("bench_overhead", ROOT / "scripts" / "bench_overhead.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def steps(*seconds):
    return [{"timing_s/sample": s / 2, "timing_s/update": s / 2, "generated": 10, "tokens_forwarded": 5,
             "sequences_forwarded": 1, "frac_sft": 1.0, "frac_pg": 0.0, "frac_abstain": 0.0} for s in seconds]


def test_each_runs_first_step_is_dropped_and_the_rest_pooled():
    runs = [steps(100, 1, 2, 3), steps(100, 4, 5, 6)]
    out = bench.summary(runs)
    assert out["median_step_s"] == pytest.approx(3.5)  # median of 1..6: both first steps (100 s) dropped
    assert out["median_step_s_by_round"] == pytest.approx([2.0, 5.0])
    assert out["stages_median_s"]["sample"] == pytest.approx(1.75)
    assert out["step_s"] == [[100, 1, 2, 3], [100, 4, 5, 6]]


def test_a_one_step_run_is_timed_rather_than_dropped():
    assert bench.summary([steps(7)])["median_step_s"] == pytest.approx(7)
