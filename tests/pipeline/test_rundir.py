"""The run directory: overwrite removes only what aware wrote, config.yaml reproduces the run, a failed run keeps
its last completed step, stale checkpoints never win resume=auto, and one run at a time holds the directory."""

import json
import os
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from aware_cli.cli import app
from aware_cli.config import compose, list_recipes
from aware_cli.errors import ConfigError
from aware_cli.pipeline import rundir

runner = CliRunner()
FAST = ["recipe=smoke", "eval.every=0"]


def aware(*args):
    return runner.invoke(app, list(args), catch_exceptions=False)


def read_jsonl(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def one_line(text):
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, text
    return lines[0]


def no_temporaries(run):
    return [str(p) for p in Path(run).rglob("*") if p.name.startswith(".tmp-") or p.name.endswith(".tmp")]


# ----------------------------------------------------------------------------- 1. overwrite


def test_overwrite_refuses_a_directory_aware_did_not_create(tmp_path, in_project_root):
    """The review's reproduction: X/precious survives `overwrite=true` (it used to be rmtree'd)."""
    target = tmp_path / "X"
    (target / "precious").mkdir(parents=True)
    (target / "precious" / "notes.txt").write_text("keep\n")
    (target / "config.yaml").write_text("a: 1\n")
    result = aware("train", *FAST, f"output_dir={target}", "overwrite=true", "trainer.max_steps=1")
    assert result.exit_code == 2
    assert rundir.MARKER in one_line(result.stderr) and "remove it yourself" in result.stderr
    assert (target / "precious" / "notes.txt").read_text() == "keep\n"
    assert (target / "config.yaml").read_text() == "a: 1\n"
    assert sorted(p.name for p in target.iterdir()) == ["config.yaml", "precious"]  # nothing added either


def test_overwrite_of_an_aware_run_removes_only_what_aware_wrote(tmp_path, in_project_root):
    run = tmp_path / "run"
    assert aware("train", *FAST, f"output_dir={run}", "trainer.max_steps=2").exit_code == 0
    marker = json.loads((run / rundir.MARKER).read_text())
    assert marker["aware"] and marker["created"] > 0
    (run / "my_notes.md").write_text("mine\n")
    (run / "analysis").mkdir()
    (run / "analysis" / "plot.png").write_bytes(b"png")
    result = aware("train", *FAST, f"output_dir={run}", "overwrite=true", "trainer.max_steps=1", "trainer.seed=5")
    assert result.exit_code == 0, result.output
    assert (run / "my_notes.md").read_text() == "mine\n" and (run / "analysis" / "plot.png").read_bytes() == b"png"
    assert [m["step"] for m in read_jsonl(run / "metrics.jsonl")] == [1]  # the old run's lines are gone
    assert [p.name for p in rundir.list_checkpoints(run)] == ["step-1"]
    assert yaml.safe_load((run / "config.yaml").read_text())["trainer"]["seed"] == 5


@pytest.mark.parametrize("where", ["cwd", "home", "root"])
def test_overwrite_refuses_cwd_home_and_root(where, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    target = {"cwd": Path("."), "home": Path.home(), "root": Path("/")}[where]
    if where != "root":
        (tmp_path / rundir.MARKER).write_text("{}")  # even a marked run is not cleared there
        (tmp_path / "config.yaml").write_text("a: 1\n")
    with pytest.raises(ConfigError, match="refuses .*root, home or current directory"):
        rundir.check_output_dir(target, resume=None, overwrite=True)
    assert (where == "root") or (tmp_path / "config.yaml").exists()


def test_a_run_without_overwrite_or_resume_is_refused_untouched(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n')
    with pytest.raises(ConfigError, match="holds another run"):
        rundir.open_run_dir(tmp_path, {}, resume=None, overwrite=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]


# ----------------------------------------------------------------------------- 2. config.yaml


@pytest.mark.parametrize("recipe", [p.stem for p in list_recipes()])
@pytest.mark.parametrize("verifier", [None, "http_judge", "guard_lm", "truthfulness"])
def test_config_yaml_is_the_resolved_config_for_every_recipe(recipe, verifier, monkeypatch):
    monkeypatch.delenv("AWARE_JUDGE_API_KEY", raising=False)
    resolved = compose(recipe, [f"verifier={verifier}"] if verifier else []).resolved
    assert rundir.redact(resolved) == resolved  # nothing in a shipped recipe is a credential
    flat = yaml.safe_dump(rundir.redact(resolved))
    assert "***" not in flat and "max_new_tokens" in flat and "max_prompt_tokens" in flat


def test_redact_blanks_credentials_only():
    config = {
        "model": {"tokenizer": "gpt2", "name_or_path": "https://user:pw@hub.example.com/m?token=abc#frag"},
        "data": {"max_prompt_tokens": 64, "max_response_tokens": 16, "path": "s3://bucket/data.jsonl"},
        "sampling": {"max_new_tokens": 12},
        "objective": {"first_tokens": 5},
        "verifier": {"guard": {"safe_token": "safe", "unsafe_token": "unsafe", "max_new_tokens": 16},
                     "http": {"api_key_env": "MY_API_KEY", "url": "https://judge.example.com/v1?key=sk-1",
                              "max_tokens": 256, "model": "the key is sk-live-12345 oops"},
                     "kwargs": {"api_key": "sk-123", "password": "p", "client_secret": "s", "hf_token": "h",
                                "access_token": "a", "token": "t", "tokens": [1, 2], "top_tokens": 3}},
    }
    out = rundir.redact(config, environ={"MY_API_KEY": "sk-live-12345"})
    assert out["model"]["tokenizer"] == "gpt2"
    assert out["model"]["name_or_path"] == "https://***@hub.example.com/m?***#frag"
    assert out["data"] == config["data"] and out["sampling"] == config["sampling"]
    assert out["objective"] == config["objective"] and out["verifier"]["guard"] == config["verifier"]["guard"]
    http = out["verifier"]["http"]
    assert http["api_key_env"] == "MY_API_KEY" and http["max_tokens"] == 256
    assert http["url"] == "https://judge.example.com/v1?***" and http["model"] == "the key is *** oops"
    assert out["verifier"]["kwargs"] == {"api_key": "***", "password": "***", "client_secret": "***",
                                         "hf_token": "***", "access_token": "***", "token": "***",
                                         "tokens": [1, 2], "top_tokens": 3}


def test_training_from_a_runs_config_yaml_reproduces_the_run(tmp_path, in_project_root):
    """`aware train recipe=<run>/config.yaml` must give the same run (it used to fail: max_new_tokens: '***')."""
    first, second = tmp_path / "first", tmp_path / "second"
    result = aware("train", *FAST, f"output_dir={first}", "trainer.max_steps=2", "k=3", "sampling.max_new_tokens=10",
                   "data.max_response_tokens=12", "gate.tau_mu=0.7", "verifier=python",
                   "verifier.target=tests/fixtures/verifiers.py:by_prompt_parity")
    assert result.exit_code == 0, result.output
    again = aware("train", f"recipe={first / 'config.yaml'}", f"output_dir={second}")
    assert again.exit_code == 0, again.output
    a, b = read_jsonl(first / "metrics.jsonl"), read_jsonl(second / "metrics.jsonl")
    assert [m["step"] for m in b] == [1, 2]
    for key in ("loss", "loss_sft", "loss_pg", "grad_norm", "mu_mean", "beta_mean"):
        assert [m[key] for m in a] == [m[key] for m in b], key
    ca, cb = (yaml.safe_load((run / "config.yaml").read_text()) for run in (first, second))
    ca.pop("output_dir"), cb.pop("output_dir")
    assert ca == cb and ca["recipe"] == "smoke"


# ----------------------------------------------------------------------------- 3. failures


@pytest.mark.parametrize("mode, code, message", [("none", 2, "could not judge"),
                                                 ("raise", 1, "RuntimeError: judge crashed on call 3")])
def test_a_failure_mid_run_keeps_the_last_completed_step(mode, code, message, tmp_path, monkeypatch, in_project_root):
    """No periodic checkpoint (save_every=0); the verifier fails in step 3: step 2 is saved, and resuming from it
    gives exactly the uninterrupted run."""
    args = [*FAST, "trainer.max_steps=4", "trainer.save_every=0", "verifier=python",
            "verifier.target=tests/fixtures/verifiers.py:fails_from_call", "k=2"]
    straight = tmp_path / "straight"
    assert aware("train", *args, f"output_dir={straight}").exit_code == 0
    run = tmp_path / "run"
    monkeypatch.setenv("AWARE_TEST_FAIL_FROM_CALL", "3")
    monkeypatch.setenv("AWARE_TEST_FAIL_MODE", mode)
    result = runner.invoke(app, ["train", *args, f"output_dir={run}"])
    assert result.exit_code == code, result.output
    assert message in result.output + f"{type(result.exception).__name__}: {result.exception}"  # 1: main() prints it
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "failed" and message in status["error"]
    assert status["checkpoint"].endswith("step-2") and "resume=auto" in status["resume"]
    assert f"aware train recipe={run / 'config.yaml'} output_dir={run} resume=auto" in result.output
    assert [p.name for p in rundir.list_checkpoints(run)] == ["step-2"]
    assert rundir.checkpoint_problem(run / "checkpoints" / "step-2") is None and not no_temporaries(run)
    assert [m["step"] for m in read_jsonl(run / "metrics.jsonl")] == [1, 2]

    monkeypatch.delenv("AWARE_TEST_FAIL_FROM_CALL")
    resumed = aware("train", f"recipe={run / 'config.yaml'}", f"output_dir={run}", "resume=auto")
    assert resumed.exit_code == 0, resumed.output
    a, b = read_jsonl(straight / "metrics.jsonl"), read_jsonl(run / "metrics.jsonl")
    assert [m["step"] for m in b] == [1, 2, 3, 4]
    for key in ("loss", "grad_norm", "lr", "mu_mean"):
        assert [m[key] for m in a] == [m[key] for m in b], key


def test_a_full_disk_while_checkpointing_leaves_no_temporaries(tmp_path, monkeypatch, in_project_root):
    real_save = torch.save
    calls = {"n": 0}

    def full_disk(obj, path, *a, **k):
        calls["n"] += 1
        if calls["n"] >= 2:  # step-1's checkpoint is written, then the disk is full
            raise OSError(28, "No space left on device")
        return real_save(obj, path, *a, **k)

    monkeypatch.setattr(rundir.torch, "save", full_disk)
    run = tmp_path / "run"
    result = runner.invoke(app, ["train", *FAST, f"output_dir={run}", "trainer.max_steps=3", "trainer.save_every=1"])
    assert result.exit_code == 1 and "No space left on device" in str(result.exception)
    assert not no_temporaries(run)
    assert [p.name for p in rundir.list_checkpoints(run)] == ["step-1"]
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "failed" and "No space left" in status["error"] and status["checkpoint"].endswith("step-1")


def test_write_dir_atomic_cleans_up_after_a_failed_write(tmp_path):
    target = tmp_path / "final"
    target.mkdir()
    (target / "old.txt").write_text("old")

    def write(tmp):
        (tmp / "half.bin").write_bytes(b"x")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        rundir.write_dir_atomic(target, write)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final"] and (target / "old.txt").read_text() == "old"


def test_resuming_from_an_older_checkpoint_drops_the_abandoned_ones(tmp_path, monkeypatch, in_project_root):
    """keep_last=2 keeps step-3 and step-4; resuming from step-3 removes step-4 (and final/), so when the resumed run
    fails before its next checkpoint, resume=auto cannot pick the stale step-4."""
    args = [*FAST, "trainer.max_steps=4", "trainer.save_every=1", "trainer.keep_last=2", "verifier=python",
            "verifier.target=tests/fixtures/verifiers.py:fails_from_call"]
    run = tmp_path / "run"
    assert aware("train", *args, f"output_dir={run}").exit_code == 0
    assert [p.name for p in rundir.list_checkpoints(run)] == ["step-3", "step-4"] and (run / "final").is_dir()
    monkeypatch.setenv("AWARE_TEST_FAIL_FROM_CALL", "1")  # the resumed step 4 fails at once
    result = runner.invoke(app, ["train", *args, f"output_dir={run}", f"resume={run / 'checkpoints' / 'step-3'}"])
    assert result.exit_code == 2, result.output
    assert "removed checkpoint" in result.output and "step-4" in result.output
    assert [p.name for p in rundir.list_checkpoints(run)] == ["step-3"] and not (run / "final").exists()
    assert rundir.resolve_resume(run, "auto")[0].name == "step-3"
    assert [m["step"] for m in read_jsonl(run / "metrics.jsonl")] == [1, 2, 3]


def test_keep_last_prunes_by_step_and_drops_later_steps(tmp_path):
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([param])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)

    def save(step):
        rundir.save_checkpoint(tmp_path, step, lambda d: (d / "w.txt").write_text(str(step)), opt, sched,
                               {"step": step}, keep_last=2)

    for step in (1, 2, 3, 4):
        save(step)
    assert [p.name for p in rundir.list_checkpoints(tmp_path)] == ["step-3", "step-4"]
    save(2)  # a run resumed from an older state: the later checkpoints belong to the abandoned timeline
    assert [p.name for p in rundir.list_checkpoints(tmp_path)] == ["step-2"]
    assert rundir.drop_later_checkpoints(tmp_path, 1) and rundir.list_checkpoints(tmp_path) == []


# ----------------------------------------------------------------------------- 4. one writer


def test_a_second_run_on_a_locked_directory_is_refused(tmp_path, in_project_root):
    from filelock import FileLock

    run = tmp_path / "run"
    assert aware("train", *FAST, f"output_dir={run}", "trainer.max_steps=1").exit_code == 0
    before = (run / "metrics.jsonl").read_text()
    lock = FileLock(str(run / rundir.LOCK), timeout=0)
    lock.acquire()  # another aware process holds the run directory
    try:
        result = aware("train", *FAST, f"output_dir={run}", "resume=auto", "trainer.max_steps=2")
    finally:
        lock.release()
    assert result.exit_code == 2 and "in use by another aware run" in one_line(result.stderr)
    assert (run / "metrics.jsonl").read_text() == before
    assert json.loads((run / "status.json").read_text())["state"] == "completed"
    resumed = aware("train", *FAST, f"output_dir={run}", "resume=auto", "trainer.max_steps=2")  # released: fine
    assert resumed.exit_code == 0, resumed.output
    assert [m["step"] for m in read_jsonl(run / "metrics.jsonl")] == [1, 2]


def test_two_processes_on_one_output_dir(tmp_path, in_project_root):
    """A real second `aware train` process while the first one runs: refused, the first finishes untouched."""
    import subprocess
    import sys
    import time

    run = tmp_path / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "aware_cli", "train", *FAST, f"output_dir={run}"]
    first = subprocess.Popen(cmd + ["trainer.max_steps=30"], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while not (run / "metrics.jsonl").exists() and first.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    second = subprocess.run(cmd + ["resume=auto", "trainer.max_steps=30"], env=env, capture_output=True, text=True,
                            timeout=120)
    output, _ = first.communicate(timeout=300)
    assert first.returncode == 0, output
    assert second.returncode == 2 and "in use by another aware run" in second.stderr
    assert [m["step"] for m in read_jsonl(run / "metrics.jsonl")] == list(range(1, 31))


def test_truncating_on_resume_keeps_records_with_unicode_line_separators(tmp_path):
    # json.dumps(ensure_ascii=False) writes U+2028/U+2029/U+0085 raw; str.splitlines() would split the
    # record there and the resume truncation would then drop it as a torn line
    path = tmp_path / "samples.jsonl"
    records = [{"step": 1, "prompt": "a\u2028b"}, {"step": 2, "prompt": "c\u2029d\x85e"}, {"step": 3, "prompt": "f"}]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    rundir.truncate_jsonl(path, 2)
    assert [json.loads(line) for line in path.read_text().split("\n") if line] == records[:2]
