"""sampling.engine=vllm against a fake `vllm` package: layout, EOS, weight pushes, and the config errors.

vLLM is not installed here (no GPU): the fake records what aware asks of it and answers with a fixed
token pattern shaped like vLLM's RequestOutput / CompletionOutput.
"""

import importlib.util
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from aware_cli.cli import app
from aware_cli.config import compose
from aware_cli.config.schema import SamplingConfig, VllmConfig
from aware_cli.errors import ConfigError
from aware_cli.models import load_model
from aware_cli.pipeline.rollout.sample import eos_token_ids, sample
from aware_cli.pipeline.rollout.vllm_sampler import ATTRIBUTE, VllmSampler, completion_tokens, lora_rank_limit

CPU = torch.device("cpu")
PROMPTS = [[1, 2, 3, 4, 5, 6], [7, 8, 9], [10, 11, 12, 13]]
MODEL_DIR = "/models/policy-base"  # what the fake LLM is told to load (the tiny model has no directory)


# ----------------------------------------------------------------------------- the fake vllm package


@dataclass
class CompletionOutput:
    index: int
    token_ids: List[int]
    finish_reason: str
    stop_reason: Any = None


@dataclass
class RequestOutput:
    prompt_token_ids: List[int]
    outputs: List[CompletionOutput]


@dataclass
class SamplingParams:
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 16
    seed: Optional[int] = None
    stop_token_ids: List[int] = field(default_factory=list)
    ignore_eos: bool = False


@dataclass
class LoRARequest:
    lora_name: str
    lora_int_id: int
    lora_path: str


def pattern(prompt: List[int], j: int, params: SamplingParams) -> CompletionOutput:
    """Completion j of a prompt, counting up from 100 × the prompt's last id: j=0 stops on EOS after 2 tokens
    with the stop token left out of token_ids, j=1 after 3 with it kept (vLLM versions differ), others
    (and all with ignore_eos) run to max_tokens."""
    stops = j < 2 and params.stop_token_ids and not params.ignore_eos
    length = min(2 + j, params.max_tokens) if stops else params.max_tokens
    tokens = [prompt[-1] * 100 + 10 * j + t for t in range(length)]
    if stops:
        stop = params.stop_token_ids[0]
        return CompletionOutput(j, tokens + ([stop] if j == 1 else []), "stop", stop)
    return CompletionOutput(j, tokens, "length", None)


class FakeRunnerModel:
    def __init__(self) -> None:
        self.loads: List[dict] = []

    def load_weights(self, weights):
        self.loads.append({name: t.clone() for name, t in weights})


class FakeLLM:
    instances: List["FakeLLM"] = []
    expose_model = True  # False: a vLLM that keeps the model in another process

    def __init__(self, **kwargs) -> None:
        self.kwargs = kwargs
        self.calls: List[dict] = []
        self.prefix_resets = 0
        self.runner_model = FakeRunnerModel()
        if self.expose_model:
            runner = types.SimpleNamespace(model=self.runner_model)
            worker = types.SimpleNamespace(model_runner=runner)
            self.llm_engine = types.SimpleNamespace(model_executor=types.SimpleNamespace(driver_worker=worker))
        FakeLLM.instances.append(self)

    def reset_prefix_cache(self) -> None:
        self.prefix_resets += 1

    def generate(self, prompts, params, lora_request=None, use_tqdm=True):
        self.calls.append(dict(prompts=prompts, params=params, lora_request=lora_request, use_tqdm=use_tqdm))
        out = []
        for prompt in prompts:
            ids = prompt["prompt_token_ids"]
            completions = [pattern(ids, j, params) for j in range(params.n)]
            out.append(RequestOutput(ids, completions[::-1]))  # out of order: the sampler sorts by index
        return out


@pytest.fixture
def fake_vllm(monkeypatch):
    """Install `vllm`, `vllm.lora`, `vllm.lora.request` as fakes for one test."""
    vllm = types.ModuleType("vllm")
    vllm.__version__ = "0.0.fake"
    vllm.LLM, vllm.SamplingParams = FakeLLM, SamplingParams
    lora = types.ModuleType("vllm.lora")
    request = types.ModuleType("vllm.lora.request")
    request.LoRARequest = LoRARequest
    vllm.lora, lora.request = lora, request
    for name, module in (("vllm", vllm), ("vllm.lora", lora), ("vllm.lora.request", request)):
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr(FakeLLM, "instances", [])
    return vllm


def tiny(finetune: str):
    cfg = compose("smoke", ["model.device=cpu", f"model.finetune={finetune}"]).config.model
    model, tokenizer = load_model(cfg, for_training=True)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    base.config._name_or_path = MODEL_DIR
    return model, tokenizer


def optimizer_step(model) -> None:
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2)
    ids = torch.tensor([PROMPTS[0]])
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    opt.zero_grad()


