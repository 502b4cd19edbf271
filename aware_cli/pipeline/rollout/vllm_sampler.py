"""Optional sampling backend: vLLM (`sampling.engine=vllm`), for users who have it installed and a GPU.

vLLM keeps its own copy of the weights, loaded once from the policy's model directory, so the
policy's updates must reach it before the next sampling call:
- LoRA policy: the adapter is saved into a fresh directory and served as a new `LoRARequest`
  (vLLM caches adapters by their integer id, so changed weights need a new id); the current and
  the previous directories are kept, older ones are deleted;
- fully fine-tuned policy: the state dict is copied into vLLM's model in place (`load_weights`),
  where this vLLM version exposes that model in this process, and its prefix cache is reset
  (cached prompt KV was computed with the old weights).
Whether the weights changed is read from the trainable parameters' version counters (optimizer
steps and state-dict loads bump them), so an unchanged policy is not re-sent.

Token lists come back exactly as `engine.generate_k` returns them: prompt-major [b*k + j], the EOS
included when a completion stopped on it. `vllm` is imported here only, on first use; the tests
drive this module with a fake `vllm` package (no vLLM install and no GPU where it was written).
"""

from __future__ import annotations

import shutil
import tempfile
import weakref
from pathlib import Path
from typing import Any, List, Optional, Sequence

import torch

from aware_cli.config.schema import VllmConfig

ATTRIBUTE = "_aware_vllm"  # where the sampler lives on the policy: one vLLM engine per run
# Where older vLLM versions (V0 engine, single GPU) keep the model inside the LLM object.
_MODEL_PATHS = ("llm_engine.model_executor.driver_worker.model_runner.model",
                "llm_engine.model_executor.driver_worker.worker.model_runner.model")


def sampler_for(model, cfg: VllmConfig, *, max_prompt_tokens: Optional[int] = None) -> "VllmSampler":
    """The policy's sampler, made on first use and kept on the model so the engine is built once."""
    sampler = getattr(model, ATTRIBUTE, None)
    if sampler is None:
        sampler = VllmSampler(cfg, max_prompt_tokens=max_prompt_tokens)
        setattr(model, ATTRIBUTE, sampler)
    return sampler


def _base(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _is_peft(model) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "get_base_model")


def _active_adapter(model) -> str:
    name = model.active_adapter
    return name[0] if isinstance(name, (list, tuple)) else name


def weights_version(model) -> int:
    """Changes whenever a trainable weight is written in place (each write bumps `_version`)."""
    return sum(p._version for p in model.parameters() if p.requires_grad)


def lora_rank_limit(r: int) -> int:
    """vLLM accepts only some `max_lora_rank` values (8, 16, 32, 64, …): the least power of two ≥ max(r, 8)."""
    limit = 8
    while limit < r:
        limit *= 2
    return limit


def _attribute(obj: Any, dotted: str) -> Any:
    for name in dotted.split("."):
        obj = getattr(obj, name, None)
        if obj is None:
            return None
    return obj


def _remove_dirs(dirs: List[Path]) -> None:
    for directory in dirs:
        shutil.rmtree(directory, ignore_errors=True)
    dirs.clear()


