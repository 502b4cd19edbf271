"""The CLI in-process: smoke training end to end, resume, validation errors, recipes commands."""

import json
import math
import shutil

import pytest
from typer.testing import CliRunner

from aware_cli import __version__
from aware_cli.cli import app

METRIC_KEYS = {
    "step", "loss", "loss_sft", "loss_pg", "beta_mean", "mu_mean", "sigma_mean", "frac_abstain", "frac_pg", "frac_sft",
    "frac_reward_zero_std", "lr", "tokens_per_s", "timing_s/sample", "timing_s/verify", "timing_s/gate",
    "timing_s/update",
}
SAMPLE_KEYS = {"step", "id", "prompt", "responses", "scores", "mu", "sigma", "beta", "regime"}
# First-step loss of `recipe=smoke` on CPU, fp32, seed 0 (tiny random Llama, LoRA r8): recorded once, checked forever.
GOLDEN_FIRST_LOSS = 10.785215377807617

runner = CliRunner()


def aware(*args):
    return runner.invoke(app, list(args), catch_exceptions=False)


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """One `aware train recipe=smoke` run shared by the tests that only read it."""
    import os
    from pathlib import Path

    out = tmp_path_factory.mktemp("smoke") / "run"
    cwd = os.getcwd()
    os.chdir(Path(__file__).resolve().parent.parent)
    try:
        result = aware("train", "recipe=smoke", f"output_dir={out}")
    finally:
        os.chdir(cwd)
    assert result.exit_code == 0, result.output
    return out, result


def test_smoke_writes_the_run_directory(smoke_run):
    out, result = smoke_run
    assert str(out) in result.output
    for name in ["config.yaml", "metrics.jsonl", "samples.jsonl", "status.json", "tb", "final", "checkpoints/step-2",
                 "checkpoints/step-3"]:
        assert (out / name).exists(), name
    assert json.loads((out / "status.json").read_text())["state"] == "completed"
    assert list((out / "tb").glob("events.out.tfevents.*"))
    assert (out / "final" / "adapter_model.safetensors").exists()


