"""Smoke runs shared by the export and continue-from-run tests (trained once per session)."""

from pathlib import Path

import pytest
from typer.testing import CliRunner

from aware_cli.cli import app

runner = CliRunner()


def aware(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def _train(out: Path, *extra) -> Path:
    result = aware("train", "recipe=smoke", f"output_dir={out}", *extra)
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="session")
def lora_run(tmp_path_factory) -> Path:
    """`aware train recipe=smoke`: a LoRA run with final/ and checkpoints step-2, step-3."""
    return _train(tmp_path_factory.mktemp("lora") / "run")


@pytest.fixture(scope="session")
def full_run(tmp_path_factory) -> Path:
    """`aware train recipe=smoke model.finetune=full`: full weights in final/."""
    return _train(tmp_path_factory.mktemp("full") / "run", "model.finetune=full", "trainer.max_steps=2",
                  "eval.every=0")
