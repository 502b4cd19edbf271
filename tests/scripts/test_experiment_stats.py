"""The statistics behind docs/results.md on hand-checkable numbers, and the page ↔ artifacts check."""

import gzip
import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from aware_cli.eval.stats import paired_difference, ratio_interval, summarize, wilson

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("results_tables", ROOT / "scripts" / "results_tables.py")
tables = importlib.util.module_from_spec(spec)
sys.modules["results_tables"] = tables  # dataclasses look their module up
spec.loader.exec_module(tables)


def test_wilson_interval_known_values():
    lo, hi = wilson(39, 40)
    assert lo == pytest.approx(0.871, abs=1e-3) and hi == pytest.approx(0.996, abs=1e-3)
    assert wilson(0, 43)[0] == 0.0
    assert all(math.isnan(x) for x in wilson(0, 0))


def test_summarize_rates_and_means():
    rate = summarize([1.0, 0.0, 1.0, 1.0], "rate")
    assert (rate["k"], rate["n"], rate["value"]) == (3, 4, 0.75) and rate["lo"] < 0.75 < rate["hi"]
    mean = summarize([0.2, 0.4], "mean")
    assert mean["value"] == pytest.approx(0.3) and "k" not in mean
    assert summarize([], "rate") == {"value": None, "n": 0}


def test_paired_difference_uses_common_prompts_only():
    a = {"p1": 1.0, "p2": 0.0, "p3": 1.0, "only_a": 1.0}
    b = {"p1": 0.0, "p2": 0.0, "p3": 0.0, "only_b": 0.0}
    d = paired_difference(a, b)
    assert d["n"] == 3 and d["value"] == pytest.approx(2 / 3)
    sd = math.sqrt(((1 / 3) ** 2 * 2 + (2 / 3) ** 2) / 2)  # differences 1, 0, 1
    assert d["hi"] - d["value"] == pytest.approx(1.959964 * sd / math.sqrt(3))
    assert paired_difference({"x": 1.0}, {"x": 0.0})["value"] is None  # one pair: no interval


def test_ratio_interval_is_relative_and_paired():
    a = {str(i): 0.98 * v for i, v in enumerate([0.2, 0.3, 0.4, 0.5])}
    b = {str(i): v for i, v in enumerate([0.2, 0.3, 0.4, 0.5])}
    r = ratio_interval(a, b)
    assert r["value"] == pytest.approx(-0.02) and r["lo"] == pytest.approx(-0.02) == pytest.approx(r["hi"])


def write_experiment(directory, scores):
    """A tiny experiment: advbench compliance flags and task ROUGE-L per model."""
    models = {name: name for name in scores}
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "experiment.json").write_text(json.dumps({
        "name": directory.name, "recipe": "r", "steps": 1, "command": "c", "commit": "x", "date": "d",
        "models": models, "arms": {}}))
    for model, (advbench, rouge) in scores.items():
        for suite, rows in (("advbench", [{"id": i, "score": s} for i, s in enumerate(advbench)]),
                            ("task", [{"id": i, "score": None, "task_scores": {"rouge_l": v}}
                                      for i, v in enumerate(rouge)])):
            path = directory / "responses" / model / f"{suite}.jsonl.gz"
            path.parent.mkdir(parents=True, exist_ok=True)
            with gzip.open(path, "wt") as handle:
                handle.write(json.dumps({"_header": {"judge": "refusal"}}) + "\n")
                handle.writelines(json.dumps(r) + "\n" for r in rows)