# ----------------------------------------------------------------------------- sampling


def test_layout_is_prompt_major_and_eos_is_appended_once(fake_vllm):
    model, tok = tiny("lora")
    eos = eos_token_ids(model, tok)
    sampler = VllmSampler(VllmConfig(), max_prompt_tokens=64)
    k, max_new = 3, 5
    flat = sampler.generate(model, PROMPTS, k, max_new_tokens=max_new, eos_ids=eos, temperature=0.7, top_p=0.9,
                            seed=11)
    assert len(flat) == len(PROMPTS) * k
    for b, prompt in enumerate(PROMPTS):
        start = prompt[-1] * 100
        assert flat[b * k + 0] == [start, start + 1, eos[0]]  # stopped, stop token left out: re-appended
        assert flat[b * k + 1] == [start + 10, start + 11, start + 12, eos[0]]  # stopped, token kept: not doubled
        assert flat[b * k + 2] == [start + 20 + t for t in range(max_new)]  # ran to max_tokens: as it came
    (call,) = FakeLLM.instances[0].calls
    assert call["prompts"] == [{"prompt_token_ids": p} for p in PROMPTS] and call["use_tqdm"] is False
    assert call["params"] == SamplingParams(n=k, temperature=0.7, top_p=0.9, max_tokens=max_new, seed=11,
                                            stop_token_ids=eos, ignore_eos=False)


def test_completion_tokens_keeps_length_stops_and_uses_stop_reason():
    out = CompletionOutput(0, [5, 6], "length", None)
    assert completion_tokens(out, [2]) == [5, 6]
    assert completion_tokens(CompletionOutput(0, [5, 6], "stop", 3), [2, 3]) == [5, 6, 3]
    assert completion_tokens(CompletionOutput(0, [5, 6], "stop", None), [2, 3]) == [5, 6, 2]  # the model's EOS
    assert completion_tokens(CompletionOutput(0, [5, 2], "stop", 2), [2]) == [5, 2]
    assert completion_tokens(CompletionOutput(0, [5, 6], "stop", None), []) == [5, 6]  # ignore_eos


def test_sample_stage_uses_one_engine_per_policy(fake_vllm):
    model, tok = tiny("lora")
    cfg = SamplingConfig(engine="vllm", max_new_tokens=4, temperature=0.8,
                         vllm=VllmConfig(gpu_memory_utilization=0.5, enforce_eager=True, dtype="bfloat16"))
    first = sample(model, tok, PROMPTS, 2, cfg, seed=3, device=CPU, max_prompt_tokens=64)
    second = sample(model, tok, PROMPTS[:2], 2, cfg, seed=4, device=CPU, max_prompt_tokens=64)
    assert len(FakeLLM.instances) == 1 and isinstance(getattr(model, ATTRIBUTE), VllmSampler)
    assert FakeLLM.instances[0].kwargs == dict(model=MODEL_DIR, gpu_memory_utilization=0.5, enforce_eager=True,
                                               dtype="bfloat16", max_model_len=64 + 4, enable_lora=True,
                                               max_lora_rank=8)
    assert [len(g) for g in first.ids] == [2, 2, 2] and len(second.ids) == 2
    assert first.ids[1][0][0] == PROMPTS[1][-1] * 100  # group b holds prompt b's completions
    assert first.num_tokens == sum(len(t) for g in first.ids for t in g)
    assert first.texts[0][0] == tok.decode(first.ids[0][0], skip_special_tokens=True).strip()
    ignore = sample(model, tok, PROMPTS, 1, SamplingConfig(engine="vllm", max_new_tokens=4, ignore_eos=True),
                    seed=5, device=CPU)
    params = FakeLLM.instances[0].calls[-1]["params"]
    assert params.ignore_eos and params.stop_token_ids == [] and all(len(g[0]) == 4 for g in ignore.ids)


# ----------------------------------------------------------------------------- weights reaching vLLM


