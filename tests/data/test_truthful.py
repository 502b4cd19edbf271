"""The `truthful` recipe: Alpaca plus TruthfulQA questions, a seeded split the truthfulqa eval can exclude."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from aware_cli.cli import app
from aware_cli.config import compose
from aware_cli.config.schema import EvalRunConfig
from aware_cli.data.mix import MIX_PREFIX, load_training_data
from aware_cli.eval.runner import select_examples

ANSWER_COLUMNS = {"Correct Answers", "Incorrect Answers"}
PROJECT_ROOT = Path(__file__).resolve().parents[2]


def aware(*args):
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


@pytest.fixture(scope="module")
def data():
    return load_training_data(compose("truthful").config.data)  # built-in data: any working directory


def test_truthfulqa_rows_carry_their_answer_lists(data):
    mixed = [ex for ex in data.train if ex.id.startswith(MIX_PREFIX)]
    assert len(mixed) == 328 and len(data.train) == 983 + 328  # 25% of the training rows
    for ex in mixed:
        assert ANSWER_COLUMNS <= set(ex.meta["columns"]) and ex.meta["columns"]["Correct Answers"].strip()
        assert ex.response and ex.harmful is False  # y* = Best Answer; benign questions
    alpaca = [ex for ex in data.train if not ex.id.startswith(MIX_PREFIX)]
    assert not any(ANSWER_COLUMNS & set(ex.meta["columns"]) for ex in alpaca)


def test_in_training_evaluation_starts_with_held_out_questions(data):
    questions, task = data.held_out[:16], data.held_out[16:]
    assert all(ex.id.startswith(MIX_PREFIX) for ex in questions) and len(task) == 16
    held = {MIX_PREFIX + i for i in data.split["heldout_ids"]}
    assert {ex.id for ex in questions} <= held
    assert not held & {ex.id for ex in data.train}


def test_truthfulqa_eval_excluding_the_split_never_sees_a_trained_question(data, tmp_path, in_project_root):
    split = tmp_path / "split.json"
    split.write_text(json.dumps(data.split))
    trained = {ex.prompt for ex in data.train if ex.id.startswith(MIX_PREFIX)}
    everything = select_examples(compose("truthfulqa", schema=EvalRunConfig, subdir="eval").config)
    kept = select_examples(compose("truthfulqa", [f"exclude_ids={split}"], schema=EvalRunConfig,
                                   subdir="eval").config)
    assert len(everything) == 790 and len(kept) == 790 - 328
    assert not trained & {ex.prompt for ex in kept}
    assert trained <= {ex.prompt for ex in everything}  # same ids, same questions


def test_recipe_validates():
    result = aware("validate", "recipe=truthful")
    assert result.exit_code == 0, result.output


def test_recipe_trains_end_to_end_judging_only_the_questions(tmp_path, in_project_root):
    out = tmp_path / "run"
    # 6 Alpaca + 6 TruthfulQA training rows: 2 steps of 4 distinct rows see both kinds
    result = aware("train", "recipe=truthful", "model=tiny", "trainer=smoke", "trainer.max_steps=2",
                   "trainer.batch_size=4", "k=2", "data.limit=10", "data.eval_size=4", "data.mix.share=0.5",
                   "data.mix.eval_rows=2", "sampling.max_new_tokens=8", "eval.max_new_tokens=8",
                   "eval.max_prompts=4", f"output_dir={out}")
    assert result.exit_code == 0, result.output
    split = json.loads((out / "split.json").read_text())
    assert len(split["train_ids"]) == 6 and not set(split["train_ids"]) & set(split["heldout_ids"])
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    questions = [s for s in samples if s["id"].startswith(MIX_PREFIX)]
    assert questions and len(questions) < len(samples)
    assert all(score is not None and 0.0 <= score <= 1.0 for s in questions for score in s["scores"])
    assert all(score is None for s in samples if s not in questions for score in s["scores"])
    assert {s["id"][len(MIX_PREFIX):] for s in questions} <= set(split["train_ids"])
    last = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][-1]
    assert last["eval_score"] is not None and last["eval_prompts"] == 4  # 2 held-out questions judged
