"""torchrun with 2 CPU processes (gloo), ddp or fsdp2: the same training as 1 process with the same global batch."""

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


def adapter(run: Path):
    return load_file(str(run / "final" / "adapter_model.safetensors"))


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """The 1-process reference run (objective=sft, checkpoints at steps 2 and 3)."""
    run = tmp_path_factory.mktemp("one") / "run"
    train(run, "objective=sft")
    return run


@pytest.mark.parametrize("parallel", ["ddp", "fsdp2"])
def test_two_processes_match_one_with_the_same_global_batch(one_process, tmp_path, parallel):
    train(tmp_path / "two", "objective=sft", "trainer.nproc=2", f"trainer.parallel={parallel}")
    one, two = metrics(one_process), metrics(tmp_path / "two")
    assert [m["step"] for m in two] == [1, 2, 3]
    for a, b in zip(one, two):
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-5)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4)
    wa, wb = adapter(one_process), adapter(tmp_path / "two")
    assert sorted(wa) == sorted(wb) and all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)
    # the checkpoint's optimizer state: whole tensors in the 1-process layout (fsdp2 gathers its shards)
    sa, sb = (torch.load(run / "checkpoints" / "step-3" / "training_state.pt", weights_only=True)["optimizer"]
              for run in (one_process, tmp_path / "two"))
    assert sb["param_groups"] == sa["param_groups"] and sorted(sb["state"]) == sorted(sa["state"])
    assert all(torch.allclose(sa["state"][i][key], sb["state"][i][key], atol=1e-6)
               for i in sa["state"] for key in sa["state"][i])


def test_fsdp2_resumes_a_one_process_checkpoint(one_process, tmp_path):
    """Step 3 under fsdp2 from the 1-process step-2 checkpoint (weights and AdamW state sharded on load)."""
    run = tmp_path / "resumed"
    train(run, "objective=sft", "trainer.nproc=2", "trainer.parallel=fsdp2",
          f"resume={one_process / 'checkpoints' / 'step-2'}")
    assert [m["step"] for m in metrics(run)] == [3]
    assert metrics(run)[0]["loss"] == pytest.approx(metrics(one_process)[2]["loss"], abs=1e-5)
    wa, wb = adapter(one_process), adapter(run)
    assert all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)


def test_aware_objective_under_torchrun_logs_the_whole_batch(tmp_path):
    train(tmp_path / "aware", "trainer.nproc=2", "verifier=python",
          "verifier.target=tests/fixtures/verifiers.py:by_prompt_parity", "k=2")
    records = [json.loads(line) for line in (tmp_path / "aware" / "samples.jsonl").read_text().splitlines()]
    assert len(records) == 3 * 4  # steps × global batch, written once by rank 0
    assert {r["regime"] for r in records} >= {"abstain"}
    assert json.loads((tmp_path / "aware" / "status.json").read_text())["state"] == "completed"


def test_fsdp2_refuses_what_it_cannot_run():
    from aware_cli.config import compose
    from aware_cli.errors import ConfigError
    from aware_cli.pipeline import fsdp

    fsdp.check_config(compose("smoke", []).config)
    for override in ("objective=gapo", "objective=shapo", "sampling.dtype=bfloat16"):
        with pytest.raises(ConfigError, match="trainer.parallel=fsdp2"):
            fsdp.check_config(compose("smoke", [override]).config)
