"""Models: load (embedded GGUF, tiny, local, Hub), apply LoRA, save and restore checkpoints."""

from .checkpoint import base_model_path, load_trainable_state, save_model
from .embedded import (EMBEDDED_MODELS, cache_dir, embedded_gguf_path, embedded_model_dir,
                       embedded_tokenizer_dir)
from .loading import (count_parameters, load_model, load_tokenizer, resolve_device, resolve_dtype,
                      sampling_dtype, trainable_parameters, training_precision, weights_dtype)

__all__ = [
    "EMBEDDED_MODELS", "base_model_path", "cache_dir", "count_parameters", "embedded_gguf_path",
    "embedded_model_dir", "embedded_tokenizer_dir", "load_model", "load_tokenizer", "load_trainable_state",
    "resolve_device", "resolve_dtype", "sampling_dtype", "save_model", "trainable_parameters", "training_precision", "weights_dtype",
]
