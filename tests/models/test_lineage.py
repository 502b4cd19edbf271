"""Continue from a run: model.name_or_path=<run dir or checkpoint>, merged or adapter, chains of runs."""

import json
import re
import shutil

import pytest
import torch
import yaml
from safetensors.torch import load_file
from typer.testing import CliRunner

from aware_cli.cli import app
from aware_cli.config import compose
from aware_cli.config.schema import LoraConfig, ModelConfig
from aware_cli.errors import ConfigError, ModelError
from aware_cli.models import base_model_path, load_model
from aware_cli.models.lineage import find_trained, lineage, root_model
from aware_cli.models.trained import load_for_eval, resolve_trained


def aware(*args):
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


def logits(model, ids=((1, 2, 3, 4, 5, 6),)) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(input_ids=torch.tensor(ids)).logits


def cpu(name, **kw) -> ModelConfig:
    return ModelConfig(name_or_path=str(name), device="cpu", dtype="float32", **kw)


def test_find_trained_tells_runs_checkpoints_and_models_apart(lora_run, tmp_path):
    run = find_trained(str(lora_run))
    assert run.weights == lora_run.resolve() / "final" and run.run_dir == lora_run.resolve() and run.adapter
    assert run.base.name_or_path == "tiny" and run.base.lora.r == 8  # the run's own model block
    step = find_trained(str(lora_run / "checkpoints" / "step-2"))
    assert step.run_dir == lora_run.resolve() and step.weights.name == "step-2"
    assert find_trained(str(lora_run / "final")).run_dir == lora_run.resolve()
    for name in ["tiny", "embedded:smollm2-135m-instruct", "HuggingFaceTB/SmolLM2-135M-Instruct", str(tmp_path)]:
        assert find_trained(name) is None
    unfinished = tmp_path / "unfinished"
    shutil.copytree(lora_run, unfinished)
    shutil.rmtree(unfinished / "final")
    with pytest.raises(ModelError, match="has no final/ weights"):
        find_trained(str(unfinished))


def test_a_run_loads_as_its_trained_model(lora_run):
    merged, _ = load_model(cpu(lora_run), for_training=False)
    adapter_model, _, _ = load_for_eval(cpu(lora_run))
    base, _ = load_model(cpu("tiny", lora=compose("smoke").config.model.lora), for_training=False)
    assert (logits(merged) - logits(adapter_model)).abs().max() <= 1e-5
    assert (logits(merged) - logits(base)).abs().max() > 1e-3  # the training moved it
    assert not [n for n, _ in merged.named_parameters() if "lora" in n]  # merged: a plain model


def test_training_from_a_run_puts_a_fresh_lora_on_the_merged_model(lora_run):
    model, _ = load_model(cpu(lora_run, lora=LoraConfig(r=4, alpha=8)))
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert all(p.shape[0] == 4 for n, p in trainable.items() if "lora_A" in n)  # this run's rank, not the parent's 8
    merged, _ = load_model(cpu(lora_run), for_training=False)
    assert (logits(model) - logits(merged)).abs().max() <= 1e-5  # LoRA's B starts at zero


def test_from_run_adapter_keeps_training_the_parents_adapter(lora_run):
    cfg = cpu(lora_run, from_run="adapter")
    model, _ = load_model(cfg)
    parent = load_file(str(lora_run / "final" / "adapter_model.safetensors"))
    state = {n.replace(".default", ""): p for n, p in model.named_parameters() if p.requires_grad}
    assert len(state) == len(parent)
    for key, value in parent.items():
        assert torch.equal(state[key], value), key
    assert base_model_path(cfg) is None  # the parent adapter's base: tiny, built in code
    assert base_model_path(cpu(lora_run)) == str(lora_run.resolve())  # merged: the run itself