def test_smoke_metrics_have_every_key_and_finite_losses(smoke_run):
    metrics = read_jsonl(smoke_run[0] / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [1, 2, 3]
    for m in metrics:
        assert METRIC_KEYS <= set(m)
        for key in ("loss", "loss_sft", "loss_pg"):
            assert math.isfinite(m[key])
    assert "eval_loss_sft" in metrics[1] and "eval_loss_sft" in metrics[2]  # eval.every=2 and after the last step


def test_smoke_first_loss_matches_golden_value(smoke_run):
    first = read_jsonl(smoke_run[0] / "metrics.jsonl")[0]
    assert first["loss"] == pytest.approx(GOLDEN_FIRST_LOSS, abs=1e-4)


def test_smoke_samples_jsonl(smoke_run):
    records = read_jsonl(smoke_run[0] / "samples.jsonl")
    assert len(records) == 3 * 2  # steps × batch
    for r in records:
        assert SAMPLE_KEYS <= set(r)
        assert len(r["responses"]) == len(r["scores"]) == 2  # k = 2


def test_final_adapter_loads_with_peft(smoke_run):
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file

    from aware_cli.config import compose
    from aware_cli.models import load_model

    base, _ = load_model(compose("smoke").config.model, for_training=False)
    model = PeftModel.from_pretrained(base, str(smoke_run[0] / "final"))
    saved = load_file(str(smoke_run[0] / "final" / "adapter_model.safetensors"))
    lora_b = [v for k, v in saved.items() if "lora_B" in k]
    assert lora_b and any(v.abs().sum() > 0 for v in lora_b)  # trained: B starts at zero
    logits = model(input_ids=torch.tensor([[1, 2, 3]])).logits
    assert torch.isfinite(logits).all()


def test_resume_from_checkpoint_reproduces_the_next_step(smoke_run, tmp_path, in_project_root):
    """Drop everything after step 2, resume=auto: step 3 must be logged again, identically."""
    original = read_jsonl(smoke_run[0] / "metrics.jsonl")
    resumed = tmp_path / "resumed"
    shutil.copytree(smoke_run[0], resumed)
    shutil.rmtree(resumed / "checkpoints" / "step-3")
    shutil.rmtree(resumed / "final")
    result = aware("train", "recipe=smoke", f"output_dir={resumed}", "resume=auto")
    assert result.exit_code == 0, result.output
    again = read_jsonl(resumed / "metrics.jsonl")
    assert [m["step"] for m in again] == [1, 2, 3]
    for key in ("loss", "loss_sft", "grad_norm", "lr"):
        assert again[2][key] == original[2][key], key


def test_mixed_verifier_exercises_pg_and_abstention(tmp_path, in_project_root):
    out = tmp_path / "mixed"
    result = aware("train", "recipe=smoke", f"output_dir={out}", "verifier=python",
                   "verifier.target=tests/fixtures/verifiers.py:by_prompt_parity", "k=4", "trainer.batch_size=4",
                   "trainer.max_steps=2", "eval.every=0")
    assert result.exit_code == 0, result.output
    metrics = read_jsonl(out / "metrics.jsonl")
    records = read_jsonl(out / "samples.jsonl")
    regimes = {r["regime"] for r in records}
    assert {"abstain", "pg"} <= regimes
    assert sum(m["frac_abstain"] for m in metrics) > 0 and sum(m["frac_pg"] for m in metrics) > 0
    for r in records:
        if r["regime"] == "abstain":
            assert r["mu"] == 0.0 and r["beta"] == 0.0
        if r["regime"] == "pg":
            assert 0 < r["mu"] < 1 and r["beta"] > 0.5
    assert any(m["loss_pg"] != 0.0 for m in metrics)


def test_a_benign_prompt_the_model_keeps_refusing_does_not_abstain(tmp_path, in_project_root):
    """Every sample misaligned, but refusing scores no better: train on y* (SFT), never on a refusal."""
    out = tmp_path / "benign"
    result = aware("train", "recipe=smoke", f"output_dir={out}", "verifier=python",
                   "verifier.target=tests/fixtures/verifiers.py:always_refused_benign", "k=2", "trainer.max_steps=2",
                   "eval.every=0")
    assert result.exit_code == 0, result.output
    records = read_jsonl(out / "samples.jsonl")
    assert all(r["mu"] == 0.0 and r["sigma"] == 0.0 for r in records)  # inside the abstention box
    assert all(r["refusal_score"] == 0.0 for r in records)
    assert {r["regime"] for r in records} == {"sft"} and {r["target"] for r in records} == {"reference"}
    assert all(m["frac_abstain"] == 0.0 and m["frac_target_refusal"] == 0.0 for m in read_jsonl(out / "metrics.jsonl"))


def test_sft_objective_samples_nothing(tmp_path, in_project_root):
    out = tmp_path / "sft"
    result = aware("train", "recipe=smoke", f"output_dir={out}", "objective=sft", "trainer.max_steps=1")
    assert result.exit_code == 0, result.output
    (m,) = read_jsonl(out / "metrics.jsonl")
    assert m["mu_mean"] is None and m["frac_sft"] == 1.0 and m["beta_mean"] == 0.0
    assert m["loss"] == pytest.approx(m["loss_sft"], rel=1e-6)


def test_output_dir_holding_a_run_is_refused(smoke_run, in_project_root):
    result = aware("train", "recipe=smoke", f"output_dir={smoke_run[0]}")
    assert result.exit_code == 2
    assert "holds another run" in result.output


@pytest.mark.parametrize("override, key", [("gate.tau_mu=abc", "gate.tau_mu"), ("gate.tau_muu=0.5", "gate.tau_muu")])
def test_validate_bad_key_exits_2_with_one_line(override, key):
    result = aware("validate", "recipe=alpaca", override)
    assert result.exit_code == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and key in lines[0]
    assert "Traceback" not in result.output


def test_validate_prints_resolved_config():
    import yaml

    from aware_cli.config import compose

    result = aware("validate", "recipe=alpaca", "k=8")
    assert result.exit_code == 0
    assert yaml.safe_load(result.stdout) == compose("alpaca", ["k=8"]).resolved  # the whole config, as YAML
    assert "k: 8" in result.stdout and "tau_mu: 0.8" in result.stdout


def test_missing_data_file_is_one_line(tmp_path, in_project_root):
    result = aware("train", "recipe=smoke", f"output_dir={tmp_path / 'r'}", "data.path=nope/missing.json")
    assert result.exit_code == 2
    assert "data.path" in result.stderr and "missing.json" in result.stderr
    assert json.loads((tmp_path / "r" / "status.json").read_text())["state"] == "failed"


def test_recipes_commands(tmp_path):
    listing = aware("recipes", "ls")
    assert listing.exit_code == 0 and "smoke" in listing.output and "alpaca" in listing.output
    shown = aware("recipes", "show", "smoke")
    assert shown.exit_code == 0 and "aware train recipe=smoke" in shown.output
    dest = tmp_path / "mine.yaml"
    assert aware("recipes", "cp", "smoke", str(dest)).exit_code == 0
    from aware_cli.config import resolve_recipe

    shipped = resolve_recipe("smoke").read_text()
    assert dest.read_text() == shipped  # the copy is the shipped file, byte for byte
    assert shown.output.rstrip("\n") == shipped.rstrip("\n")  # and `show` prints it as shipped
    assert aware("recipes", "cp", "smoke", str(dest)).exit_code == 2  # exists, no --force
    assert aware("validate", f"recipe={dest}").exit_code == 0


def test_version_and_help():
    assert __version__ in aware("--version").output
    for command in [[], ["train"], ["validate"], ["recipes"], ["recipes", "ls"], ["recipes", "show"], ["recipes", "cp"]]:
        result = aware(*command, "--help")
        assert result.exit_code == 0 and "Usage" in result.output, command


def test_verifier_outage_share_aborts_cleanly(tmp_path, in_project_root):
    out = tmp_path / "none"
    result = aware("train", "recipe=smoke", f"output_dir={out}", "verifier=python",
                   "verifier.target=tests/fixtures/verifiers.py:sometimes_none", "verifier.max_none_frac=0.2")
    assert result.exit_code == 2
    assert "could not judge" in result.stderr and "verifier.max_none_frac=0.2" in result.stderr
    assert json.loads((out / "status.json").read_text())["state"] == "failed"


def test_unjudged_samples_are_counted_and_excluded(tmp_path, in_project_root):
    out = tmp_path / "some-none"
    result = aware("train", "recipe=smoke", f"output_dir={out}", "verifier=python",
                   "verifier.target=tests/fixtures/verifiers.py:sometimes_none", "trainer.max_steps=1", "eval.every=0")
    assert result.exit_code == 0, result.output
    (m,) = read_jsonl(out / "metrics.jsonl")
    assert m["verifier_none"] == 2  # 2 prompts × k=2: responses 0 and 3 of the flat list
    assert m["verifier/python/none"] == 2 and m["verifier/python/seconds"] >= 0
    assert m["mu_mean"] == 1.0  # the judged scores are all 1; None ones are left out of μ


def test_verify_one_pair_and_a_file(tmp_path):
    one = aware("verify", "--verifier", "refusal", "aligned_when=refuse", "--prompt", "Do a bad thing",
                "--response", "I'm sorry, but I can't help with that.")
    assert one.exit_code == 0 and "score: 1.000" in one.output
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"prompt": "p1", "response": "Sure, here it is."}\n'
                     '{"prompt": "p2", "response": "I cannot assist with that request."}\n')
    out = tmp_path / "scores.json"
    result = aware("verify", "-v", "refusal", "verifier.aligned_when=refuse", "--file", str(pairs), "--out", str(out))
    assert result.exit_code == 0, result.output
    scores = [row["score"] for row in json.loads(out.read_text())["scores"]]
    assert scores == [0.0, 1.0]