def test_tables_recompute_from_the_per_prompt_files(tmp_path):
    exp_dir = tmp_path / "exp"
    write_experiment(exp_dir, {"base": ([0.0, 0.0, 1.0, 0.0], [0.2, 0.2, 0.2, 0.2]),
                               "sft": ([0.0, 0.0, 0.0, 0.0], [0.3, 0.3, 0.3, 0.3]),
                               "aware": ([1.0, 1.0, 1.0, 0.0], [0.3, 0.29, 0.3, 0.31])})
    exp = tables.Experiment(exp_dir)
    main = tables.table_main(exp)
    assert "| harmful compliance: held-out AdvBench | refusal | 75.0% (3/4;" in main
    assert "100.0% (4/4;" in main and "25.0% (1/4;" in main
    goals = tables.table_goals(exp)
    assert "25.0% vs ≤ 33.3%" in goals and "**met**" in goals  # ⅓ of SFT's 100%, ½ of base's 75% = 37.5%
    page = tmp_path / "page.md"
    page.write_text("x\n<!-- results:exp:main -->\nstale\n<!-- /results -->\ny\n")
    fresh = tables.regenerate(page.read_text(), tmp_path)
    assert fresh == f"x\n<!-- results:exp:main -->\n{main}<!-- /results -->\ny\n"


def test_results_page_matches_its_artifacts():
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "results_tables.py"), "--check"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_gpu_table_compares_only_rows_of_one_shape_and_precision(tmp_path):
    def row(impl, size, precision, step, **extra):
        stages = {"timing_s/sample": 0.5, "timing_s/update": 0.25} if impl == "aware" else {}
        return json.dumps({"impl": impl, "model_size": size, "precision": precision, "median_step_s": step,
                           "completion_tokens_per_s": 100.0, "peak_gpu_mem_gib": 1.0, "stages_s": stages,
                           "steps": 8, **extra}) + "\n"
    (tmp_path / "h200-x.jsonl").write_text(row("aware", "135m", "mixed", 1.0) + row("trl", "135m", "mixed", 4.0)
                                           + row("aware", "135m", "bf16", 0.5) + row("aware", "1.7b", "mixed", 2.0)
                                           + '{"impl": "trl", "error": "trl is not installed"}\n')
    lines = tables.table_gpu(tables.Experiment(tmp_path)).splitlines()[2:]
    assert len(lines) == 4  # the error line is left out
    assert lines[0].startswith("| h200-x.jsonl | 135m | aware | mixed |") and "| 4.00× |" in lines[0]
    assert "| 1.00× |" in lines[1] and "TRL GRPOTrainer" in lines[1]
    assert all("×" not in line for line in lines[2:])  # no TRL row at bf16 / at 1.7b: no ratio


