"""Load the model and tokenizer named by `ModelConfig`, ready for training or generation.

`model.name_or_path` may be `embedded:<name>`, `tiny`, a `.gguf` file, a local model
directory, a Hugging Face Hub id, or a run directory / checkpoint of `aware train` (continue from a
trained model: `lineage.py`); see `load_model`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

import torch

from ..config.schema import ModelConfig
from ..errors import ModelError
from .allocator import tune_cpu_allocator
from .embedded import embedded_model_dir, embedded_tokenizer_dir, load_gguf
from .lineage import TrainedSource

EMBEDDED_PREFIX = "embedded:"
TINY = "tiny"

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_DEVICE_TYPES = ("cpu", "cuda", "mps")


def resolve_device(name: str) -> torch.device:
    """`auto` is cuda when available, else cpu; otherwise cpu, cuda, cuda:N (or mps). Work on the CPU gets
    the allocator settings of `allocator.tune_cpu_allocator` (once per process)."""
    device = _resolve_device(name)
    if device.type == "cpu":
        tune_cpu_allocator()
    return device


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        device = None
    if device is None or device.type not in _DEVICE_TYPES:
        raise ModelError(f"model.device: unknown device {name!r} (use auto, cpu, cuda or cuda:N)")
    if device.type == "cuda" and not _cuda_index_available(device.index):
        raise ModelError(f"model.device: {name} requested but this machine has "
                         f"{torch.cuda.device_count()} CUDA device(s)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ModelError("model.device: mps requested but it is not available")
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """`auto` is bfloat16 on cuda (float16 where bf16 is unsupported) and float32 elsewhere."""
    if name == "auto":
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if name not in _DTYPES:
        raise ModelError(f"model.dtype: unknown dtype {name!r} (use auto, {', '.join(_DTYPES)})")
    return _DTYPES[name]


def load_tokenizer(cfg: ModelConfig):
    """The tokenizer of `cfg` (or `cfg.tokenizer`), padding on the left, with a pad token."""
    from .lineage import find_trained

    trained = None if cfg.tokenizer else find_trained(cfg.name_or_path)
    if cfg.tokenizer:
        where = _locate(cfg.tokenizer, None, key="model.tokenizer", need_weights=False)
    elif trained is not None:  # a run or checkpoint: the tokenizer saved with its weights
        where = _Location(str(trained.weights), "model.name_or_path")
    else:
        where = _locate(cfg.name_or_path, cfg.gguf_file, key="model.name_or_path", need_weights=False)
    return _load_tokenizer(where, cfg)


def load_model(cfg: ModelConfig, *, device: Optional[torch.device] = None, dtype: Optional[torch.dtype] = None,
               for_training: bool = True):
    """(model, tokenizer) for `cfg`, on `device` in `dtype` (default: from cfg.device / cfg.dtype).

    With `for_training`, the model is in train mode (callers switch to eval to sample) and
    wrapped in a LoRA adapter when `cfg.finetune == "lora"`; without it, it is in eval mode
    with every weight frozen (for a reference model or generation only).
    """
    device = resolve_device(cfg.device) if device is None else device
    dtype = resolve_dtype(cfg.dtype, device) if dtype is None else dtype
    model, tokenizer = _load_base(cfg, dtype)
    _set_generation_ids(model, tokenizer)
    contiguous_head_input(model)
    model.to(device=device, dtype=dtype)
    if not for_training:
        model.eval().requires_grad_(False)
        return model, tokenizer
    if cfg.gradient_checkpointing:
        # Non-reentrant checkpointing also works when the frozen embeddings emit no grad (LoRA).
        # The KV cache stays on: transformers skips it in training forwards, generation needs it.
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.finetune == "lora":
        parent = _continued_adapter(cfg)
        model = _apply_lora(model, cfg) if parent is None else _resume_lora(model, parent.weights)
    model.train()
    return model, tokenizer


def contiguous_head_input(model: torch.nn.Module) -> None:
    """Hand the LM head a contiguous input.

    `logits_to_keep` slices the last positions out of the hidden states as a strided view; for a
    non-contiguous 3-D input torch.matmul copies the head's weight once per sequence into a batched product
    ([rows, hidden, vocabulary]: ~1.8 GB at 16 sequences and 49k tokens) instead of one matrix product. A
    contiguous copy of the few kept positions is cheap: measured 22% less CPU time in a 16-sequence update.
    """
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if isinstance(head, torch.nn.Module) and not getattr(head, "_aware_contiguous", False):
        head.register_forward_pre_hook(_contiguous_first_input)
        head._aware_contiguous = True


def _contiguous_first_input(module, args):
    if args and isinstance(args[0], torch.Tensor) and not args[0].is_contiguous():
        return (args[0].contiguous(), *args[1:])
    return None


def _continued_adapter(cfg: ModelConfig):
    from .lineage import continues_adapter

    return continues_adapter(cfg)


def trainable_parameters(model: torch.nn.Module) -> List[torch.nn.Parameter]:
    """The parameters the optimizer should update."""
    return [p for p in model.parameters() if p.requires_grad]


def count_parameters(model: torch.nn.Module) -> Tuple[int, int]:
    """(trainable, total) parameter counts; tied weights are counted once."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