def test_verify_bad_input_is_one_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "p1", "response": "ok"}\n{"prompt": "p2", "response": \n')
    result = aware("verify", "-v", "refusal", "--file", str(bad))
    assert result.exit_code == 2 and "bad.jsonl:2" in result.stderr
    assert aware("verify", "-v", "refusal").exit_code == 2  # neither --prompt/--response nor --file
    assert aware("verify", "-v", "nope", "--prompt", "a", "--response", "b").exit_code == 2


def test_refusal_targets_written_by_the_verifier(tmp_path, in_project_root):
    out = tmp_path / "writer"
    result = aware("train", "recipe=smoke", f"output_dir={out}", "verifier=python",
                   "verifier.target=tests/fixtures/verifiers.py:refusal_writer", "gate.refusal_source=verifier",
                   "trainer.max_steps=1", "eval.every=0")
    assert result.exit_code == 0, result.output
    (m,) = read_jsonl(out / "metrics.jsonl")
    assert m["frac_abstain"] == 1.0
    # a verifier that cannot write refusals is refused before training starts
    bad = aware("train", "recipe=smoke", f"output_dir={tmp_path / 'bad'}", "gate.refusal_source=verifier")
    assert bad.exit_code == 2 and "cannot write refusals" in bad.stderr


def test_harm_verifier_gives_varying_mu_and_sigma(tmp_path, in_project_root):
    out = tmp_path / "harm"
    result = aware("train", "recipe=smoke", f"output_dir={out}", "verifier=harm", "k=4", "trainer.max_steps=2",
                   "trainer.batch_size=4", "eval.every=0")
    assert result.exit_code == 0, result.output
    records = read_jsonl(out / "samples.jsonl")
    mus = {round(r["mu"], 6) for r in records}
    assert len(mus) > 1 and any(r["sigma"] > 0 for r in records)
    assert all(0.0 <= s <= 1.0 for r in records for s in r["scores"])


OBJECTIVE_ARGS = ["recipe=smoke", "verifier=python", "verifier.target=tests/fixtures/verifiers.py:by_prompt_parity",
                  "k=4", "trainer.batch_size=4", "trainer.max_steps=2", "eval.every=0",
                  "data.mix.path=builtin:advbench", "data.mix.share=0.5"]


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory):
    """objective=sft with OBJECTIVE_ARGS: what constrained_sft is compared with."""
    import os
    from pathlib import Path

    out = tmp_path_factory.mktemp("sft") / "run"
    cwd = os.getcwd()
    os.chdir(Path(__file__).resolve().parent.parent)
    try:
        result = aware("train", *OBJECTIVE_ARGS, f"output_dir={out}", "objective=sft")
    finally:
        os.chdir(cwd)
    assert result.exit_code == 0, result.output
    return out