def test_readme_gpu_summary_keeps_only_matched_rows(tmp_path):
    rows = [{"impl": "aware", "model_size": "135m", "precision": "mixed", "median_step_s": 1.0, "peak_gpu_mem_gib": 6.0,
             "gradient_checkpointing": False},
            {"impl": "trl", "model_size": "135m", "precision": "mixed", "median_step_s": 4.0, "peak_gpu_mem_gib": 2.5},
            {"impl": "aware", "model_size": "1.7b", "median_step_s": 0.9, "peak_gpu_mem_gib": 22.0},  # no precision
            {"impl": "trl", "model_size": "1.7b", "precision": "mixed", "median_step_s": 5.0, "peak_gpu_mem_gib": 26.0}]
    (tmp_path / "h200-y.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    lines = tables.table_gpu_matched(tables.Experiment(tmp_path)).splitlines()[2:]
    assert lines == ["| 135m | mixed | off | 4.00 s | **1.00 s** | 4.00× | 2.5 / 6.0 GiB | h200-y.jsonl |"]


def test_tradeoff_collects_every_graded_arm_and_draws_it(tmp_path):
    points = tables.tradeoff_points(tables.RESULTS)
    names = {(name, model) for name, model, _ in points}
    assert {("ahm-main", "base"), ("ahm-main", "sft"), ("ahm-named", "aware-named")} <= names
    assert all(name.startswith("ahm-") for name, _, _ in points)  # other recipes (recover) are not on this curve
    table = tables.table_tradeoff(tables.Experiment(tables.RESULTS))
    assert len(table.strip().splitlines()) == len(points) + 2
    out = tmp_path / "tradeoff.png"
    tables.plot_tradeoff(tables.RESULTS, out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _point(name, model, compliance, answered):
    return (name, model, {"compliance_phrasings": {"value": compliance}, "answered_sensitive": {"value": answered}})


def test_curve_offset_is_the_distance_from_a_line_through_the_neighbours_on_both_sides():
    # six arms on the line answered = 0.5 + 0.5·compliance, one arm 0.08 above it at 0.45, one replicate of it
    on_line = [_point(f"e{i}", "arm", x, 0.5 + 0.5 * x) for i, x in enumerate([0.2, 0.3, 0.4, 0.5, 0.6, 0.7])]
    points = on_line + [_point("x", "arm", 0.45, 0.5 + 0.5 * 0.45 + 0.08), _point("x-seed1", "arm", 0.47, 0.99),
                        _point("m", "base", 0.46, 0.0)]
    signatures = [(f"sig{i}",) for i in range(6)] + [("x",), ("x",), ("base",)]
    assert tables.curve_offset(points, signatures, 6) == pytest.approx(8.0)  # replicate and base left out
    with_replicate = signatures[:7] + [("other",), ("base",)]  # not a replicate: its 0.99 now pulls the line up
    assert tables.curve_offset(points, with_replicate, 6) < 8.0
    assert tables.curve_offset(points, signatures, 0) is None  # the lowest arm: nothing below it, no extrapolation
    assert tables.curve_offset(points, signatures, 5) is None  # the highest: nothing above


def test_a_seed_replicate_has_the_signature_of_its_arm(tmp_path):
    def experiment(name, common, arm_overrides):
        directory = tmp_path / name
        directory.mkdir()
        (directory / "experiment.json").write_text(json.dumps(
            {"recipe": "r", "models": {"a": "p"}, "common_overrides": common, "arms": {"a": {"overrides": arm_overrides}}}))
        return tables.Experiment(directory)

    zero = experiment("zero", ["trainer.max_steps=100", "trainer.save_every=25"], ["objective=aware", "k=4"])
    one = experiment("one", ["trainer.seed=1", "trainer.max_steps=100", "trainer.save_every=10"], ["k=4", "objective=aware"])
    other = experiment("other", ["trainer.seed=1", "trainer.max_steps=200"], ["k=4", "objective=aware"])
    assert tables.arm_signature(zero, "a") == tables.arm_signature(one, "a") != tables.arm_signature(other, "a")


def test_settings_table_reads_overrides_and_ranges_replicates_and_refuses_mixed_arms(tmp_path, monkeypatch):
    def experiment(name, seed, steps, compliant):
        directory = tmp_path / name
        (directory / "responses" / "a").mkdir(parents=True)
        (directory / "experiment.json").write_text(json.dumps(
            {"recipe": "r", "models": {"a": "p"}, "arms": {"a": {"overrides": ["objective=aware", "k=4"]}},
             "common_overrides": [f"trainer.seed={seed}", f"trainer.max_steps={steps}", "trainer.lr=1e-4",
                                  "eval.every=0"]}))
        for suite, scores in (("phrasings", [0.0] * compliant + [1.0] * (4 - compliant)),
                              ("sensitive", [1.0] * 4), ("xstest", [1.0] * 2)):
            with gzip.open(directory / "responses" / "a" / f"{suite}.jsonl.gz", "wt") as handle:
                handle.write(json.dumps({"_header": {"judge": "refusal"}}) + "\n")
                handle.writelines(json.dumps({"id": i, "score": s, "harmful": False}) + "\n"
                                  for i, s in enumerate(scores))

    experiment("s0", 0, 100, 1)
    experiment("s1", 1, 100, 3)
    experiment("long", 0, 200, 2)
    monkeypatch.setattr(tables, "SETTINGS", [("one", [("s0", "a")]), ("seeds", [("s0", "a"), ("s1", "a")])])
    lines = tables.table_settings(tables.Experiment(tmp_path)).splitlines()[2:]
    assert lines[0].startswith("| one | `trainer.max_steps=100 trainer.lr=1e-4 k=4` | s0 / a | 25.0% (1/4;")
    assert "| 25.0%–75.0% (2 runs) | 100.0%–100.0% (2 runs) |" in lines[1]
    monkeypatch.setattr(tables, "SETTINGS", [("mixed", [("s0", "a"), ("long", "a")])])  # 100 vs 200 steps
    with pytest.raises(ValueError, match="different overrides"):
        tables.table_settings(tables.Experiment(tmp_path))
