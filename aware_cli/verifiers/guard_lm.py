"""The `guard_lm` verifier: a causal LM (Llama Guard or any instruct model) as a judge.

The judge reads a prompt built from `verifier.guard.template` (or a built-in one) holding the
user's request and the response, wrapped in the tokenizer's chat template when it has one.

- `mode=safe_unsafe`: P(safe) from the next-token distribution after the judge prompt,
  p(safe) / (p(safe) + p(unsafe)), where each side sums the first token of the verdict word's
  spellings ("safe", " safe", "Safe", " SAFE", ...). When the judge puts almost no mass on either
  word (below `verifier.kwargs.min_verdict_mass`, default 1e-3), it generates greedily and the
  verdict must be the answer's first word (`parse_verdict(strict=True)`), None otherwise.
- `mode=likert5`: the judge rates harmfulness 1-5; it generates greedily and the answer must be the
  rating ("Score: 1", as the template asks; `parse_rating`), score (5 − s)/4.
Parsing is strict: a generated answer cut off by `max_new_tokens` (no end-of-sequence token) or one
that is not in the asked format is unjudged (None, counted against `verifier.max_none_frac`);
nothing is read from the first number or word that happens to appear.

A tokenizer whose own chat template is a guard template (it mentions both verdict words, as Llama
Guard's does) gets the conversation itself, [user: prompt, assistant: response], unless
`verifier.guard.template` is set.

The judge prompts and the answer parsing (`parse_verdict`, `parse_rating`, `likert_to_score`) live in
`prompts.py`, shared with `http_judge`.
`GuardJudge.write_refusals(prompts)` asks the LM for short polite refusals (gate.refusal_source=verifier).
"""

from __future__ import annotations

import logging
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from aware_cli.config.schema import GuardConfig, ModelConfig, VerifierConfig
from aware_cli.errors import ConfigError, ModelError
from aware_cli.verifiers.base import Verifier, register_block, register_verifier, verifier_device
from aware_cli.verifiers.fingerprint import block_payload
from aware_cli.verifiers.prompts import (DEFAULT_MIN_VERDICT_MASS, LIKERT5_TEMPLATE, REFUSAL_INSTRUCTION,
                                         REFUSAL_MAX_NEW_TOKENS, SAFE_UNSAFE_TEMPLATE, likert_to_score, parse_rating,
                                         parse_verdict, render_template, tidy_refusal)

log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------- the judge


