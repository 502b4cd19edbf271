"""recipe=recover: aware on benign Alpaca starting from an unsafe SFT run on alpaca_harmful_mix (tiny model)."""

import json

import yaml
from typer.testing import CliRunner

from aware_cli.cli import app
from aware_cli.config import compose

SMALL = ["model=tiny", "trainer=smoke", "data.limit=40", "data.eval_size=4", "data.max_prompt_tokens=64",
         "data.max_response_tokens=16", "sampling.max_new_tokens=8", "sampling.dtype=model", "eval.max_prompts=2",
         "eval.max_new_tokens=8"]


def aware(*args):
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


def test_recover_recipe_starts_from_a_run_and_tracks_harmful_compliance():
    cfg = compose("recover").config
    assert cfg.model.name_or_path == "./runs/unsafe-sft" and cfg.model.from_run == "merge"
    assert cfg.data.path == "builtin:alpaca-demo" and cfg.data.mix.path is None  # benign data only
    assert cfg.objective.name == "aware"
    assert cfg.eval.suites == ["advbench", "xstest"] and cfg.trainer.save_best == "eval/advbench/asr"


def test_recover_trains_from_an_unsafe_sft_run_on_the_tiny_model(tmp_path):
    unsafe = tmp_path / "unsafe-sft"
    result = aware("train", "recipe=alpaca_harmful_mix", "objective=sft", f"output_dir={unsafe}", *SMALL,
                   "trainer.max_steps=2")  # the recipe's 200 steps would only cost time here
    assert result.exit_code == 0, result.output
    parent_split = json.loads((unsafe / "split.json").read_text())
    assert parent_split["mix_source"] == "builtin:advbench" and parent_split["train_ids"]

    recovered = tmp_path / "recovered"
    result = aware("train", "recipe=recover", f"model.name_or_path={unsafe}", f"output_dir={recovered}", *SMALL[1:],
                   "k=2", "trainer.max_steps=2", "trainer.batch_size=2", "trainer.save_every=0", "eval.every=1",
                   "eval.suite_limit=2")
    assert result.exit_code == 0, result.output
    config = yaml.safe_load((recovered / "config.yaml").read_text())
    assert config["model"]["name_or_path"] == str(unsafe.resolve())  # the parent run, recorded
    metrics = [json.loads(line) for line in (recovered / "metrics.jsonl").read_text().splitlines()]
    assert all("eval/advbench/asr" in m and "eval/xstest/over_refusal_rate" in m for m in metrics)
    best = json.loads((recovered / "checkpoints" / "best" / "best.json").read_text())
    assert best["metric"] == "eval/advbench/asr" and best["mode"] == "min"
    assert best["value"] == min(m["eval/advbench/asr"] for m in metrics)
