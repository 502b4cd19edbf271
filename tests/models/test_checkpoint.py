"""Checkpoints: LoRA and full saves reload with plain transformers/peft and with load_trainable_state."""

import dataclasses
import json

import peft
import pytest
import torch
from transformers import AutoModelForCausalLM

from aware_cli.config.schema import ModelConfig, TinyModelConfig
from aware_cli.errors import ModelError
from aware_cli.models import base_model_path, load_model, load_trainable_state, save_model

tiny = ModelConfig(name_or_path="tiny")
tiny_full = dataclasses.replace(tiny, finetune="full")


def logits(model, tokenizer) -> torch.Tensor:
    batch = tokenizer(["The quick brown fox", "Hi"], return_tensors="pt", padding=True)
    model.eval()
    with torch.no_grad():
        return model(**batch).logits


def trained_lora(seed: int = 7):
    """A tiny LoRA model whose adapter changes the output (LoRA's B starts at zero)."""
    model, tokenizer = load_model(tiny)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
    return model, tokenizer


@pytest.mark.filterwarnings("ignore:Could not find a config file")  # the base path is made up
def test_lora_checkpoint_reloads_with_plain_peft(tmp_path):
    model, tokenizer = trained_lora()
    save_model(model, tokenizer, tmp_path, base_model_path="/models/base")
    assert {"adapter_model.safetensors", "adapter_config.json", "tokenizer.json"} <= {p.name for p in tmp_path.iterdir()}
    assert not list(tmp_path.glob("*.bin"))
    assert json.loads((tmp_path / "adapter_config.json").read_text())["base_model_name_or_path"] == "/models/base"

    base, _ = load_model(tiny, for_training=False)  # same seed: the same base weights
    base_logits = logits(base, tokenizer)
    reloaded = peft.PeftModel.from_pretrained(base, tmp_path)
    expected = logits(model, tokenizer)
    assert not torch.allclose(expected, base_logits, atol=1e-4)  # the adapter matters...
    torch.testing.assert_close(logits(reloaded, tokenizer), expected)  # ...and came back


def test_full_checkpoint_reloads_with_plain_transformers(tmp_path):
    model, tokenizer = load_model(tiny_full)
    save_model(model, tokenizer, tmp_path)
    assert (tmp_path / "model.safetensors").is_file() and (tmp_path / "config.json").is_file()
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    torch.testing.assert_close(logits(reloaded, tokenizer), logits(model, tokenizer))


def test_lora_state_round_trip(tmp_path):
    trained, tokenizer = trained_lora()
    save_model(trained, tokenizer, tmp_path)
    fresh, _ = load_model(tiny)
    assert not torch.allclose(logits(fresh, tokenizer), logits(trained, tokenizer), atol=1e-4)
    load_trainable_state(fresh, tmp_path)
    torch.testing.assert_close(logits(fresh, tokenizer), logits(trained, tokenizer))


def test_full_state_round_trip(tmp_path):
    trained, tokenizer = load_model(dataclasses.replace(tiny_full, tiny=TinyModelConfig(seed=5)))
    save_model(trained, tokenizer, tmp_path)
    fresh, _ = load_model(tiny_full)
    load_trainable_state(fresh, tmp_path)
    torch.testing.assert_close(logits(fresh, tokenizer), logits(trained, tokenizer))
    assert fresh.lm_head.weight is fresh.model.embed_tokens.weight  # still tied


def test_loading_a_mismatched_checkpoint_fails(tmp_path):
    model, tokenizer = load_model(tiny_full)
    with pytest.raises(ModelError, match="checkpoint weights not found"):
        load_trainable_state(model, tmp_path)
    bigger, _ = load_model(dataclasses.replace(tiny_full, tiny=TinyModelConfig(num_hidden_layers=3)))
    save_model(bigger, tokenizer, tmp_path)
    with pytest.raises(ModelError, match=r"unexpected weight model\.layers\.2\."):
        load_trainable_state(model, tmp_path)


def test_base_model_path(tmp_path):
    assert base_model_path(tiny) is None
    assert base_model_path(ModelConfig(name_or_path="org/model")) == "org/model"
    assert base_model_path(ModelConfig(name_or_path=str(tmp_path))) == str(tmp_path.resolve())
    assert base_model_path(ModelConfig(name_or_path=str(tmp_path), gguf_file="m.gguf")) == \
        str(tmp_path.resolve() / "m.gguf")
