"""The objective registry: an objective is one class; compose-time checks and the training step ask it.

`HalfSFT` below is a complete objective, defined here the way a new file in pipeline/objectives/
would define it: registering it is all it takes for `aware train objective.name=toy_half_sft`.
"""

import json

import pytest
from typer.testing import CliRunner

from aware_cli.cli import app
from aware_cli.config import compose
from aware_cli.errors import ConfigError
from aware_cli.pipeline.objectives import OBJECTIVES, Objective, Update, get_objective, register_objective
from aware_cli.pipeline.update import WeightedSequence, backward_gated_loss


@register_objective("toy_half_sft")
class HalfSFT(Objective):
    """Half the SFT loss on the reference targets; nothing sampled, nothing verified."""

    samples = False

    def update(self, policy, rollout, step):
        sequences = [WeightedSequence(prompt, target, weight=-0.5 / rollout.batch_size)
                     for prompt, target in zip(rollout.prompts, rollout.targets)]
        result = backward_gated_loss(policy.model, sequences, num_samples=1, pad_id=policy.tokenizer.pad_token_id,
                                     device=policy.device, chunk=policy.cfg.trainer.logprob_batch)
        return Update(result, info={"rows": len(sequences)})


def test_the_builtin_objectives_declare_what_they_need():
    cfg = compose("smoke").config
    assert {"aware", "sft", "pg", "grpo", "dpo", "gapo", "shapo", "constrained_sft"} <= set(OBJECTIVES)
    assert [n for n in ("aware", "sft", "pg", "grpo", "constrained_sft") if get_objective(n).sampled(cfg)] == \
        ["aware", "pg", "grpo"]
    assert [n for n, o in OBJECTIVES.items() if o.pairwise] == sorted(["dpo", "gapo", "shapo"])
    assert [n for n, o in OBJECTIVES.items() if not o.fsdp2] == ["gapo", "shapo"]
    assert {n for n, o in OBJECTIVES.items() if o.needs_reference(cfg)} == {"dpo", "constrained_sft"}
    assert get_objective("aware").scores_refusals(cfg) == cfg.gate.abstain
    assert get_objective("dpo").scores_targets(cfg) == cfg.objective.pair_reference


def test_compose_asks_the_registry():
    assert compose("smoke", ["objective.name=toy_half_sft"]).config.objective.name == "toy_half_sft"
    with pytest.raises(ConfigError, match=r"objective.name: expected one of .*toy_half_sft.*got 'toy_half_sf' "
                                          r"\(did you mean toy_half_sft\?\)"):
        compose("smoke", ["objective.name=toy_half_sf"])
    with pytest.raises(ConfigError, match="offline preference pairs train objective=dpo, gapo or shapo, "
                                          "not objective=toy_half_sft"):
        compose("smoke", ["objective.name=toy_half_sft", "objective.pairs_path=builtin:preference-demo"])
    with pytest.raises(ConfigError, match="objective=dpo needs the reference model"):
        compose("smoke", ["objective=dpo", "model.finetune=full"])


def test_a_registered_objective_trains(tmp_path, in_project_root):
    runner = CliRunner()
    losses = {}
    for name in ("sft", "toy_half_sft"):
        out = tmp_path / name
        result = runner.invoke(app, ["train", "recipe=smoke", f"objective.name={name}", "trainer.max_steps=1",
                                     "eval.every=0", f"output_dir={out}"], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        losses[name] = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert losses["toy_half_sft"]["loss"] == pytest.approx(losses["sft"]["loss"] / 2, rel=1e-6)
    assert losses["toy_half_sft"]["objective/rows"] == 2.0
    assert losses["toy_half_sft"]["generated"] == 0
