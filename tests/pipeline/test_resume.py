"""Exact resume after SIGKILL across an epoch boundary (for every objective), and broken checkpoints never loaded."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

import _runs as runs
from _runs import OBJECTIVES, objective_args, run_aware
from aware_cli.pipeline import rundir

ROOT = Path(__file__).resolve().parents[2]
# 10 rows - 4 held out = 6 training prompts, batch 4: the epoch boundary falls inside step 2.
ARGS = ["recipe=smoke", "data.limit=10", "data.eval_size=4", "trainer.batch_size=4", "trainer.max_steps=8",
        "trainer.save_every=2", "trainer.keep_last=0", "eval.every=0"]


def train(out: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "aware_cli", "train", *ARGS, f"output_dir={out}", *extra],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def steps_logged(out: Path) -> int:
    path = out / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    out = tmp_path_factory.mktemp("straight") / "run"
    proc = train(out)
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, output
    return out


def test_sigkill_then_resume_is_bitwise_identical(straight, tmp_path):
    out = tmp_path / "killed"
    proc = train(out)
    deadline = time.time() + 240
    while steps_logged(out) < 5 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    assert 5 <= steps_logged(out) < 8, "the kill must land after checkpoint step-4 and before the end"

    resumed = train(out, "resume=auto")
    output, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, output
    assert "resumed from" in output

    lines_a = (straight / "metrics.jsonl").read_text().splitlines()
    lines_b = (out / "metrics.jsonl").read_text().splitlines()
    a, b = [json.loads(x) for x in lines_a], [json.loads(x) for x in lines_b]
    assert [m["step"] for m in b] == list(range(1, 9))  # no duplicate or missing steps
    for key in ("loss", "loss_sft", "loss_pg", "grad_norm", "lr", "beta_mean", "mu_mean"):
        assert [m[key] for m in a] == [m[key] for m in b], key  # bitwise: exact float equality
    wa = load_file(str(straight / "final" / "adapter_model.safetensors"))
    wb = load_file(str(out / "final" / "adapter_model.safetensors"))
    assert wa.keys() == wb.keys() and all((wa[k] == wb[k]).all() for k in wa)


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_sigkill_then_resume_is_exact_for_every_objective(objective, reference_run, tmp_path):
    """SIGKILL after step 2 or 3, resume=auto: every step, sample and final weight is bitwise the uninterrupted run's.

    What lives across steps must be in the checkpoint: aware's Lagrangian dual, shapo's saliency mask (selected at
    step 0 only, so the resumed steps need the one the checkpoint holds), AdamW and scheduler states."""
    straight, out = reference_run(objective), tmp_path / "killed"
    proc = runs.popen(out, *objective_args(objective))
    deadline = time.time() + 240
    while steps_logged(out) < 2 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert 2 <= steps_logged(out) < 4, "the kill must land after step 2 and before the end"
    stdout, _ = run_aware(out, *objective_args(objective), "resume=auto")
    assert "resumed from" in stdout
    a, b = runs.metrics(straight), runs.metrics(out)
    assert [m["step"] for m in b] == [1, 2, 3, 4]
    keys = ["loss", "grad_norm", "lr", "dual", "mu_mean", "beta_mean", *[k for k in a[0] if k.startswith("objective/")]]
    for key in keys:
        assert [m.get(key) for m in a] == [m.get(key) for m in b], key
    key = lambda r: (r["step"], r["id"])  # noqa: E731
    assert [r["responses"] for r in sorted(runs.samples(straight), key=key)] == \
        [r["responses"] for r in sorted(runs.samples(out), key=key)]
    wa, wb = runs.adapter(straight), runs.adapter(out)
    assert wa.keys() == wb.keys() and all((wa[k] == wb[k]).all() for k in wa)
    if objective == "shapo":  # the mask the resumed steps used is the one the uninterrupted run selected at step 0
        for step in (3, 4):
            ma, mb = (load_file(str(run / "checkpoints" / f"step-{step}" / rundir.OBJECTIVE_STATE))
                      for run in (straight, out))
            assert ma.keys() == mb.keys() and all((ma[k] == mb[k]).all() for k in ma)
            assert 0 < sum(int(v.sum()) for v in ma.values()) < sum(v.numel() for v in ma.values())


def test_partial_and_corrupt_checkpoints_are_skipped(straight, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(straight, run)
    ckpts = rundir.list_checkpoints(run)
    assert [p.name for p in ckpts] == ["step-2", "step-4", "step-6", "step-8"]
    # a write killed mid-way leaves a .tmp dir (ignored) — and here also a step dir without its manifest
    (run / "checkpoints" / ".tmp-step-10").mkdir()
    (ckpts[-1] / rundir.COMPLETE).unlink()
    # a corrupted file in step-6
    weights = ckpts[-2] / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)
    chosen, warnings = rundir.resolve_resume(run, "auto")
    assert chosen == ckpts[1]
    assert any("step-8" in w and "partial" in w for w in warnings)
    assert any("step-6" in w and "checksum" in w for w in warnings)
    with pytest.raises(Exception, match="cannot be loaded"):
        rundir.resolve_resume(run, str(ckpts[-2]))


def test_keep_last_prunes_old_checkpoints(tmp_path):
    import torch

    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([param])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    for step in range(1, 5):
        rundir.save_checkpoint(tmp_path, step, lambda d: (d / "w.txt").write_text("x"), opt, sched, {"step": step},
                               keep_last=2)
    assert [p.name for p in rundir.list_checkpoints(tmp_path)] == ["step-3", "step-4"]
    assert rundir.checkpoint_problem(tmp_path / "checkpoints" / "step-4") is None


def test_secret_looking_config_values_are_redacted():
    config = {"verifier": {"kwargs": {"api_key": "sk-123", "Token": "t", "other": 1},
                           "http": {"api_key_env": "MY_KEY_VAR", "url": "https://x"}}}
    redacted = rundir.redact(config)
    assert redacted["verifier"]["kwargs"] == {"api_key": "***", "Token": "***", "other": 1}
    assert redacted["verifier"]["http"] == {"api_key_env": "MY_KEY_VAR", "url": "https://x"}