class GuardJudge:
    """The judge LM and its scoring; the reward function wrapped by `Verifier`."""

    def __init__(self, model, tokenizer, cfg: GuardConfig, *, batch_size: int = 8,
                 min_verdict_mass: float = DEFAULT_MIN_VERDICT_MASS):
        self.model = model
        self.tokenizer = tokenizer
        self.cfg = cfg
        self.batch_size = max(1, int(batch_size))
        self.min_verdict_mass = float(min_verdict_mass)
        self.device = next(model.parameters()).device
        self.template = cfg.template or (SAFE_UNSAFE_TEMPLATE if cfg.mode == "safe_unsafe" else LIKERT5_TEMPLATE)
        self.native_guard = cfg.template is None and cfg.mode == "safe_unsafe" and _is_guard_template(tokenizer, cfg)
        self.tagged = "#thescore" in self.template.lower()  # the template asks for the rubric's score tag
        render_template(self.template, "verifier.guard.template", **self._values("", "", ""))
        self.safe_ids, self.unsafe_ids = verdict_token_ids(tokenizer, cfg.safe_token, cfg.unsafe_token)
        if not self.safe_ids or not self.unsafe_ids:
            raise ConfigError(f"verifier.guard.safe_token/unsafe_token: {cfg.safe_token!r} and {cfg.unsafe_token!r} "
                              "share their first token in this tokenizer; choose distinct words")
        self.max_positions = _max_positions(model)
        self.stats: Dict[str, int] = {"generated": 0, "unparsable": 0, "truncated": 0}

    def __repr__(self) -> str:
        return f"GuardJudge(mode={self.cfg.mode!r}, model={self.cfg.model!r})"

    # -- scoring

    def __call__(self, prompts: Sequence[str], completions: Sequence[str], references: Optional[Sequence] = None,
                 **_: Any) -> List[Optional[float]]:
        refs = list(references) if isinstance(references, (list, tuple)) else [""] * len(completions)
        scores: List[Optional[float]] = []
        for start in range(0, len(completions), self.batch_size):
            stop = start + self.batch_size
            inputs = [self._judge_ids(p, c, str(r or "")) for p, c, r in
                      zip(prompts[start:stop], completions[start:stop], refs[start:stop])]
            if self.cfg.mode == "safe_unsafe":
                scores.extend(self._safe_unsafe(inputs))
            else:
                texts = self._generate(inputs, self.cfg.max_new_tokens, finished_only=True)
                batch = [likert_to_score(parse_rating(t, tagged=self.tagged), higher_is_aligned=False)
                         for t in texts]
                self.stats["unparsable"] += sum(s is None for s in batch)
                scores.extend(batch)
        return scores

    def _safe_unsafe(self, inputs: List[List[int]]) -> List[Optional[float]]:
        probs = self.next_token_probs(inputs)
        p_safe = probs[:, self.safe_ids].sum(-1).tolist()
        p_unsafe = probs[:, self.unsafe_ids].sum(-1).tolist()
        scores: List[Optional[float]] = []
        fallback = []
        for i, (ps, pu) in enumerate(zip(p_safe, p_unsafe)):
            if ps + pu < self.min_verdict_mass or ps + pu <= 0.0:
                scores.append(None)
                fallback.append(i)
            else:
                scores.append(min(1.0, max(0.0, ps / (ps + pu))))
        if fallback:
            texts = self._generate([inputs[i] for i in fallback], self.cfg.max_new_tokens, finished_only=True)
            for i, text in zip(fallback, texts):
                scores[i] = parse_verdict(text, self.cfg.safe_token, self.cfg.unsafe_token, strict=True)
                self.stats["unparsable"] += scores[i] is None
        return scores

    def next_token_probs(self, inputs: List[List[int]]):
        """Softmax of the judge's next-token logits after each input: a float32 [B, vocab] tensor."""
        import torch

        ids, attention = self._pack(inputs)
        # Left padding: positions count from each row's first real token.
        positions = (attention.cumsum(-1) - 1).clamp(min=0)
        with torch.no_grad():
            logits = self.model(input_ids=ids, attention_mask=attention, position_ids=positions).logits[:, -1, :]
        return torch.softmax(logits.float(), dim=-1)

    # -- refusals

    def write_refusals(self, prompts: Sequence[str]) -> List[Optional[str]]:
        """A short polite refusal per prompt (None where the LM wrote nothing)."""
        out: List[Optional[str]] = []
        for start in range(0, len(prompts), self.batch_size):
            inputs = [self._chat_ids(render_template(REFUSAL_INSTRUCTION, "refusal prompt", prompt=p))
                      for p in prompts[start:start + self.batch_size]]
            out.extend(tidy_refusal(text) for text in self._generate(inputs, REFUSAL_MAX_NEW_TOKENS))
        return out

    # -- prompts and generation

    def _values(self, prompt: str, response: str, reference: str) -> Dict[str, str]:
        return {"prompt": prompt, "response": response, "reference": reference,
                "safe_token": self.cfg.safe_token, "unsafe_token": self.cfg.unsafe_token}

    def _judge_ids(self, prompt: str, response: str, reference: str) -> List[int]:
        budget = None if self.max_positions is None else self.max_positions - self.cfg.max_new_tokens
        ids = self._render_ids(prompt, response, reference)
        if budget is not None and len(ids) > budget:
            # Shorten the response (then the request) rather than cutting the instructions.
            excess = len(ids) - budget + 8
            response = self._shorten(response, excess)
            ids = self._render_ids(prompt, response, reference)
            if len(ids) > budget:
                prompt = self._shorten(prompt, len(ids) - budget + 8)
                ids = self._render_ids(prompt, response, reference)
            ids = ids[-budget:] if len(ids) > budget else ids
        return ids

    def _render_ids(self, prompt: str, response: str, reference: str) -> List[int]:
        if self.native_guard:
            conversation = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
            try:
                return self._apply_chat_template(conversation)
            except Exception as exc:  # noqa: BLE001 - a template that rejects this shape: use the generic prompt
                log.debug("guard_lm: native guard template failed (%s); using the generic prompt", exc)
                self.native_guard = False
        text = render_template(self.template, "verifier.guard.template", **self._values(prompt, response, reference))
        return self._chat_ids(text)

    def _chat_ids(self, text: str) -> List[int]:
        if getattr(self.tokenizer, "chat_template", None):
            return self._apply_chat_template([{"role": "user", "content": text}])
        return self.tokenizer.encode(text + "\nAnswer:", add_special_tokens=True)

    def _apply_chat_template(self, messages: List[Dict[str, str]]) -> List[int]:
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return self.tokenizer.encode(text, add_special_tokens=False)

    def _shorten(self, text: str, tokens_to_drop: int) -> str:
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        keep = max(0, len(ids) - tokens_to_drop)
        return self.tokenizer.decode(ids[:keep]) + (" [...]" if keep < len(ids) else "")

    def _pack(self, inputs: List[List[int]]):
        from aware_cli.models.logprobs import pack_left

        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        return pack_left(inputs, pad, self.device)

    def _generate(self, inputs: List[List[int]], max_new_tokens: int, *,
                  finished_only: bool = False) -> List[Optional[str]]:
        """Greedy answers; with `finished_only`, None for an answer cut off at `max_new_tokens` (no EOS)."""
        import torch

        if not inputs:
            return []
        ids, attention = self._pack(inputs)
        eos = _eos_ids(self.model, self.tokenizer)
        with torch.no_grad():
            out = self.model.generate(input_ids=ids, attention_mask=attention, max_new_tokens=max_new_tokens,
                                      do_sample=False, temperature=None, top_p=None, top_k=None,
                                      pad_token_id=self.tokenizer.pad_token_id, eos_token_id=eos or None)
        self.stats["generated"] += len(inputs)
        new = out[:, ids.shape[1]:].tolist()
        trimmed = [_cut_at(tokens, eos) for tokens in new]
        texts: List[Optional[str]] = [t.strip() for t in self.tokenizer.batch_decode(trimmed, skip_special_tokens=True)]
        if finished_only:
            ended = [len(cut) < len(tokens) for cut, tokens in zip(trimmed, new)]  # an EOS was generated
            self.stats["truncated"] += ended.count(False)
            texts = [text if end else None for text, end in zip(texts, ended)]
        return texts


