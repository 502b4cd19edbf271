"""Every malformed input: exit code 2, one line naming the key or file:line, no traceback, nothing lost."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from aware_cli.cli import app

GOOD_ROWS = "".join(json.dumps({"prompt": f"question {i}?", "response": f"answer {i}."}) + "\n" for i in range(6))


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# (case id, builds extra overrides from tmp_path, text the one-line error must contain)
CASES = [
    ("unknown-key", lambda t: ["gate.tau_muu=0.5"], "unknown config key 'gate.tau_muu' (did you mean gate.tau_mu"),
    ("wrong-type", lambda t: ["trainer.max_steps=abc"], "trainer.max_steps: expected int >= 1, got 'abc'"),
    ("out-of-range", lambda t: ["k=0"], "k: expected a value >= 1, got 0"),
    ("unknown-group-option", lambda t: ["gate=sofft"], "Could not find 'gate/sofft'"),
    ("missing-data-file", lambda t: ["data.path=" + str(t / "missing.jsonl")], "missing.jsonl"),
    ("not-json-line", lambda t: ["data.path=" + str(write(t / "d.jsonl", GOOD_ROWS + '{"prompt": "x",\n'))],
     "d.jsonl:7: not valid JSON"),
    ("missing-field", lambda t: ["data.path=" + str(write(t / "d.jsonl", GOOD_ROWS + '{"prompt": "x"}\n'))],
     "missing field 'response'"),
    ("empty-dataset", lambda t: ["data.path=" + str(write(t / "d.jsonl", "\n"))], "has no usable rows"),
    ("eval-takes-everything", lambda t: ["data.path=" + str(write(t / "d.jsonl", GOOD_ROWS)), "data.eval_size=6"],
     "data.eval_size"),
    ("prompt-longer-than-context", lambda t: ["data.max_prompt_tokens=1020", "sampling.max_new_tokens=16"],
     "exceeds the model's context of 1024 tokens"),
    ("model-dir-not-a-model", lambda t: ["model=hf", "model.name_or_path=" + str(write(t / "x.txt", "hi").parent)],
     "is not a model directory"),
    ("gguf-not-a-model", lambda t: ["model=hf", "model.name_or_path=" + str(write(t / "fake.gguf", "not gguf"))],
     "fake.gguf"),
    ("recipe-missing", lambda t: [], "recipe file not found"),
]


@pytest.mark.parametrize("case, extra, expected", CASES, ids=[c[0] for c in CASES])
def test_bad_input_exits_2_with_one_line(case, extra, expected, tmp_path, in_project_root):
    out = tmp_path / "run"
    recipe = f"recipe={tmp_path / 'nope.yaml'}" if case == "recipe-missing" else "recipe=smoke"
    data = ["data=synthetic"] if any(a.startswith("data.path=") for a in extra(tmp_path)) else []
    result = CliRunner().invoke(app, ["train", recipe, f"output_dir={out}", *data, *extra(tmp_path)])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert expected in lines[0]
    assert "Traceback" not in result.output
    if (out / "status.json").exists():  # the run directory got created: it must say the run failed
        assert json.loads((out / "status.json").read_text())["state"] == "failed"
        assert not (out / "final").exists()


def test_output_dir_of_another_run_is_left_untouched(tmp_path, in_project_root):
    out = tmp_path / "other"
    out.mkdir()
    write(out / "config.yaml", "k: 4\n")
    write(out / "metrics.jsonl", '{"step": 1, "loss": 1.0}\n')
    result = CliRunner().invoke(app, ["train", "recipe=smoke", f"output_dir={out}"])
    assert result.exit_code == 2 and "holds another run" in result.stderr
    assert (out / "config.yaml").read_text() == "k: 4\n"
    assert (out / "metrics.jsonl").read_text() == '{"step": 1, "loss": 1.0}\n'


def test_with_key_keeps_the_error_class_and_its_attributes():
    from aware_cli.errors import ModelError
    from aware_cli.pipeline.parallel.distributed import PeerFailed

    err = ModelError("cannot load 'x'", key="model.name_or_path").with_key("verifier.harm.heads", "needs encoder 'x': ")
    assert type(err) is ModelError and err.key == "verifier.harm.heads" and err.exit_code == 2
    assert str(err) == "verifier.harm.heads: needs encoder 'x': cannot load 'x'"
    peer = PeerFailed("rank 1 failed", 3).with_key("trainer.nproc")  # a subclass with its own constructor
    assert type(peer) is PeerFailed and peer.exit_code == 3 and str(peer) == "trainer.nproc: rank 1 failed"
