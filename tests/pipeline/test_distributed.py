"""torchrun with 2 CPU processes (gloo), ddp or fsdp2: the same training as 1 process with the same global batch;
every objective; a failing rank stops all ranks with one message; SIGTERM to `trainer.nproc` leaves no worker."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import _runs as runs
from _runs import OBJECTIVES, objective_args, run_aware
from aware_cli.pipeline import rundir

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


def test_a_step_without_any_gradient_moves_no_weight_under_ddp_and_fsdp2(tmp_path):
    """dpo: pairs in step 1 only. In one process steps 2-3 have no gradient, so AdamW leaves the weights; so must
    2 ranks (ddp: no rank has a gradient, it stays None; fsdp2: its reduce makes zeros, which are dropped)."""
    args = ["objective=dpo", "verifier=python", "verifier.target=tests/fixtures/verifiers.py:spread_then_constant",
            "k=4", "objective.pair_reference=false"]
    one = tmp_path / "one"
    train(one, *args)
    assert [m["objective/pairs"] for m in metrics(one)] == [metrics(one)[0]["objective/pairs"], 0, 0]
    assert metrics(one)[0]["objective/pairs"] > 0
    after_step_2 = load_file(str(one / "checkpoints" / "step-2" / "adapter_model.safetensors"))
    assert all(torch.equal(after_step_2[k], adapter(one)[k]) for k in after_step_2)  # step 3 moved nothing
    for parallel in ("ddp", "fsdp2"):
        two = tmp_path / parallel
        train(two, *args, "trainer.nproc=2", f"trainer.parallel={parallel}")
        wa, wb = adapter(one), adapter(two)
        assert all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa), \
            (parallel, max(float((wa[k] - wb[k]).abs().max()) for k in wa), metrics(one), metrics(two))


def test_fsdp2_resumes_a_one_process_checkpoint(one_process, tmp_path):
    """Step 3 under fsdp2 from the 1-process step-2 checkpoint (weights and AdamW state sharded on load)."""
    run = tmp_path / "resumed"
    train(run, "objective=sft", "trainer.nproc=2", "trainer.parallel=fsdp2",
          f"resume={one_process / 'checkpoints' / 'step-2'}")
    assert [m["step"] for m in metrics(run)] == [3]
    assert metrics(run)[0]["loss"] == pytest.approx(metrics(one_process)[2]["loss"], abs=1e-5)
    wa, wb = adapter(one_process), adapter(run)
    assert all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_every_objective_gives_the_one_process_loss_and_weights(objective, reference_run, tmp_path):
    """trainer.nproc=2 (ddp, gloo) vs 1 process, same global batch: the same samples, per-step loss and gradient norm,
    and final weights within 1e-5 (constrained_sft and online dpo/gapo/shapo were summed over ranks: 2x the loss).

    The weights get 1e-4 relative on top: summing a gradient over ranks rounds differently from one process
    (~1e-7), and AdamW's g/√v turns that into up to ~1% of one step (lr 1e-3) for an entry whose gradient is ~0."""
    one, two = reference_run(objective), tmp_path / "two"
    run_aware(two, *objective_args(objective), "trainer.nproc=2")
    a, b = runs.metrics(one), runs.metrics(two)
    assert [m["step"] for m in b] == [1, 2, 3, 4]
    for x, y in zip(a, b):
        assert y["loss"] == pytest.approx(x["loss"], abs=1e-5), (x["step"], x["loss"], y["loss"])
        assert y["grad_norm"] == pytest.approx(x["grad_norm"], abs=1e-5, rel=1e-4), x["step"]
        assert y.get("objective/pairs") == x.get("objective/pairs") and y["dual"] == pytest.approx(x["dual"])
    assert any(m["grad_norm"] > 0 for m in a)
    if objective in ("dpo", "gapo", "shapo"):
        assert sum(m["objective/pairs"] for m in a) >= 4  # online pairs from the scored samples
    key = lambda r: (r["step"], r["id"])  # noqa: E731
    sa, sb = sorted(runs.samples(one), key=key), sorted(runs.samples(two), key=key)
    assert [(r["step"], r["id"], r["responses"], r["scores"]) for r in sa] == \
        [(r["step"], r["id"], r["responses"], r["scores"]) for r in sb]  # a prompt samples alike on any rank
    wa, wb = runs.adapter(one), runs.adapter(two)
    assert sorted(wa) == sorted(wb)
    assert all(torch.allclose(wa[k], wb[k], atol=1e-5, rtol=1e-4) for k in wa), \
        max(float((wa[k] - wb[k]).abs().max()) for k in wa)
    assert any(float(wa[k].abs().sum()) > 0 for k in wa if "lora_B" in k)  # trained


