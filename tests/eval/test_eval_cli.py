"""`aware eval` in-process on the tiny model: every suite writes metrics.json with its documented keys."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from aware_cli.cli import app

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
FAST = ["model=tiny", "generation.max_new_tokens=6", "generation.do_sample=true"]
KEYS = {
    "advbench": {"asr", "refusal_rate", "n", "n_unjudged"},
    "xstest": {"over_refusal_rate", "unsafe_refusal_rate", "n_safe", "n_unsafe", "over_refusal_by_type"},
    "hexphi": {"harmfulness_score", "harmfulness_rate", "per_category"},
    "task": {"rouge_l", "n"},
}


def run(*args):
    return CliRunner().invoke(app, ["eval", *args], catch_exceptions=False)


@pytest.mark.parametrize("suite, extra", [
    ("advbench", ["limit=3"]),
    ("xstest", ["limit=6"]),
    ("hexphi", [f"data.path={FIXTURES / 'hexphi'}", "verifier=refusal"]),
    ("task", ["limit=2", "bertscore.enabled=false"]),
])
def test_suite_writes_metrics(suite, extra, tmp_path, in_project_root):
    result = run(suite, *FAST, *extra, f"output_dir={tmp_path}")
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "eval" / suite / "metrics.json").read_text())
    assert KEYS[suite] <= set(metrics)
    assert metrics["suite"] == suite
    responses = (tmp_path / "eval" / suite / "responses.jsonl").read_text().splitlines()
    assert len(responses) == metrics["n"]


def test_task_bertscore_with_packaged_encoder(tmp_path, in_project_root):
    result = run("task", *FAST, "limit=2", f"output_dir={tmp_path}")
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "eval" / "task" / "metrics.json").read_text())
    assert 0.0 < metrics["bertscore_f1"] <= 1.0


def test_eval_of_a_run_directory_applies_its_adapter(tmp_path, in_project_root, monkeypatch):
    """The model `aware eval model=<run dir>` generates with is the run's base plus its final/ adapter."""
    import torch
    from peft import PeftModel

    import aware_cli.eval.runner as eval_runner
    from aware_cli.config import compose
    from aware_cli.models import load_model

    run_dir = tmp_path / "run"
    train = CliRunner().invoke(app, ["train", "recipe=smoke", f"output_dir={run_dir}", "trainer.max_steps=2",
                                     "eval.every=0", "trainer.lr=0.05"])
    assert train.exit_code == 0, train.output
    used = {}
    real = eval_runner.load_for_eval

    def spy(cfg):
        model, tokenizer, found = real(cfg)
        used.update(model=model, run_dir=found)
        return model, tokenizer, found

    monkeypatch.setattr(eval_runner, "load_for_eval", spy)
    result = run("advbench", f"model={run_dir}", "limit=2", "generation.max_new_tokens=4")
    assert result.exit_code == 0, result.output
    assert (run_dir / "eval" / "advbench" / "metrics.json").exists() and used["run_dir"] == run_dir
    base, _ = load_model(compose("smoke").config.model, for_training=False)
    expected = PeftModel.from_pretrained(base, str(run_dir / "final")).eval()
    ids = torch.tensor([[1, 5, 9, 14, 3]])
    with torch.no_grad():
        got, want = used["model"](input_ids=ids).logits, expected(input_ids=ids).logits
        with expected.disable_adapter():
            plain = expected(input_ids=ids).logits
    assert torch.allclose(got, want, atol=1e-5)
    assert (got - plain).abs().max() > 1e-3  # the adapter changes the model: the check above can fail


def test_eval_of_a_run_directory_never_inherits_trust_remote_code(tmp_path, in_project_root):
    """A run's config.yaml saying trust_remote_code: true does not turn it on for `aware eval model=<run>`."""
    import yaml

    from aware_cli.config.schema import ModelConfig
    from aware_cli.models.trained import resolve_trained

    run_dir = tmp_path / "run"
    assert CliRunner().invoke(app, ["train", "recipe=smoke", f"output_dir={run_dir}", "trainer.max_steps=1",
                                    "eval.every=0"]).exit_code == 0
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    config["model"]["trust_remote_code"] = True  # e.g. a run directory someone else made
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    base, adapter, found = resolve_trained(ModelConfig(name_or_path=str(run_dir)))
    assert found == run_dir and adapter == run_dir / "final" and base.trust_remote_code is False
    base, _, _ = resolve_trained(ModelConfig(name_or_path=str(run_dir), trust_remote_code=True))  # the command line
    assert base.trust_remote_code is True
    checkpoint = run_dir / "checkpoints" / "step-1"
    assert resolve_trained(ModelConfig(name_or_path=str(checkpoint)))[0].trust_remote_code is False


def test_compare_two_evaluations(tmp_path, in_project_root):
    for name in ("a", "b"):
        assert run("advbench", *FAST, "limit=2", f"output_dir={tmp_path / name}").exit_code == 0
    out = tmp_path / "compare.md"
    result = run("compare", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(out))
    assert result.exit_code == 0, result.output
    text = out.read_text()
    assert text.startswith("| metric | a | b |") and "| advbench.asr |" in text


def test_eval_errors_are_one_line(tmp_path, in_project_root):
    result = CliRunner().invoke(app, ["eval", "advbnch"])
    assert result.exit_code == 2 and "unknown eval suite 'advbnch'" in result.stderr
    result = CliRunner().invoke(app, ["eval", "hexphi", "model=tiny", f"data.path={tmp_path / 'missing'}"])
    assert result.exit_code == 2 and "HEx-PHI directory not found" in result.stderr
    result = CliRunner().invoke(app, ["eval", "compare", str(tmp_path)])
    assert result.exit_code == 2 and "no metrics.json" in result.stderr
