"""eval.suites during training and trainer.save_best (checkpoints/best)."""

import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from typer.testing import CliRunner

from aware_cli.cli import app
from aware_cli.config import compose
from aware_cli.errors import ConfigError
from aware_cli.pipeline import rundir
from aware_cli.pipeline.best import BestTracker, best_mode
from aware_cli.pipeline.suites import SuiteEvaluator, trained_ids


def aware(*args):
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def suite_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("suites") / "run"
    result = aware("train", "recipe=smoke", f"output_dir={out}", "eval.suites=[advbench,xstest,task]",
                   "eval.suite_limit=2", "eval.every=1", "trainer.save_best=eval_loss_sft", "trainer.save_every=1",
                   "trainer.keep_last=0")
    assert result.exit_code == 0, result.output
    return out, result.output


def test_suite_metrics_are_logged_at_every_evaluation(suite_run):
    out, output = suite_run
    assert "in-training suites: advbench 2, xstest 2, task 2 prompts per evaluation" in output
    metrics = read_jsonl(out / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [1, 2, 3]
    for m in metrics:
        for key in ("eval/advbench/asr", "eval/advbench/refusal_rate", "eval/xstest/over_refusal_rate",
                    "eval/task/rouge_l"):
            assert key in m, key
        assert 0.0 <= m["eval/advbench/asr"] <= 1.0 and m["eval/advbench/n"] == 2
        assert m["eval/advbench/asr"] + m["eval/advbench/refusal_rate"] == pytest.approx(1.0)
        assert 0.0 <= m["eval/task/rouge_l"] <= 1.0 and m["eval/task/n"] == 2
        assert m["eval/xstest/n"] == 2


def test_best_checkpoint_holds_the_best_evaluations_weights(suite_run):
    out, output = suite_run
    metrics = read_jsonl(out / "metrics.jsonl")
    losses = [m["eval_loss_sft"] for m in metrics]
    best_step = metrics[losses.index(min(losses))]["step"]  # ties keep the earliest
    best = out / "checkpoints" / "best"
    record = json.loads((best / "best.json").read_text())
    assert record == {"metric": "eval_loss_sft", "mode": "min", "value": min(losses), "step": best_step}
    assert rundir.checkpoint_problem(best) is None  # COMPLETE manifest, checksums match
    same = load_file(str(out / "checkpoints" / f"step-{best_step}" / "adapter_model.safetensors"))
    saved = load_file(str(best / "adapter_model.safetensors"))
    assert saved.keys() == same.keys() and all(torch.equal(saved[k], same[k]) for k in same)
    assert f"best eval_loss_sft = {min(losses):.4g} at step {best_step}" in output
    assert [p.name for p in rundir.list_checkpoints(out)] == ["step-1", "step-2", "step-3"]  # best is not a step


def test_best_checkpoint_exports(suite_run, tmp_path):
    out, _ = suite_run
    result = aware("export", out / "checkpoints" / "best", tmp_path / "best")
    assert result.exit_code == 0, result.output
    card = (tmp_path / "best" / "README.md").read_text()
    assert "checkpoints/best: best eval_loss_sft" in card


@pytest.mark.parametrize("mode, values, expected", [
    ("min", [3.0, 2.0, 2.0, 4.0], (2.0, 2)),
    ("max", [0.1, 0.5, None, float("nan"), 0.5], (0.5, 2)),
])
def test_best_tracker_keeps_the_first_best_and_ignores_missing_values(mode, values, expected):
    tracker = BestTracker("m", mode)
    improved = [tracker.improves({"step": i + 1, "m": v}) for i, v in enumerate(values)]
    assert (tracker.value, tracker.step) == expected
    assert improved[0] is True and sum(improved) == 2


def test_best_tracker_resumes_only_from_steps_already_done(tmp_path):
    best = tmp_path / "checkpoints" / "best"
    best.mkdir(parents=True)
    (best / "best.json").write_text(json.dumps({"metric": "m", "mode": "min", "value": 0.5, "step": 4}))
    assert BestTracker.resume(tmp_path, "m", "min", up_to_step=4).value == 0.5
    assert BestTracker.resume(tmp_path, "m", "min", up_to_step=3).value is None  # step 4 will be redone
    assert BestTracker.resume(tmp_path, "other", "min", up_to_step=9).value is None


@pytest.mark.parametrize("metric, suites, mode", [
    ("eval/advbench/asr", ["advbench"], "min"), ("eval/advbench/refusal_rate", ["advbench"], "max"),
    ("eval/xstest/over_refusal_rate", ["xstest"], "min"), ("eval/task/rouge_l", ["task"], "max"),
    ("eval_score", [], "max"), ("eval_loss_sft", [], "min"), ("eval/truthfulqa/hallucination_rate", ["truthfulqa"], "min"),
])
def test_auto_mode_knows_which_way_is_better(metric, suites, mode):
    assert best_mode(metric, "auto", suites) == mode
    assert best_mode(metric, "max", suites) == "max"


@pytest.mark.parametrize("overrides, message", [
    (["trainer.save_best=eval/advbench/asr"], "needs advbench in eval.suites too"),
    (["eval.suites=[advbench]", "trainer.save_best=eval/advbench/rouge_l"], "suite advbench logs no 'rouge_l'"),
    (["trainer.save_best=loss"], "'loss' is not logged at evaluations"),
    (["eval.suites=[advbnech]"], "eval.suites[0]: expected one of advbench"),
    (["eval.suites=[task,task]"], "a suite is listed twice"),
])
def test_bad_suite_or_best_settings_are_config_errors(overrides, message):
    with pytest.raises(ConfigError) as error:
        compose("smoke", overrides)
    assert message in str(error.value)


def _fake_parent(tmp_path: Path, train_ids):
    """A finished run (config.yaml, final/ adapter) whose split.json trained on these AdvBench rows."""
    parent = tmp_path / "parent"
    (parent / "final").mkdir(parents=True)
    (parent / "config.yaml").write_text(yaml.safe_dump(compose("smoke").resolved))
    (parent / "final" / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": None}))
    (parent / "split.json").write_text(json.dumps({"mix_source": "builtin:advbench", "train_ids": train_ids}))
    return parent


def test_rows_trained_on_by_this_run_or_its_parents_are_left_out(tmp_path):
    parent = _fake_parent(tmp_path, [str(i) for i in range(0, 520, 2)])  # every even row
    cfg = compose("smoke", [f"model.name_or_path={parent}", "eval.suites=[advbench]", "eval.suite_limit=520"]).config
    own = {"mix_source": "builtin:advbench", "train_ids": ["1", "3"]}
    evaluator = SuiteEvaluator(cfg, tokenizer=None, held_out=[], prompt_ids={}, split=own, device=torch.device("cpu"))
    ids = {ex.id for ex in evaluator.suites[0].examples}
    assert len(ids) == 520 - 260 - 2
    assert not ids & ({str(i) for i in range(0, 520, 2)} | {"1", "3"})


def test_trained_ids_match_the_source():
    splits = [{"mix_source": "builtin:advbench", "train_ids": ["1"]}, {"mix_source": "builtin:truthfulqa",
                                                                        "train_ids": ["2"]}, {"data": "x"}]
    assert trained_ids(splits, "builtin:advbench") == {"1"}
    assert trained_ids(splits, "builtin:xstest") == set()


def test_task_suite_needs_held_out_rows():
    cfg = compose("smoke", ["eval.suites=[task]"]).config
    with pytest.raises(ConfigError, match="data.eval_size > 0"):
        SuiteEvaluator(cfg, tokenizer=None, held_out=[], prompt_ids={}, split={}, device=torch.device("cpu"))


def test_values_are_numbers_or_none(suite_run):
    for m in read_jsonl(suite_run[0] / "metrics.jsonl"):
        for key, value in m.items():
            if key.startswith("eval/"):
                assert value is None or (isinstance(value, (int, float)) and math.isfinite(value)), key


def test_eval_before_records_the_untrained_model_and_ends_with_before_after(tmp_path):
    out = tmp_path / "run"
    result = aware("train", "recipe=smoke", f"output_dir={out}", "eval.suites=[phrasings,sensitive,task]",
                   "eval.suite_limit=2", "eval.before=true", "trainer.max_steps=1")
    assert result.exit_code == 0, result.output
    before = json.loads((out / "eval_before.json").read_text())
    assert before["eval/phrasings/n"] == 2 and 0.0 <= before["eval/phrasings/asr"] <= 1.0
    assert 0.0 <= before["eval/sensitive/over_refusal_rate"] <= 1.0 and "eval/task/rouge_l" in before
    after = read_jsonl(out / "metrics.jsonl")[-1]
    line = next(x for x in result.output.splitlines() if x.startswith("before → after:"))
    assert f"phrasings asr {before['eval/phrasings/asr']:.3f} → {after['eval/phrasings/asr']:.3f}" in line
    assert "sensitive over_refusal_rate" in line and "task rouge_l" in line
    # a second run over the same directory (overwrite) removes what aware wrote, this file included
    assert "eval_before.json" in rundir.AWARE_NAMES


def test_demo_recipe_shows_every_regime_and_its_suites():
    cfg = compose("demo").config
    assert cfg.data.mix.harmful and cfg.data.anchors.per_step > 0 and cfg.eval.before
    assert {"phrasings", "sensitive", "task"} <= set(cfg.eval.suites) and cfg.objective.name == "aware"