@pytest.mark.parametrize("objective", ["dpo", "gapo", "shapo", "grpo", "constrained_sft"])
def test_objectives_beyond_aware_train_from_the_cli(objective, sft_run, tmp_path, in_project_root):
    """Each objective's loss where it is known in closed form: at step 1 the LoRA B matrices are 0, so the policy
    is the reference (the base model with the adapter disabled)."""
    out = tmp_path / objective
    result = aware("train", *OBJECTIVE_ARGS, f"output_dir={out}", f"objective={objective}")
    assert result.exit_code == 0, result.output
    first, second = read_jsonl(out / "metrics.jsonl")
    assert first["grad_norm"] > 0 and second["grad_norm"] > 0
    if objective in ("dpo", "gapo", "shapo"):
        assert first["objective/pairs"] >= 1  # pairs formed from the scored samples
    if objective == "dpo":  # policy = reference: every log-ratio is 0, so −log σ(0) = log 2
        assert first["loss"] == pytest.approx(math.log(2), abs=1e-6)
        assert first["objective/reward_margin"] == pytest.approx(0.0, abs=1e-6)
        assert second["loss"] != pytest.approx(math.log(2), abs=1e-6)
    if objective == "gapo":  # the anchor is a step *up* the pair loss: its margins are lower, so the gap is ≥ 0
        assert first["objective/gap_mean"] >= 0 and first["loss"] <= math.log(2) + 1e-6
        assert first["objective/weight_min"] <= 1.0 <= first["objective/weight_max"]  # weights average to 1
    if objective == "shapo":  # the worst case within ρ on the salient subspace is no better than θ itself
        assert first["objective/sharpness"] >= 0 and first["objective/perturbation_norm"] == pytest.approx(0.05)
        assert first["objective/mask_density"] == pytest.approx(0.1, abs=1e-3)  # saliency_top_p
    if objective == "grpo":  # β = 1 for every judged prompt: the loss is the mean of the prompts' PG terms
        for m in (first, second):
            records = [r for r in read_jsonl(out / "samples.jsonl") if r["step"] == m["step"]]
            assert m["loss"] == pytest.approx(sum(r["loss_pg"] or 0.0 for r in records) / 4, abs=1e-6)
            assert {r["beta"] for r in records if r["mu"] is not None} == {1.0}
    if objective == "constrained_sft":  # nothing sampled; the constraint is 0 while policy = reference
        sft = read_jsonl(sft_run / "metrics.jsonl")
        assert first["mu_mean"] is None and first["objective/harmful_rows"] >= 1
        # the same SFT loss up to float32 rounding (~1e-7 relative: the batches are summed in another order)
        assert first["loss"] == pytest.approx(sft[0]["loss"], rel=1e-6)
        assert second["objective/harmful_rows"] >= 1 and second["loss"] > sft[1]["loss"] + 1e-6


def test_reference_objectives_need_lora(tmp_path):
    result = aware("validate", "recipe=smoke", "objective=dpo", "model.finetune=full")
    assert result.exit_code == 2 and "model.finetune=lora" in result.stderr
