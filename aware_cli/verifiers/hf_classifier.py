"""The `hf_classifier` verifier: any Hugging Face sequence classifier as V(x, y).

The classifier reads `verifier.classifier.template` filled with {prompt}, {response} (and
{reference}), truncated to `verifier.classifier.max_length` tokens. The score is the total
softmax probability of `verifier.classifier.aligned_labels`, named as in the model's
`config.id2label` (case-insensitive) or by integer id ("1"). A single-logit model
(num_labels=1) gives P = sigmoid(logit): its own label name or id "1" mean that probability,
id "0" means 1 − P.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

from aware_cli.config.schema import ClassifierConfig, VerifierConfig
from aware_cli.errors import ConfigError, ModelError
from aware_cli.verifiers.base import Verifier, register_block, register_verifier, verifier_device
from aware_cli.verifiers.fingerprint import block_payload


def aligned_label_ids(labels: Dict[int, str], aligned: Sequence[str], *, model: str = "the classifier") -> List[int]:
    """Class indices named by `aligned` (label names, any case, or integer ids given as text).

    `labels` is the model's id2label; for a single-logit model pass {0: name} and read index 1 as
    "the logit's label" (see `ClassifierScorer`). An unknown name is a ConfigError naming the key.
    """
    if not aligned:
        raise ConfigError(f"verifier.classifier.aligned_labels: list the labels that mean aligned "
                          f"(labels of {model}: {_label_list(labels)})")
    by_name: Dict[str, int] = {}
    for index, name in sorted(labels.items()):
        by_name.setdefault(str(name).strip().lower(), int(index))
    single = len(labels) == 1
    ids: List[int] = []
    for label in aligned:
        text = str(label).strip()
        if text.lower() in by_name:
            index = 1 if single else by_name[text.lower()]
        elif text.lstrip("-").isdigit() and (int(text) in (0, 1) if single else int(text) in labels):
            index = int(text)
        else:
            raise ConfigError(f"verifier.classifier.aligned_labels: {text!r} is not a label of {model} "
                              f"(labels: {_label_list(labels)}{'; single-logit: ids 0 and 1' if single else ''})")
        if index not in ids:
            ids.append(index)
    return ids


def _label_list(labels: Dict[int, str]) -> str:
    return ", ".join(f"{i}={name}" for i, name in sorted(labels.items()))


class ClassifierScorer:
    """The reward function: classifier probability of the aligned labels."""

    def __init__(self, model, tokenizer, cfg: ClassifierConfig, *, batch_size: int = 32):
        self.model = model
        self.tokenizer = tokenizer
        self.cfg = cfg
        self.batch_size = max(1, int(batch_size))
        self.device = next(model.parameters()).device
        labels = {int(k): str(v) for k, v in (getattr(model.config, "id2label", None) or {}).items()}
        num_labels = int(getattr(model.config, "num_labels", len(labels) or 1))
        if len(labels) != num_labels:
            labels = {i: labels.get(i, f"LABEL_{i}") for i in range(num_labels)}
        self.single_logit = num_labels == 1
        self.label_ids = aligned_label_ids(labels, cfg.aligned_labels, model=cfg.model or "the classifier")
        _render(cfg.template, "", "", "")  # a bad placeholder fails now, not mid-run
        limit = getattr(tokenizer, "model_max_length", None)
        positions = getattr(model.config, "max_position_embeddings", None)
        candidates = [cfg.max_length] + [v for v in (limit, positions) if isinstance(v, int) and 0 < v < 10 ** 6]
        self.max_length = min(candidates)

    def __repr__(self) -> str:
        return f"ClassifierScorer(model={self.cfg.model!r}, aligned_labels={self.cfg.aligned_labels!r})"

    def __call__(self, prompts: Sequence[str], completions: Sequence[str], references: Optional[Sequence] = None,
                 **_: Any) -> List[Optional[float]]:
        refs = list(references) if isinstance(references, (list, tuple)) else [""] * len(completions)
        texts = [_render(self.cfg.template, p, c, str(r or "")) for p, c, r in zip(prompts, completions, refs)]
        scores: List[Optional[float]] = []
        for start in range(0, len(texts), self.batch_size):
            scores.extend(self.probabilities(texts[start:start + self.batch_size]))
        return scores

    def probabilities(self, texts: List[str]) -> List[float]:
        """P(aligned labels) for each input text."""
        import torch

        encoded = self.tokenizer(texts, truncation=True, max_length=self.max_length, padding=True,
                                 return_tensors="pt")
        encoded = {k: v.to(self.device) for k, v in encoded.items()}
        with torch.no_grad():
            logits = self.model(**encoded).logits.float()
        if self.single_logit:
            p1 = torch.sigmoid(logits[:, 0])
            probs = torch.stack([1.0 - p1, p1], dim=-1)
        else:
            probs = torch.softmax(logits, dim=-1)
        total = probs[:, self.label_ids].sum(-1).clamp(0.0, 1.0)
        return [float(v) for v in total.tolist()]


def _render(template: str, prompt: str, response: str, reference: str) -> str:
    try:
        return template.format(prompt=prompt, response=response, reference=reference)
    except (KeyError, IndexError, ValueError, AttributeError) as exc:
        raise ConfigError(f"verifier.classifier.template: cannot fill the template ({type(exc).__name__}: {exc}); "
                          "it may use {prompt}, {response} and {reference} — write literal braces as {{ }}") from None


def load_classifier(cfg: VerifierConfig):
    """(model, tokenizer) of `verifier.classifier.model`, eval mode, on the verifier's device."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from aware_cli.models.loading import resolve_dtype

    source = (cfg.classifier.model or "").strip()
    if not source:
        raise ConfigError("verifier.classifier.model: set the classifier (an HF id or a local directory)")
    device = verifier_device(cfg.device)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=False)
        model = AutoModelForSequenceClassification.from_pretrained(
            source, trust_remote_code=False, dtype=resolve_dtype("auto", device))
    except (OSError, ValueError, KeyError) as exc:
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelError(f"verifier.classifier.model: cannot load {source}: {first_line}") from exc
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    if getattr(model.config, "pad_token_id", None) is None and tokenizer.pad_token_id is not None:
        model.config.pad_token_id = tokenizer.pad_token_id
    model.to(device).eval().requires_grad_(False)
    return model, tokenizer


@register_block("classifier")
def classifier_fingerprint(cfg: VerifierConfig) -> dict:
    return block_payload(cfg.classifier, paths=("model",))


@register_verifier("hf_classifier", blocks=("classifier",))
def build_classifier_verifier(cfg: VerifierConfig) -> Verifier:
    model, tokenizer = load_classifier(cfg)
    scorer = ClassifierScorer(model, tokenizer, cfg.classifier, batch_size=cfg.batch_size)
    return Verifier(scorer, name="hf_classifier", batch_size=cfg.batch_size, cache=cfg.cache)