# ----------------------------------------------------------------------------- where the model is


@dataclass(frozen=True)
class _Location:
    """Arguments for `from_pretrained`: a directory or Hub id, and a GGUF file inside it if any."""

    source: str
    key: str  # the config key that named it, for error messages
    gguf_file: Optional[str] = None
    local: bool = True


def _locate(name_or_path: str, gguf_file: Optional[str], *, key: str, need_weights: bool) -> _Location:
    """Resolve an embedded name, `tiny` (tokenizer only), .gguf file, directory or Hub id."""
    if name_or_path.startswith(EMBEDDED_PREFIX):
        name = name_or_path[len(EMBEDDED_PREFIX):]
        # The tokenizer-only export takes ~4 s the first time, the full model ~25 s.
        try:
            return _Location(str(embedded_model_dir(name) if need_weights else embedded_tokenizer_dir(name)), key)
        except ModelError as err:  # e.g. model.tokenizer=embedded:… names that key, not model.name_or_path
            raise ModelError(err.detail, key=key) from err
    if name_or_path == TINY:  # tiny's weights are built in code; it borrows the embedded tokenizer
        return _Location(str(embedded_tokenizer_dir()), key)
    path = Path(name_or_path).expanduser()
    if path.exists():
        return _locate_local(path.resolve(), gguf_file, key=key, need_weights=need_weights)
    if name_or_path.startswith(("/", ".", "~")) or name_or_path.endswith(".gguf"):
        raise ModelError(f"{key}: {name_or_path} does not exist")
    return _Location(name_or_path, key, gguf_file, local=False)


def _locate_local(path: Path, gguf_file: Optional[str], *, key: str, need_weights: bool) -> _Location:
    if path.is_file() and path.suffix == ".gguf":
        return _Location(str(path.parent), key, path.name)
    if path.is_dir() and gguf_file:
        if not (path / gguf_file).is_file():
            raise ModelError(f"model.gguf_file: {path / gguf_file} does not exist")
        return _Location(str(path), key, gguf_file)
    markers = ("config.json",) if need_weights else ("config.json", "tokenizer_config.json", "tokenizer.json")
    if path.is_dir() and any((path / marker).is_file() for marker in markers):
        return _Location(str(path), key)
    what = "model directory or GGUF file" if need_weights else "tokenizer directory or GGUF file"
    raise ModelError(f"{key}: {path} is not a {what}")


# ----------------------------------------------------------------------------- loading