class VllmSampler:
    """One `vllm.LLM` for a policy, created lazily, with the policy's latest weights pushed before sampling."""

    def __init__(self, cfg: VllmConfig, *, max_prompt_tokens: Optional[int] = None) -> None:
        self.cfg = cfg
        self.max_prompt_tokens = max_prompt_tokens
        self.llm: Any = None
        self.lora_request: Any = None
        self.lora_id = 0
        self.synced_version: Optional[int] = None  # None: nothing sent yet (always send on first use)
        self.weight_pushes = 0
        self._dirs: List[Path] = []  # adapter directories, oldest first
        self._cleanup = weakref.finalize(self, _remove_dirs, self._dirs)

    def close(self) -> None:
        """Delete the adapter directories (the engine itself goes with the last reference to it)."""
        self._cleanup()

    # ------------------------------------------------------------------ sampling

    def generate(self, model, prompts: Sequence[List[int]], k: int, *, max_new_tokens: int, eos_ids: Sequence[int],
                 temperature: float = 1.0, top_p: float = 1.0, seed: Optional[int] = None,
                 ignore_eos: bool = False) -> List[List[int]]:
        """k completions per prompt, prompt-major [b*k + j], each ending with its EOS when it stopped on one."""
        import vllm

        llm = self._engine(model, max_new_tokens)
        lora = self._sync(model, llm)
        params = vllm.SamplingParams(n=k, temperature=temperature, top_p=top_p, max_tokens=max_new_tokens,
                                     seed=seed, stop_token_ids=list(eos_ids), ignore_eos=ignore_eos)
        requests = llm.generate([{"prompt_token_ids": list(ids)} for ids in prompts], params,
                                lora_request=lora, use_tqdm=False)
        if len(requests) != len(prompts):
            raise RuntimeError(f"vLLM returned {len(requests)} results for {len(prompts)} prompts")
        flat: List[List[int]] = []
        for request in requests:
            completions = sorted(request.outputs, key=lambda c: getattr(c, "index", 0))
            if len(completions) != k:
                raise RuntimeError(f"vLLM returned {len(completions)} completions for a prompt, expected {k}")
            flat.extend(completion_tokens(c, eos_ids) for c in completions)
        return flat

    def _engine(self, model, max_new_tokens: int):
        """The `vllm.LLM`, built on first use from the directory the policy's base weights came from."""
        if self.llm is not None:
            return self.llm
        import vllm

        source = getattr(_base(model).config, "_name_or_path", "") or ""
        if not source:
            raise RuntimeError("sampling.engine=vllm: the policy has no model directory to give vLLM "
                               "(config._name_or_path is empty); use sampling.engine=aware")
        kwargs = dict(model=source, gpu_memory_utilization=self.cfg.gpu_memory_utilization,
                      enforce_eager=self.cfg.enforce_eager, dtype=self.cfg.dtype)
        max_model_len = self.cfg.max_model_len
        if max_model_len is None and self.max_prompt_tokens is not None:
            max_model_len = self.max_prompt_tokens + max_new_tokens
        if max_model_len is not None:
            kwargs["max_model_len"] = max_model_len
        if _is_peft(model):
            rank = model.peft_config[_active_adapter(model)].r
            kwargs.update(enable_lora=True, max_lora_rank=lora_rank_limit(rank))
        self.llm = vllm.LLM(**kwargs)
        return self.llm

    # ------------------------------------------------------------------ weights

    def _sync(self, model, llm):
        """Send the policy's weights to vLLM if they changed since the last call; the LoRARequest to use."""
        version = weights_version(model)
        if version == self.synced_version:
            return self.lora_request
        if _is_peft(model):
            self._push_adapter(model)
        else:
            self._push_weights(model, llm)
        self.synced_version = version
        return self.lora_request

    def _push_adapter(self, model) -> None:
        from vllm.lora.request import LoRARequest

        directory = Path(tempfile.mkdtemp(prefix="aware-vllm-lora-"))
        self._dirs.append(directory)
        name = _active_adapter(model)
        model.save_pretrained(str(directory), selected_adapters=[name])
        path = directory if name == "default" else directory / name  # peft saves other names in a subfolder
        self.lora_id += 1
        self.lora_request = LoRARequest(f"aware-policy-{self.lora_id}", self.lora_id, str(path))
        while len(self._dirs) > 2:  # vLLM may still read the previous adapter; nothing older
            shutil.rmtree(self._dirs.pop(0), ignore_errors=True)

    def _push_weights(self, model, llm) -> None:
        target = next((m for m in (_attribute(llm, p) for p in _MODEL_PATHS) if hasattr(m, "load_weights")), None)
        if target is None:
            import vllm

            raise RuntimeError(f"sampling.engine=vllm: vLLM {getattr(vllm, '__version__', '(unknown version)')} "
                               f"does not expose its model in this process, so fully fine-tuned weights cannot be "
                               f"sent to it; use model.finetune=lora or sampling.engine=aware")
        with torch.no_grad():
            target.load_weights(weights=((name, t.detach()) for name, t in _base(model).state_dict().items()))
        reset = getattr(llm, "reset_prefix_cache", None)
        if callable(reset):
            reset()
        self.weight_pushes += 1


def completion_tokens(completion, eos_ids: Sequence[int]) -> List[int]:
    """A CompletionOutput's tokens, with the EOS it stopped on at the end (as the aware engine returns them).

    vLLM versions differ in whether `token_ids` holds the stop token; it is appended only when
    missing: `stop_reason` names it for `stop_token_ids`, else it was the model's own EOS.
    """
    tokens = list(completion.token_ids)
    if getattr(completion, "finish_reason", None) != "stop" or not eos_ids:
        return tokens
    if tokens and tokens[-1] in eos_ids:
        return tokens
    reason = getattr(completion, "stop_reason", None)
    stop = reason if isinstance(reason, int) and not isinstance(reason, bool) else eos_ids[0]
    return tokens + [stop]
