"""Turn prompts and reference responses into token ids with a Hugging Face tokenizer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from ..errors import ModelError


@dataclass
class TruncationStats:
    """How many prompts / responses were cut to fit data.max_prompt_tokens / max_response_tokens."""

    prompts: int = 0
    responses: int = 0

    def record(self, prompt_truncated: bool = False, response_truncated: bool = False) -> None:
        self.prompts += int(prompt_truncated)
        self.responses += int(response_truncated)


def build_prompt_ids(
    tokenizer: Any,
    prompt: str,
    *,
    chat_template: bool = True,
    system_prompt: Optional[str] = None,
    max_tokens: int = 256,
    history: Optional[list[dict]] = None,
) -> tuple[list[int], bool]:
    """Prompt ids ready for generation, cut from the left to `max_tokens`; returns (ids, truncated).

    With a chat template the prompt is rendered as a user turn (after `history` and an optional
    system message) followed by the assistant header; without one it is tokenised as plain text.
    """
    if chat_template and getattr(tokenizer, "chat_template", None):
        messages = chat_messages(prompt, system_prompt=system_prompt, history=history)
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        # The template already holds the special tokens; don't let the tokenizer add a second BOS.
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    else:
        ids = tokenizer(prompt)["input_ids"]
    return _keep_last(list(ids), max_tokens)


def build_response_ids(tokenizer: Any, response: str, *, max_tokens: int = 256) -> tuple[list[int], bool]:
    """Response ids ending with EOS (so the model learns to stop), at most `max_tokens` in all."""
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ModelError("the tokenizer has no eos_token: responses cannot be terminated; use a tokenizer with one")
    ids = list(tokenizer(response, add_special_tokens=False)["input_ids"])
    room = max_tokens - 1  # one slot is kept for EOS
    return ids[:room] + [eos], len(ids) > room


def chat_messages(prompt: str, *, system_prompt: Optional[str] = None,
                  history: Optional[list[dict]] = None) -> list[dict]:
    """[system] + history + [user prompt]; a history that opens with its own system turn keeps it."""
    turns = list(history or [])
    if system_prompt and not (turns and turns[0].get("role") == "system"):
        turns.insert(0, {"role": "system", "content": system_prompt})
    return turns + [{"role": "user", "content": prompt}]


def _keep_last(ids: list[int], max_tokens: int) -> tuple[list[int], bool]:
    # Cut from the left: the end of a prompt (the request and the assistant header) matters most.
    if len(ids) <= max_tokens:
        return ids, False
    return ids[-max_tokens:], True