def _load_base(cfg: ModelConfig, dtype: torch.dtype):
    """(model, tokenizer) before device placement, LoRA and the training switches."""
    from transformers import AutoModelForCausalLM

    from .lineage import base_config, find_trained

    if cfg.name_or_path == TINY:
        tokenizer = load_tokenizer(cfg)
        return _build_tiny(cfg, tokenizer), tokenizer
    trained = find_trained(cfg.name_or_path)
    if trained is not None:  # continue from a run: its merged or full weights (from_run=adapter: its base)
        if trained.adapter and cfg.from_run == "adapter":
            model, tokenizer = _load_base(base_config(trained, cfg), dtype)
        else:
            model, tokenizer = load_trained(trained, cfg, dtype)
        return model, (load_tokenizer(cfg) if cfg.tokenizer else tokenizer)
    where = _locate(cfg.name_or_path, cfg.gguf_file, key="model.name_or_path", need_weights=True)
    revision = None if where.local else cfg.revision
    gguf_tokenizer = None
    if where.gguf_file:
        model, gguf_tokenizer = _from_pretrained(load_gguf, where, gguf_file=where.gguf_file, revision=revision,
                                                 trust_remote_code=cfg.trust_remote_code)
    else:
        model = _from_pretrained(AutoModelForCausalLM.from_pretrained, where, revision=revision, dtype=dtype,
                                 trust_remote_code=cfg.trust_remote_code)
    if cfg.tokenizer:
        return model, load_tokenizer(cfg)
    if gguf_tokenizer is not None:
        return model, _prepare_tokenizer(gguf_tokenizer)
    return model, _load_tokenizer(where, cfg)


def _load_tokenizer(where: _Location, cfg: ModelConfig):
    from transformers import AutoTokenizer

    tokenizer = _from_pretrained(AutoTokenizer.from_pretrained, where, gguf_file=where.gguf_file,
                                 revision=None if where.local else cfg.revision,
                                 trust_remote_code=cfg.trust_remote_code)
    return _prepare_tokenizer(tokenizer)


def _prepare_tokenizer(tokenizer):
    """Pad with EOS when there is no pad token; pad on the left so generation continues the prompt."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def _from_pretrained(load, where: _Location, **kwargs):
    """`load(where.source, **kwargs)`, turning the many ways a load fails into one ModelError line."""
    try:
        return load(where.source, **kwargs)
    except ModelError:
        raise
    except (OSError, ValueError, KeyError) as exc:
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        what = where.source if where.local else f"{where.source!r} from the Hugging Face Hub"
        raise ModelError(f"{where.key}: cannot load {what}: {first_line}") from exc


def _build_tiny(cfg: ModelConfig, tokenizer):
    """A random-init Llama of shape `cfg.tiny`, seeded without touching torch's global RNG."""
    from transformers import LlamaConfig, LlamaForCausalLM

    shape = cfg.tiny
    if shape.hidden_size % shape.num_attention_heads:
        raise ModelError(f"model.tiny.num_attention_heads: {shape.num_attention_heads} does not divide "
                         f"hidden_size {shape.hidden_size}")
    if shape.num_attention_heads % shape.num_key_value_heads:
        raise ModelError(f"model.tiny.num_key_value_heads: {shape.num_key_value_heads} does not divide "
                         f"num_attention_heads {shape.num_attention_heads}")
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=shape.hidden_size, num_hidden_layers=shape.num_hidden_layers,
        num_attention_heads=shape.num_attention_heads, num_key_value_heads=shape.num_key_value_heads,
        intermediate_size=shape.intermediate_size, max_position_embeddings=shape.max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True)
    # The model is built on the CPU, so forking and seeding only the CPU generator suffices.
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(shape.seed)
        return LlamaForCausalLM(config)


def _set_generation_ids(model, tokenizer) -> None:
    """Stop generation at the tokenizer's EOS (as well as the model's own) and pad with its pad id."""
    generation = model.generation_config
    candidates = [tokenizer.eos_token_id, *_as_list(generation.eos_token_id)]
    eos_ids = list(dict.fromkeys(i for i in candidates if i is not None))  # unique, tokenizer's first
    generation.eos_token_id = eos_ids[0] if len(eos_ids) == 1 else eos_ids
    generation.pad_token_id = tokenizer.pad_token_id