@pytest.mark.parametrize("mode, code, message", [
    ("raise", 1, "RuntimeError: judge crashed on call 2 (on rank 1)"),
    ("none", 2, "could not judge 8 of 16 responses at step 2"),
])
def test_a_failing_rank_stops_every_rank_with_one_message(mode, code, message, tmp_path):
    """Rank 1's verifier fails in step 2 (a crash, or None for its half: 50% > 0.4 over both ranks): both ranks stop
    there, rank 0 prints one line with the launcher's exit code, step 1 is saved (save_every=0)."""
    run = tmp_path / "run"
    args = [a for a in objective_args("aware") if not a.startswith(("verifier.target=", "trainer.save_every="))]
    _, stderr = run_aware(run, *args, "trainer.nproc=2", "trainer.save_every=0",
                          "verifier.target=tests/fixtures/verifiers.py:fails_from_call", "verifier.max_none_frac=0.4",
                          expect=code, timeout=300,
                          extra_env={"AWARE_TEST_FAIL_FROM_CALL": "2", "AWARE_TEST_FAIL_RANK": "1",
                                     "AWARE_TEST_FAIL_MODE": mode})
    assert stderr.count(message) == 1, stderr
    assert "Traceback" not in stderr and "ChildFailedError" not in stderr
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "failed" and message in status["error"] and status["checkpoint"].endswith("step-1")
    assert [m["step"] for m in runs.metrics(run)] == [1]


def _descendants(pid: int):
    """Every process below `pid` (from /proc), by pid."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_sigterm_to_the_launcher_stops_and_checkpoints_every_worker(tmp_path):
    """`aware train trainer.nproc=2` got SIGTERM: the workers finish the step, checkpoint and exit; none outlives it."""
    run = tmp_path / "run"
    proc = runs.popen(run, "recipe=smoke", "trainer.batch_size=4", "eval.every=0", "trainer.max_steps=500",
                      "objective=sft", "trainer.nproc=2")
    deadline = time.time() + 180
    while not ((run / "metrics.jsonl").exists() and (run / "metrics.jsonl").read_text().count("\n") >= 2):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.1)
    workers = _descendants(proc.pid)
    assert len(workers) >= 2
    proc.send_signal(signal.SIGTERM)
    try:
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        for pid in _descendants(proc.pid) | workers:  # never leave strays behind, even when the test fails
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
    assert proc.returncode == 130, stdout + stderr
    assert not [pid for pid in workers if _alive(pid)], "workers outlived the launcher"
    assert json.loads((run / "status.json").read_text())["state"] == "interrupted"
    saved = rundir.list_checkpoints(run)[-1]
    assert rundir.checkpoint_problem(saved) is None
    assert rundir.checkpoint_step(saved) == len(runs.metrics(run)) < 500


def test_fsdp2_refuses_what_it_cannot_run():
    from aware_cli.config import compose
    from aware_cli.errors import ConfigError
    from aware_cli.pipeline.parallel import fsdp

    fsdp.check_config(compose("smoke", []).config)
    fsdp.check_config(compose("smoke", ["sampling.dtype=auto"]).config)  # auto samples as the model under fsdp2
    for override in ("objective=gapo", "objective=shapo", "sampling.dtype=bfloat16"):
        with pytest.raises(ConfigError, match="trainer.parallel=fsdp2"):
            fsdp.check_config(compose("smoke", [override]).config)