def test_lora_adapter_is_resent_only_after_the_weights_change(fake_vllm):
    model, _ = tiny("lora")
    sampler = VllmSampler(VllmConfig())
    args = dict(max_new_tokens=3, eos_ids=[2])
    sampler.generate(model, PROMPTS, 2, **args)
    sampler.generate(model, PROMPTS, 2, **args)
    llm = FakeLLM.instances[0]
    assert llm.kwargs["enable_lora"] is True and llm.kwargs["max_lora_rank"] == 8 and "max_model_len" not in llm.kwargs
    first, again = (c["lora_request"] for c in llm.calls)
    assert first.lora_int_id == 1 and again is first  # unchanged weights: the same adapter, nothing saved
    first_dir = Path(first.lora_path)
    assert (first_dir / "adapter_config.json").is_file()
    saved = load_file(str(first_dir / "adapter_model.safetensors"))
    assert all(not t.any() for name, t in saved.items() if "lora_B" in name)  # fresh adapter: B = 0

    optimizer_step(model)
    sampler.generate(model, PROMPTS, 2, **args)
    second = llm.calls[-1]["lora_request"]
    assert second.lora_int_id == 2 and second.lora_path != first.lora_path
    updated = load_file(str(Path(second.lora_path) / "adapter_model.safetensors"))
    assert any(t.any() for name, t in updated.items() if "lora_B" in name)  # the step's update reached vLLM
    assert first_dir.is_dir()  # the previous adapter is kept

    optimizer_step(model)
    sampler.generate(model, PROMPTS, 2, **args)
    third = llm.calls[-1]["lora_request"]
    assert third.lora_int_id == 3 and not first_dir.exists() and Path(second.lora_path).is_dir()
    assert len(FakeLLM.instances) == 1  # one engine for the run
    sampler.close()
    assert not Path(third.lora_path).exists() and not Path(second.lora_path).exists()


def test_lora_rank_limit_rounds_up_to_a_rank_vllm_accepts():
    assert [lora_rank_limit(r) for r in (1, 4, 8, 12, 16, 64, 100)] == [8, 8, 8, 16, 16, 64, 128]


def test_full_finetuning_loads_weights_in_place_after_each_change(fake_vllm):
    model, _ = tiny("full")
    sampler = VllmSampler(VllmConfig())
    sampler.generate(model, PROMPTS, 1, max_new_tokens=2, eos_ids=[2])
    sampler.generate(model, PROMPTS, 1, max_new_tokens=2, eos_ids=[2])
    llm = FakeLLM.instances[0]
    assert "enable_lora" not in llm.kwargs and llm.calls[0]["lora_request"] is None
    assert len(llm.runner_model.loads) == 1 and llm.prefix_resets == 1
    assert set(llm.runner_model.loads[0]) == set(model.state_dict())
    optimizer_step(model)
    sampler.generate(model, PROMPTS, 1, max_new_tokens=2, eos_ids=[2])
    assert len(llm.runner_model.loads) == 2 and llm.prefix_resets == 2
    name = "model.layers.0.self_attn.q_proj.weight"
    assert torch.equal(llm.runner_model.loads[1][name], model.state_dict()[name])
    assert not torch.equal(llm.runner_model.loads[0][name], llm.runner_model.loads[1][name])


def test_full_finetuning_without_an_in_process_model_is_a_clear_error(fake_vllm, monkeypatch):
    monkeypatch.setattr(FakeLLM, "expose_model", False)
    model, _ = tiny("full")
    with pytest.raises(RuntimeError, match=r"vLLM 0\.0\.fake .*model\.finetune=lora or sampling\.engine=aware"):
        VllmSampler(VllmConfig()).generate(model, PROMPTS, 1, max_new_tokens=2, eos_ids=[2])


# ----------------------------------------------------------------------------- config


def one_line_error(overrides) -> str:
    with pytest.raises(ConfigError) as err:
        compose("smoke", overrides)
    message = str(err.value)
    assert "\n" not in message
    return message


def test_vllm_engine_rejects_the_tiny_model(fake_vllm):
    assert "model.name_or_path=tiny" in one_line_error(["sampling.engine=vllm"])


def test_vllm_engine_without_vllm_is_a_one_line_config_error(monkeypatch):
    monkeypatch.delitem(sys.modules, "vllm", raising=False)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real(name, *a))
    message = one_line_error(["sampling.engine=vllm", "model=smollm2"])
    assert message == "sampling.engine=vllm needs vLLM: pip install vllm (GPU only)"
    result = CliRunner().invoke(app, ["validate", "recipe=smoke", "sampling.engine=vllm", "model=smollm2"])
    assert result.exit_code == 2 and result.stderr.strip().splitlines()[-1].endswith(message)


def test_vllm_config_block_defaults_and_checks(fake_vllm):
    cfg = compose("smoke", ["sampling.engine=vllm", "model=smollm2"]).config.sampling
    assert cfg.engine == "vllm" and cfg.vllm == VllmConfig(gpu_memory_utilization=0.3, max_model_len=None,
                                                           enforce_eager=False, dtype="auto")
    assert "sampling.vllm.gpu_memory_utilization" in one_line_error(["sampling.vllm.gpu_memory_utilization=0"])
    assert "sampling.vllm.dtype" in one_line_error(["sampling.vllm.dtype=int8"])
    short = one_line_error(["sampling.engine=vllm", "model=smollm2", "sampling.vllm.max_model_len=32"])
    assert "sampling.vllm.max_model_len (32)" in short
    assert "trainer.nproc=1" in one_line_error(["sampling.engine=vllm", "model=smollm2", "trainer.nproc=2"])
    assert "GGUF" in one_line_error(["sampling.engine=vllm", "model.name_or_path=/x/model.gguf"])