def _as_list(ids) -> list:
    if ids is None:
        return []
    return list(ids) if isinstance(ids, (list, tuple)) else [ids]


def _apply_lora(model, cfg: ModelConfig):
    import peft

    lora = cfg.lora
    layers = None
    if lora.first_layer:
        n_layers = getattr(model.config, "num_hidden_layers", None)
        if n_layers is None or lora.first_layer >= n_layers:
            raise ModelError(f"model.lora.first_layer: {lora.first_layer} is not below the model's "
                             f"{n_layers if n_layers is not None else 'unknown number of'} decoder layers")
        layers = list(range(lora.first_layer, n_layers))
    adapter = peft.LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                              target_modules=list(lora.target_modules), layers_to_transform=layers,
                              task_type="CAUSAL_LM")
    try:
        return peft.get_peft_model(model, adapter)
    except ValueError as exc:
        first_line = (str(exc).strip().splitlines() or ["no module matched"])[0]
        raise ModelError(f"model.lora.target_modules: {first_line}") from exc


def _resume_lora(model, adapter_dir: Path):
    """`model.from_run=adapter`: the parent's LoRA adapter, trainable again (its rank and targets)."""
    from peft import PeftModel

    return PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=True)


def _cuda_index_available(index: Optional[int]) -> bool:
    return torch.cuda.is_available() and (index is None or index < torch.cuda.device_count())


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 matrices natively (AVX512-BF16 or AMX, oneDNN's own check); without
    it PyTorch emulates them and a bf16 decode takes 2–3× the time of an fp32 one (docs/performance.md)."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def sampling_dtype(name: str, device: torch.device, precision: str = "fp32", sharded: bool = False) -> str:
    """`sampling.dtype` for a model trained at `precision` on `device`: `auto` is bfloat16 where that is faster
    (a CPU with native bf16 matrix products, or CUDA under mixed precision) and the model's own precision elsewhere
    (FSDP2-sharded models always sample as they are). Under mixed precision `model` also means the bf16 copy."""
    if sharded:
        return "model" if name == "auto" else name
    if name == "auto":
        name = "bfloat16" if device.type == "cpu" and cpu_has_fast_bf16() else "model"
    if name == "model" and precision == "mixed":
        return "bfloat16"
    return name


def training_precision(precision: str, device: torch.device) -> str:
    """`trainer.precision` on `device`: auto → mixed on CUDA, fp32 elsewhere."""
    if precision == "auto":
        return "mixed" if device.type == "cuda" else "fp32"
    return precision


def weights_dtype(precision: str, model_dtype: str, device: torch.device) -> torch.dtype:
    """The dtype the trained weights are stored in: model.dtype when set, else from the precision."""
    if model_dtype != "auto":
        return resolve_dtype(model_dtype, device)
    if training_precision(precision, device) == "bf16":
        return torch.bfloat16 if device.type != "cuda" or torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def load_trained(source: TrainedSource, cfg: ModelConfig, dtype):
    """(model, tokenizer) of a trained source as one plain model: adapter merged (in float32) or full weights."""
    from transformers import AutoModelForCausalLM

    from .lineage import base_config

    where = _Location(str(source.weights), "model.name_or_path")
    tokenizer = _load_tokenizer(where, cfg)  # every checkpoint and final/ carries the tokenizer it trained with
    if not source.adapter:
        model = _from_pretrained(AutoModelForCausalLM.from_pretrained, where, dtype=dtype,
                                 trust_remote_code=cfg.trust_remote_code)
        return model, tokenizer
    from peft import PeftModel

    base, _ = _load_base(base_config(source, cfg), torch.float32)
    merged = PeftModel.from_pretrained(base, str(source.weights)).merge_and_unload()
    return merged.to(dtype), tokenizer
