"""objective.pairs_path: dpo / gapo / shapo trained from a fixed preference file (no sampling, no verifier)."""

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file
from transformers import LlamaConfig, LlamaForCausalLM
from typer.testing import CliRunner

from aware_cli.cli import app
from aware_cli.config.schema import AwareConfig, DataConfig, ObjectiveConfig
from aware_cli.pipeline.objectives import Pair
from aware_cli.pipeline.preference import offline_training_data, pair_update

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "preference"
SHAREGPT = FIXTURES / "sharegpt.json"  # 4 pairs, one with a system turn and earlier turns
JSONL = FIXTURES / "pairs.jsonl"  # 4 pairs, one whose prompt is a message list
# tiny model, 2 pairs a step, short sequences: CPU seconds per run
TINY = ["recipe=preference", "model=tiny", "trainer=smoke", "trainer.batch_size=2", "data.max_prompt_tokens=64",
        "data.max_response_tokens=16"]

runner = CliRunner()


def aware(*args):
    return runner.invoke(app, list(args), catch_exceptions=False)


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


# ---------------------------------------------------------------------------- data


def test_offline_training_data_keeps_history_and_rejected_and_applies_data_keys(tmp_path):
    shutil.copy(SHAREGPT, tmp_path / "pairs.json")
    cfg = AwareConfig(objective=ObjectiveConfig(name="dpo", pairs_path="pairs.json"),
                      data=DataConfig(shuffle=False, eval_size=1, limit=3))
    data = offline_training_data(cfg, base_dir=tmp_path)  # relative to base_dir, like data.path
    assert [ex.id for ex in data.held_out] == ["0"] and [ex.id for ex in data.train] == ["1", "2"]
    turn = data.train[0]
    assert (turn.prompt, turn.response, turn.meta["rejected"]) == ("And another one?", "3.", "Seven hundred.")
    assert [t["role"] for t in turn.meta["history"]] == ["system", "user", "assistant"]
    assert data.split["task_heldout_ids"] == ["0"]


# ---------------------------------------------------------------------------- pair_update's scale


def _policy(name):
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32, pad_token_id=0)
    model = get_peft_model(LlamaForCausalLM(config), LoraConfig(r=2, lora_alpha=2, target_modules=["q_proj"]))
    with torch.no_grad():  # B starts at 0; make the adapter (and DPO's log-ratio) matter
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape) * 0.5)
    params = [p for p in model.parameters() if p.requires_grad]
    cfg = AwareConfig(objective=ObjectiveConfig(name=name, saliency_top_p=0.5))
    return SimpleNamespace(cfg=cfg, model=model.eval(), tokenizer=SimpleNamespace(pad_token_id=0),
                           device=torch.device("cpu"), params=params, state={})


@pytest.mark.parametrize("name", ["dpo", "gapo", "shapo"])
def test_pair_update_scales_value_and_gradient_by_the_rank_share(name):
    """Under torchrun each rank passes its share of the B pairs: the sums over ranks are the global mean."""
    policy = _policy(name)
    pairs = [Pair([5, 6, 7], [20, 21, 22], [30, 31]), Pair([8, 9], [40], [41, 42, 43])]
    full, info = pair_update(policy, pairs, 0)
    grads = [p.grad.clone() for p in policy.params]
    policy.model.zero_grad(set_to_none=True)
    half, _ = pair_update(policy, pairs, 0, scale=0.5)
    assert info["pairs"] == 2 and math.isfinite(full) and half == pytest.approx(full / 2, rel=1e-6)
    assert any(g.abs().sum() > 0 for g in grads)
    for p, g in zip(policy.params, grads):
        assert torch.allclose(p.grad, g / 2, atol=1e-7, rtol=1e-5)


# ---------------------------------------------------------------------------- from the CLI


