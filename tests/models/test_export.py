"""`aware export`: merged weights plain transformers loads, the self-check, the model card, adapter-only, the hub."""

import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from typer.testing import CliRunner

from aware_cli.cli import app
from aware_cli.config.schema import ModelConfig
from aware_cli.models.trained import load_for_eval

def aware(*args):
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


DIFF = re.compile(r"max \|logit difference\| run vs export = ([0-9.e+-]+)")


def printed_diff(output: str) -> float:
    match = DIFF.search(output)
    assert match, output
    return float(match.group(1))


def probe_logits(model, tokenizer) -> torch.Tensor:
    batch = tokenizer(["Give three tips for staying healthy.", "Hi"], return_tensors="pt", padding=True)
    model.eval()
    with torch.no_grad():
        return model(**batch).logits[batch["attention_mask"].bool()]


def run_logits(path):
    model, tokenizer, _ = load_for_eval(ModelConfig(name_or_path=str(path), device="cpu", dtype="float32"))
    return probe_logits(model, tokenizer), tokenizer


@pytest.fixture(scope="module")
def merged(lora_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "merged"
    result = aware("export", lora_run, out)
    assert result.exit_code == 0, result.output
    return out, result.output


def test_export_of_a_run_loads_with_plain_transformers(lora_run, merged):
    out, output = merged
    assert printed_diff(output) <= 1e-3
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
            "README.md"} <= names
    assert not any(name.startswith("adapter_") for name in names)
    umask = os.umask(0)
    os.umask(umask)
    assert (out / "model.safetensors").stat().st_mode & 0o777 == 0o666 & ~umask  # not transformers' private 0600
    model = AutoModelForCausalLM.from_pretrained(out)
    assert not [n for n, _ in model.named_parameters() if "lora" in n]
    # independent of the printed number: the export reproduces aware's own PeftModel of the run
    expected, tokenizer = run_logits(lora_run)
    assert (probe_logits(model, tokenizer) - expected).abs().max() <= 1e-3
    base = AutoModelForCausalLM.from_pretrained(out)
    assert base.config.model_type == "llama"


def test_exported_tokenizer_keeps_the_chat_template_and_generation_ids(merged):
    out, _ = merged
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.chat_template
    text = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False,
                                         add_generation_prompt=True)
    assert "Hi" in text and text != "Hi"
    generation = GenerationConfig.from_pretrained(out)
    assert tokenizer.eos_token_id in ([generation.eos_token_id] if isinstance(generation.eos_token_id, int)
                                      else generation.eos_token_id)


