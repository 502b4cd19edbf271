"""torchrun with 2 CPU processes (gloo) gives the same training as 1 process with the same global batch."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]
ARGS = ["recipe=smoke", "trainer.batch_size=4", "trainer.max_steps=3", "eval.every=0"]


def train(out: Path, *extra: str) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    result = subprocess.run([sys.executable, "-m", "aware_cli", "train", *ARGS, f"output_dir={out}", *extra],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr


def metrics(run: Path):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_two_processes_match_one_with_the_same_global_batch(tmp_path):
    train(tmp_path / "one", "objective=sft")
    train(tmp_path / "two", "objective=sft", "trainer.nproc=2")
    one, two = metrics(tmp_path / "one"), metrics(tmp_path / "two")
    assert [m["step"] for m in two] == [1, 2, 3]
    for a, b in zip(one, two):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4)
    wa = load_file(str(tmp_path / "one" / "final" / "adapter_model.safetensors"))
    wb = load_file(str(tmp_path / "two" / "final" / "adapter_model.safetensors"))
    assert all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)


def test_aware_objective_under_torchrun_logs_the_whole_batch(tmp_path):
    train(tmp_path / "aware", "trainer.nproc=2", "verifier=python",
          "verifier.target=tests/fixtures/verifiers.py:by_prompt_parity", "k=2")
    records = [json.loads(line) for line in (tmp_path / "aware" / "samples.jsonl").read_text().splitlines()]
    assert len(records) == 3 * 4  # steps × global batch, written once by rank 0
    assert {r["regime"] for r in records} >= {"abstain"}
    assert json.loads((tmp_path / "aware" / "status.json").read_text())["state"] == "completed"
