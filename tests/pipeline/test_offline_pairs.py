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
from aware_cli.pipeline.parallel.distributed import Ranks
from aware_cli.data.preference import offline_training_data
from aware_cli.pipeline.objectives import Pair, pair_update

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


# ---------------------------------------------------------------------------- pair_update over ranks


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
                           device=torch.device("cpu"), params=params, state={}, ranks=Ranks())


PAIRS = [Pair([5, 6, 7], [20, 21, 22], [30, 31]), Pair([8, 9], [40], [41, 42, 43]),
         Pair([10, 11, 12, 13], [23, 24], [25]), Pair([14], [26, 27, 28], [29, 32])]


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


CASES = [("dpo", [[0, 1, 2], [3]]), ("gapo", [[0, 1, 2], [3]]), ("shapo", [[0, 1, 2], [3]]),
         ("gapo", [[0, 1, 2, 3], []]), ("shapo", [[], [0, 1, 2, 3]])]


def _pair_update_on_rank(rank, world, port, out):
    """One gloo rank: pair_update on this rank's share of PAIRS for every case; values and local gradients saved."""
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        for case, (name, shares) in enumerate(CASES):
            policy = _policy(name)
            policy.ranks = Ranks(rank=rank, world=world)
            value, info = pair_update(policy, [PAIRS[i] for i in shares[rank]], 0)
            grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in policy.params]
            torch.save({"value": value, "grads": grads, "pairs": info["pairs"]},
                       os.path.join(out, f"{case}-{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """Every case of CASES run once on 2 gloo ranks (one spawn: the processes are slow to start)."""
    import torch.multiprocessing as mp

    out = tmp_path_factory.mktemp("ranks")
    mp.start_processes(_pair_update_on_rank, args=(2, _free_port(), str(out)), nprocs=2, start_method="spawn")
    return out


@pytest.mark.parametrize("case", range(len(CASES)), ids=[f"{n}-{len(s[0])}+{len(s[1])}" for n, s in CASES])
def test_pair_update_over_two_ranks_adds_up_to_one_process(case, two_ranks):
    """2 gloo ranks, uneven shares (one may have no pair): the summed values and gradients are the 1-process ones.

    gapo's anchor gradient and softmax weights and shapo's saliency mask and perturbation couple the
    pairs; each is taken over every rank's pairs, so the result does not depend on the split.
    """
    name, _ = CASES[case]
    policy = _policy(name)
    one, info = pair_update(policy, PAIRS, 0)
    expected = [p.grad.clone() for p in policy.params]
    assert info["pairs"] == 4 and any(g.abs().sum() > 0 for g in expected)
    parts = [torch.load(two_ranks / f"{case}-{rank}.pt", weights_only=True) for rank in range(2)]
    assert [part["pairs"] for part in parts] == [4, 4]
    assert sum(part["value"] for part in parts) == pytest.approx(one, abs=1e-6)
    for i, g in enumerate(expected):
        assert torch.allclose(parts[0]["grads"][i] + parts[1]["grads"][i], g, atol=1e-6, rtol=1e-5), i


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