@pytest.mark.parametrize("objective,pairs", [("dpo", SHAREGPT), ("gapo", JSONL), ("shapo", SHAREGPT)])
def test_objectives_train_from_a_preference_file(objective, pairs, tmp_path, in_project_root):
    out = tmp_path / objective
    result = aware("train", *TINY, f"objective={objective}", f"objective.pairs_path={pairs}", f"output_dir={out}")
    assert result.exit_code == 0, result.output
    assert "4 training / 0 held-out preference pairs" in result.output.replace("\n", " ")
    metrics = read_jsonl(out / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [1, 2, 3]
    for m in metrics:
        assert math.isfinite(m["loss"]) and m["grad_norm"] > 0 and m["objective/pairs"] == 2
        assert m["mu_mean"] is None and m["sample_tokens_per_s"] == 0
        assert m["verifier/refusal/calls"] == 0  # nothing sampled, nothing verified
    records = read_jsonl(out / "samples.jsonl")
    assert len(records) == 3 * 2 and all(r["responses"] == [] and r["chosen_tokens"] >= 2 for r in records)
    # steps 1-2 cover the 4 pairs once (one seeded epoch), step 3 starts the next
    assert sorted(r["id"] for r in records[:4]) == ["0", "1", "2", "3"]
    if objective == "dpo":
        # LoRA B starts at 0: at step 1 the policy is the reference (base, adapter off) and DPO = log 2
        assert metrics[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
        assert metrics[0]["objective/reward_margin"] == 0.0
        assert metrics[-1]["loss"] != pytest.approx(math.log(2), abs=1e-4)  # and then it moves


def test_offline_resume_equals_a_straight_run(tmp_path, in_project_root):
    args = [*TINY, "objective=gapo", f"objective.pairs_path={JSONL}", "trainer.max_steps=4", "trainer.save_every=2",
            "trainer.keep_last=0"]
    straight = tmp_path / "straight"
    assert aware("train", *args, f"output_dir={straight}").exit_code == 0
    # the same run stopped after its step-2 checkpoint, then resumed
    resumed = tmp_path / "resumed"
    shutil.copytree(straight, resumed)
    shutil.rmtree(resumed / "checkpoints" / "step-4")
    shutil.rmtree(resumed / "final")
    result = aware("train", *args, f"output_dir={resumed}", "resume=auto")
    assert result.exit_code == 0, result.output
    assert "resumed from" in result.output and "step-2" in result.output
    a, b = read_jsonl(straight / "metrics.jsonl"), read_jsonl(resumed / "metrics.jsonl")
    assert [m["step"] for m in b] == [1, 2, 3, 4]
    for key in ("loss", "grad_norm", "lr", "objective/gap_mean"):
        assert [m[key] for m in a] == [m[key] for m in b], key
    assert [r["id"] for r in read_jsonl(straight / "samples.jsonl")] == [
        r["id"] for r in read_jsonl(resumed / "samples.jsonl")]
    wa = load_file(str(straight / "final" / "adapter_model.safetensors"))
    wb = load_file(str(resumed / "final" / "adapter_model.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_pairs_path_needs_a_pairwise_objective_and_no_mix():
    result = aware("validate", "recipe=preference", "objective=aware")
    assert result.exit_code == 2 and "objective.pairs_path" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    result = aware("validate", "recipe=preference", "data.mix.path=x.csv")
    assert result.exit_code == 2 and "data.mix.path" in result.stderr


def test_a_bad_preference_file_is_a_one_line_data_error(tmp_path, in_project_root):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "hi", "chosen": "hello", "rejected": "go away"}\n{"prompt": "hi", "chosen": "x"}\n')
    result = aware("train", *TINY, f"objective.pairs_path={bad}", f"output_dir={tmp_path / 'run'}")
    assert result.exit_code == 2
    assert f"{bad}:2 (row 2)" in result.stderr and "missing 'rejected'" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_offline_dpo_under_torchrun_matches_one_process(tmp_path):
    """Each rank takes its share of the step's pairs, weighted by that share: the same training as one process."""
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    runs = {}
    for name, extra in (("one", []), ("two", ["trainer.nproc=2"])):
        args = [*TINY, "trainer.batch_size=4", f"objective.pairs_path={SHAREGPT}", f"output_dir={tmp_path / name}"]
        done = subprocess.run([sys.executable, "-m", "aware_cli", "train", *args, *extra], cwd=root, env=env,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
        runs[name] = read_jsonl(tmp_path / name / "metrics.jsonl")
    assert [m["step"] for m in runs["two"]] == [1, 2, 3]
    for a, b in zip(runs["one"], runs["two"]):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4)
