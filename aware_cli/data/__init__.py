"""Training data: loading rows into `Example`s and tokenising them."""

from .formatting import TruncationStats, build_prompt_ids, build_response_ids, chat_messages
from .loaders import Example, load_examples, split_examples

__all__ = [
    "Example",
    "TruncationStats",
    "build_prompt_ids",
    "build_response_ids",
    "chat_messages",
    "load_examples",
    "split_examples",
]