def test_export_needs_no_peft(merged):
    out, _ = merged
    code = ("import sys; sys.modules['peft'] = None\n"
            "from transformers import AutoModelForCausalLM\n"
            f"m = AutoModelForCausalLM.from_pretrained({str(out)!r}); print(type(m).__name__)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "LlamaForCausalLM" in done.stdout


def test_export_of_a_checkpoint(lora_run, merged, tmp_path):
    out = tmp_path / "step2"
    result = aware("export", lora_run / "checkpoints" / "step-2", out)
    assert result.exit_code == 0, result.output
    assert printed_diff(result.output) <= 1e-3
    model = AutoModelForCausalLM.from_pretrained(out)
    expected, tokenizer = run_logits(lora_run / "checkpoints" / "step-2")
    got = probe_logits(model, tokenizer)
    assert (got - expected).abs().max() <= 1e-3
    final = probe_logits(AutoModelForCausalLM.from_pretrained(merged[0]), tokenizer)
    assert (got - final).abs().max() > 1e-4  # a different checkpoint, different weights
    assert "exported weights: step 2 of 3 optimizer steps" in (out / "README.md").read_text()


def test_large_weights_are_sharded(lora_run, tmp_path):
    out = tmp_path / "sharded"
    result = aware("export", lora_run, out, "--max-shard-size", "5MB")
    assert result.exit_code == 0, result.output
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = set(index["weight_map"].values())
    assert len(shards) >= 2 and all((out / s).is_file() for s in shards)
    model = AutoModelForCausalLM.from_pretrained(out)
    expected, tokenizer = run_logits(lora_run)
    assert (probe_logits(model, tokenizer) - expected).abs().max() <= 1e-3


def test_model_card_records_base_recipe_data_objective_and_metrics(lora_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(lora_run, run)
    (run / "eval" / "advbench").mkdir(parents=True)
    (run / "eval" / "advbench" / "metrics.json").write_text(json.dumps(
        {"suite": "advbench", "headline": "asr", "asr": 0.25, "n": 40, "judge": "refusal", "model": str(run)}))
    out = tmp_path / "out"
    result = aware("export", run, out)
    assert result.exit_code == 0, result.output
    card = (out / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: transformers\n")
    for expected in ["- base: `tiny`", "recipe `smoke`", "`builtin:alpaca-demo` (licence: CC BY-NC 4.0",
                     "objective: `aware`; verifier: `refusal`", "| advbench | asr | 0.25 | 40 | refusal | final (these weights) |",
                     "Last in-training evaluation (step 3", "max |logit difference| ="]:
        assert expected in card, expected
    record = json.loads((out / "aware_export.json").read_text())
    assert record["kind"] == "merged" and record["max_logit_diff"] <= 1e-3
    assert (out / "aware_config.yaml").read_text() == (run / "config.yaml").read_text()


def test_adapter_only_ships_a_base_the_tiny_model_has_no_hub_id(lora_run, tmp_path):
    from peft import AutoPeftModelForCausalLM

    out = tmp_path / "adapter"
    result = aware("export", lora_run, out, "--adapter-only")
    assert result.exit_code == 0, result.output
    assert printed_diff(result.output) <= 1e-3
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str((out / "base").resolve())
    assert (out / "base" / "config.json").is_file() and (out / "adapter_model.safetensors").is_file()
    model = AutoPeftModelForCausalLM.from_pretrained(out)  # resolves the base by itself
    expected, tokenizer = run_logits(lora_run)
    assert (probe_logits(model, tokenizer) - expected).abs().max() <= 1e-5
    assert "library_name: peft" in (out / "README.md").read_text()


@pytest.mark.slow
def test_adapter_only_of_the_embedded_model_names_its_hub_id(tmp_path):
    """A run on embedded:smollm2-135m-instruct: the adapter's base is HuggingFaceTB/SmolLM2-135M-Instruct."""
    import yaml

    from aware_cli.config import compose
    from aware_cli.models import load_model, save_model

    run = tmp_path / "run"
    composed = compose("alpaca", [f"output_dir={run}", "model.device=cpu", "model.dtype=float32"])
    model, tokenizer = load_model(composed.config.model)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.01)
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump(composed.resolved, sort_keys=False))
    save_model(model, tokenizer, run / "final", base_model_path="/somewhere/in/the/cache")
    out = tmp_path / "out"
    result = aware("export", run, out, "--adapter-only")
    assert result.exit_code == 0, result.output
    assert printed_diff(result.output) <= 1e-3
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert not (out / "base").exists()
    card = (out / "README.md").read_text()
    assert "base_model: HuggingFaceTB/SmolLM2-135M-Instruct" in card and "dequantised" in card


def test_full_weight_run_exports_and_has_no_adapter(full_run, tmp_path):
    out = tmp_path / "full"
    result = aware("export", full_run, out)
    assert result.exit_code == 0, result.output
    assert printed_diff(result.output) <= 1e-3
    model = AutoModelForCausalLM.from_pretrained(out)
    expected, tokenizer = run_logits(full_run)
    assert (probe_logits(model, tokenizer) - expected).abs().max() <= 1e-3
    refused = aware("export", full_run, tmp_path / "adapter", "--adapter-only")
    assert refused.exit_code == 2
    assert "holds full weights" in refused.output and len(refused.output.strip().splitlines()) == 1
    assert not (tmp_path / "adapter").exists()


@pytest.mark.parametrize("case", ["missing", "not_empty", "the_run_itself", "bad_dtype"])
def test_bad_input_is_one_line_and_writes_nothing(case, lora_run, tmp_path):
    out = tmp_path / "out"
    args = [lora_run, out]
    if case == "missing":
        args = [tmp_path / "nope", out]
    elif case == "not_empty":
        out.mkdir()
        (out / "keep.txt").write_text("mine")
    elif case == "the_run_itself":
        args = [lora_run, lora_run, "--force"]
    else:
        args += ["--dtype", "int8"]
    result = aware("export", *args)
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error:") and len(result.output.strip().splitlines()) == 1
    assert (lora_run / "final").is_dir()  # never touched
    if case == "not_empty":
        assert [p.name for p in out.iterdir()] == ["keep.txt"]
    else:
        assert not out.exists()


def test_failed_check_leaves_nothing(lora_run, tmp_path, monkeypatch):
    from aware_cli.models import export

    monkeypatch.setattr(export, "_max_diff", lambda a, b: 0.5)
    out = tmp_path / "out"
    result = aware("export", lora_run, out)
    assert result.exit_code == 3
    assert "export check failed" in result.output and "0.5 > 0.001" in result.output
    assert not out.exists() and not list(tmp_path.glob(".tmp-*"))


class FakeHfApi:
    """Stands in for huggingface_hub.HfApi: records what the export asks of the hub."""

    calls = []

    def __init__(self, token=None):
        FakeHfApi.calls.append(("init", token))

    def create_repo(self, repo_id, repo_type=None, private=None, exist_ok=False):
        FakeHfApi.calls.append(("create_repo", repo_id, repo_type, private, exist_ok))

    def upload_folder(self, folder_path, repo_id, repo_type=None, commit_message=None):
        from pathlib import Path

        files = sorted(p.name for p in Path(folder_path).iterdir())
        FakeHfApi.calls.append(("upload_folder", folder_path, repo_id, files))
        return "https://hub.example/me/model/commit/abc"


def test_push_to_hub_takes_the_token_from_the_environment(lora_run, tmp_path, monkeypatch):
    import huggingface_hub

    FakeHfApi.calls = []
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHfApi)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_TOKEN", "hf_sekrit_token_123")
    out = tmp_path / "out"
    result = aware("export", lora_run, out, "--push-to-hub", "me/model", "--private")
    assert result.exit_code == 0, result.output
    assert FakeHfApi.calls[0] == ("init", "hf_sekrit_token_123")
    assert FakeHfApi.calls[1] == ("create_repo", "me/model", "model", True, True)
    kind, folder, repo, files = FakeHfApi.calls[2]
    assert (kind, folder, repo) == ("upload_folder", str(out.resolve()), "me/model")
    assert {"README.md", "config.json", "model.safetensors"} <= set(files)
    assert "pushed to me/model" in result.output
    assert "hf_sekrit_token_123" not in result.output
    assert not any(b"hf_sekrit_token_123" in p.read_bytes() for p in out.rglob("*") if p.is_file())


@pytest.mark.parametrize("env, message", [({}, "set HF_TOKEN"), ({"HF_HUB_OFFLINE": "1", "HF_TOKEN": "x"}, "offline")])
def test_push_to_hub_preconditions_fail_before_any_work(env, message, lora_run, tmp_path, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    out = tmp_path / "out"
    result = aware("export", lora_run, out, "--push-to-hub", "me/model")
    assert result.exit_code == 2 and message in result.output
    assert not out.exists()


def test_push_failure_is_one_line_without_the_token(lora_run, tmp_path, monkeypatch):
    import huggingface_hub

    class Refusing(FakeHfApi):
        def create_repo(self, *args, **kwargs):
            raise RuntimeError("401 Client Error: Unauthorized (token hf_sekrit_token_123 is invalid)")

    monkeypatch.setattr(huggingface_hub, "HfApi", Refusing)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_TOKEN", "hf_sekrit_token_123")
    result = aware("export", lora_run, tmp_path / "out", "--push-to-hub", "me/model")
    assert result.exit_code == 2
    last = result.output.strip().splitlines()[-1]  # the export itself went through; the upload is what failed
    assert last.startswith("error: --push-to-hub me/model:") and "401 Client Error" in last
    assert "hf_sekrit_token_123" not in result.output