def test_trust_remote_code_comes_from_now_not_from_the_parent_run(lora_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(lora_run, run)
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["model"]["trust_remote_code"] = True
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    base, _, _ = resolve_trained(cpu(run))
    assert base.trust_remote_code is False
    assert resolve_trained(cpu(run, trust_remote_code=True))[0].trust_remote_code is True


@pytest.fixture(scope="module")
def child(lora_run, tmp_path_factory):
    """aware train recipe=smoke model.name_or_path=<a checkpoint, given relative to the working directory>."""
    import os

    out = tmp_path_factory.mktemp("child") / "run"
    cwd = os.getcwd()
    os.chdir(lora_run.parent)
    try:
        result = aware("train", "recipe=smoke", "model.name_or_path=run/checkpoints/step-2", f"output_dir={out}")
    finally:
        os.chdir(cwd)
    assert result.exit_code == 0, result.output
    return out


def test_train_from_a_checkpoint_records_the_parent(child, lora_run):
    assert json.loads((child / "status.json").read_text())["state"] == "completed"
    config = yaml.safe_load((child / "config.yaml").read_text())
    assert config["model"]["name_or_path"] == str((lora_run / "checkpoints" / "step-2").resolve())  # absolute
    assert config["model"]["from_run"] == "merge"
    adapter = json.loads((child / "final" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == config["model"]["name_or_path"]
    assert [s.label for s in lineage(str(child))] == [str(child.resolve()), config["model"]["name_or_path"]]
    assert root_model(str(child)) == "tiny"


def test_a_child_run_evaluates_and_exports_through_the_chain(child, lora_run, tmp_path):
    from transformers import AutoModelForCausalLM

    model, _, run_dir = load_for_eval(cpu(child))
    assert run_dir == child.resolve()
    parent, _, _ = load_for_eval(cpu(lora_run / "checkpoints" / "step-2"))
    assert (logits(model) - logits(parent)).abs().max() > 1e-4  # the child trained on top of its parent
    out = tmp_path / "out"
    result = aware("export", child, out)
    assert result.exit_code == 0, result.output
    diff = float(re.search(r"run vs export = ([0-9.e+-]+)", result.output).group(1))
    assert diff <= 1e-3
    exported = AutoModelForCausalLM.from_pretrained(out)
    assert (logits(exported) - logits(model)).abs().max() <= 1e-3
    assert "lineage (newest first)" in (out / "README.md").read_text()


def test_train_from_a_run_continuing_its_adapter(lora_run, tmp_path):
    out = tmp_path / "adapter-child"
    result = aware("train", "recipe=smoke", f"model.name_or_path={lora_run}", "model.from_run=adapter",
                   "model.lora.r=4", f"output_dir={out}", "trainer.max_steps=2", "eval.every=0")
    assert result.exit_code == 0, result.output
    adapter = json.loads((out / "final" / "adapter_config.json").read_text())
    assert adapter["r"] == 8  # the parent's adapter kept training (model.lora is ignored)
    trained = load_file(str(out / "final" / "adapter_model.safetensors"))
    parent = load_file(str(lora_run / "final" / "adapter_model.safetensors"))
    assert trained.keys() == parent.keys() and any(not torch.equal(trained[k], parent[k]) for k in parent)
    model, _, _ = load_for_eval(cpu(out))  # the parent's base + the child's adapter
    merged, _ = load_model(cpu(out), for_training=False)
    assert (logits(model) - logits(merged)).abs().max() <= 1e-5


def test_train_from_a_full_weight_run(full_run, tmp_path):
    out = tmp_path / "from-full"
    result = aware("train", "recipe=smoke", f"model.name_or_path={full_run}", f"output_dir={out}",
                   "trainer.max_steps=1", "eval.every=0")
    assert result.exit_code == 0, result.output
    assert (out / "final" / "adapter_model.safetensors").is_file()
    with pytest.raises(ModelError, match="holds full weights"):
        load_model(cpu(full_run, from_run="adapter"))


def test_inconsistent_continue_options_are_config_errors(lora_run):
    with pytest.raises(ConfigError, match="model.from_run=adapter"):
        compose("smoke", [f"model.name_or_path={lora_run}", "model.from_run=adapter", "model.finetune=full"])
    with pytest.raises(ConfigError, match="aware export RUN OUT"):
        compose("smoke", [f"model.name_or_path={lora_run}", "sampling.engine=vllm"])
    with pytest.raises(ConfigError, match="model.from_run: expected one of merge, adapter"):
        compose("smoke", ["model.from_run=stack"])