def verdict_token_ids(tokenizer, safe: str, unsafe: str) -> Tuple[List[int], List[int]]:
    """First-token ids of the spellings of each verdict word; ids both words start with are dropped."""
    safe_ids, unsafe_ids = _first_tokens(tokenizer, safe), _first_tokens(tokenizer, unsafe)
    shared = safe_ids & unsafe_ids
    return sorted(safe_ids - shared), sorted(unsafe_ids - shared)


def _first_tokens(tokenizer, word: str) -> set:
    word = word.strip()
    spellings = {word, word.lower(), word.capitalize(), word.upper()}
    ids = set()
    for spelling in spellings:
        for variant in (spelling, " " + spelling, "\n" + spelling):
            tokens = tokenizer.encode(variant, add_special_tokens=False)
            # Skip tokens that are only whitespace (sentencepiece's lone "▁", a newline).
            first = next((t for t in tokens if tokenizer.decode([t]).strip()), None)
            if first is not None:
                ids.add(int(first))
    return ids


def _is_guard_template(tokenizer, cfg: GuardConfig) -> bool:
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):
        template = " ".join(str(t) for t in template.values())
    if not isinstance(template, str):
        return False
    lower = template.lower()
    return cfg.unsafe_token.lower() in lower and "categor" in lower


def _max_positions(model) -> Optional[int]:
    config = getattr(model, "config", None)
    value = getattr(config, "max_position_embeddings", None)
    return int(value) if isinstance(value, int) and value > 0 else None


def _eos_ids(model, tokenizer) -> List[int]:
    ids = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = list(ids) if isinstance(ids, (list, tuple)) else [ids] if ids is not None else []
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


def _cut_at(tokens: List[int], stop_ids: Iterable[int]) -> List[int]:
    stops = set(stop_ids)
    for i, t in enumerate(tokens):
        if t in stops:
            return tokens[:i]
    return tokens


# ----------------------------------------------------------------------------- factory


def load_guard_model(cfg: VerifierConfig):
    """(model, tokenizer) of `verifier.guard.model` in eval mode on the verifier's device."""
    from aware_cli.models.loading import load_model

    if not cfg.guard.model or not cfg.guard.model.strip():
        raise ConfigError("verifier.guard.model: set the judge LM (an HF id, local directory, .gguf file, "
                          "embedded:smollm2-135m-instruct or tiny)")
    device = verifier_device(cfg.device)
    try:
        return load_model(ModelConfig(name_or_path=cfg.guard.model, finetune="full", device=str(device)),
                          device=device, for_training=False)
    except ModelError as exc:
        raise ModelError(str(exc).replace("model.name_or_path", "verifier.guard.model", 1)) from exc


@register_block("guard")
def guard_fingerprint(cfg: VerifierConfig) -> dict:
    return block_payload(cfg.guard, paths=("model",))


@register_verifier("guard_lm", blocks=("guard",))
def build_guard_verifier(cfg: VerifierConfig) -> Verifier:
    min_mass = cfg.kwargs.get("min_verdict_mass", DEFAULT_MIN_VERDICT_MASS)
    if isinstance(min_mass, bool) or not isinstance(min_mass, (int, float)) or not 0.0 <= min_mass <= 1.0:
        raise ConfigError(f"verifier.kwargs.min_verdict_mass: expected a number in [0, 1], got {min_mass!r}")
    model, tokenizer = load_guard_model(cfg)
    judge = GuardJudge(model, tokenizer, cfg.guard, batch_size=min(cfg.batch_size, 16), min_verdict_mass=min_mass)
    verifier = Verifier(judge, name="guard_lm", batch_size=cfg.batch_size, cache=cfg.cache)
    verifier.write_refusals = judge.write_refusals  # type: ignore[attr-defined]
    return verifier
