"""Offline preference pairs (`objective.pairs_path`): the file's rows and the training data they make.

`load_preference_pairs` reads ShareGPT, prompt/chosen/rejected and alpaca-style rows into
{"prompt", "chosen", "rejected", "history"}; `offline_training_data` turns them into `Example`s
(response = chosen, meta["rejected"]) in data.path's place. The pairwise objectives
(pipeline/objectives/pairs.py) train on them.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import List, Optional, Tuple

from ..config.schema import AwareConfig
from ..errors import DataError
from ..files import jsonl_lines
from . import builtin
from .loaders import Example, last_user_turn, split_examples
from .mix import TrainingData


def offline_training_data(cfg: AwareConfig, base_dir: Optional[Path] = None) -> TrainingData:
    """`objective.pairs_path` as training data: one Example per pair, response = chosen, meta["rejected"].

    The file takes data.path's place: a relative path resolves against `base_dir` (default: the
    working directory), and data.shuffle / seed / limit / eval_size apply as to data.path rows (the
    held-out pairs' prompts and chosen responses feed the in-training evaluation).
    """
    data = cfg.data
    path = builtin.resolve(cfg.objective.pairs_path, base_dir)
    examples = [Example(id=str(index), prompt=row["prompt"], response=row["chosen"],
                        meta={"source": str(path), "history": row["history"], "rejected": row["rejected"]})
                for index, row in enumerate(load_preference_pairs(path))]
    if data.shuffle:
        random.Random(data.seed).shuffle(examples)
    if data.limit is not None:
        examples = examples[:data.limit]
    train, held_out = split_examples(examples, data.eval_size)
    split = {"data": cfg.objective.pairs_path, "seed": data.seed, "task_heldout_ids": [ex.id for ex in held_out]}
    return TrainingData(train=train, held_out=held_out, split=split)


_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "bot": "assistant",
          "model": "assistant", "system": "system"}


class _Bad(Exception):
    """A row problem; the caller adds file and row."""


def load_preference_pairs(path) -> List[dict]:
    """Offline preference pairs: [{"prompt", "chosen", "rejected", "history"}], all strings but history.

    Accepted files: a JSON array or JSON Lines, rows in one of these layouts
      * ShareGPT (LLaMA-Factory's dpo_en_demo.json): "conversations" [{from, value}] ending with a
        human turn, "chosen"/"rejected" {from: gpt, value} (or plain strings);
      * "prompt"/"chosen"/"rejected" strings (the common JSONL layout); "prompt" may also be a list
        of {role, content} messages and "chosen"/"rejected" lists of messages (the last one is used)
        or a {role, content} / {from, value} dict;
      * alpaca-style "instruction" (+ "input") with "chosen"/"rejected".
    "prompt" is the last user turn; "history" holds the earlier turns as [{role, content}] (system
    turns included), as `data.loaders` does for chat rows, so `data.formatting` renders them.
    A malformed row raises DataError naming the file and the row (and line for JSON Lines).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"preference data: file not found: {path}")
    text = path.read_text(encoding="utf-8", errors="replace")
    rows = _read_json_rows(path, text)
    pairs = []
    for index, (line, row) in enumerate(rows):
        where = f"{path}:{line} (row {index + 1})" if line is not None else f"{path} row {index + 1}"
        try:
            pairs.append(_preference_row(row))
        except _Bad as exc:
            raise DataError(f"{where}: {exc}") from None
    if not pairs:
        raise DataError(f"preference data: {path} has no rows")
    return pairs


def _read_json_rows(path: Path, text: str) -> List[Tuple[Optional[int], object]]:
    """[(line or None, row)]: a JSON array (or {"data": [...]}) or JSON Lines."""
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{err.lineno}: not valid JSON: {err.msg}") from None
        return [(None, row) for row in data]
    rows = []
    for number, line in enumerate(jsonl_lines(text), start=1):
        if not line.strip():
            continue
        try:
            rows.append((number, json.loads(line)))
        except json.JSONDecodeError as err:
            if number == 1 and stripped.startswith("{"):
                try:  # one JSON document spread over several lines
                    data = json.loads(text)
                except json.JSONDecodeError:
                    pass
                else:
                    if isinstance(data, dict) and isinstance(data.get("data"), list):
                        return [(None, row) for row in data["data"]]
                    return [(None, data)]
            raise DataError(f"{path}:{number} (row {len(rows) + 1}): not valid JSON: {err.msg}") from None
    return rows


def _text(value, field: str) -> str:
    if not isinstance(value, str):
        raise _Bad(f"'{field}' must be a string, got {type(value).__name__}")
    if not value.strip():
        raise _Bad(f"'{field}' is empty")
    return value


def _turn(turn, field: str) -> dict:
    if not isinstance(turn, dict):
        raise _Bad(f"'{field}' turns must be objects, got {type(turn).__name__}")
    role = turn.get("role", turn.get("from"))
    content = turn.get("content", turn.get("value"))
    if not isinstance(role, str) or role.lower() not in _ROLES:
        raise _Bad(f"'{field}' has a turn with unknown role {role!r}")
    if not isinstance(content, str):
        raise _Bad(f"'{field}' has a turn without text ('value' or 'content')")
    return {"role": _ROLES[role.lower()], "content": content}


def _response(value, field: str) -> str:
    if isinstance(value, list):
        if not value:
            raise _Bad(f"'{field}' is an empty list")
        value = value[-1]
    if isinstance(value, dict):
        turn = _turn(value, field)
        if turn["role"] != "assistant":
            raise _Bad(f"'{field}' must be an assistant turn, got role {turn['role']!r}")
        value = turn["content"]
    return _text(value, field)


def _split_conversation(turns, field: str) -> Tuple[str, List[dict]]:
    if not isinstance(turns, list) or not turns:
        raise _Bad(f"'{field}' must be a non-empty list of turns")
    cleaned = [_turn(t, field) for t in turns]
    if cleaned[-1]["role"] != "user":
        raise _Bad(f"'{field}' must end with a user (human) turn, got {cleaned[-1]['role']!r}")
    prompt, history = last_user_turn(cleaned)
    return _text(prompt, field), history


def _preference_row(row) -> dict:
    if not isinstance(row, dict):
        raise _Bad(f"expected an object, got {type(row).__name__}")
    for key in ("chosen", "rejected"):
        if key not in row:
            raise _Bad(f"missing '{key}'")
    if "conversations" in row:
        prompt, history = _split_conversation(row["conversations"], "conversations")
    elif "prompt" in row:
        if isinstance(row["prompt"], list):
            prompt, history = _split_conversation(row["prompt"], "prompt")
        else:
            prompt, history = _text(row["prompt"], "prompt"), []
    elif "instruction" in row:
        instruction = _text(row["instruction"], "instruction")
        extra = row.get("input") or ""
        if not isinstance(extra, str):
            raise _Bad("'input' must be a string")
        prompt, history = (f"{instruction}\n\n{extra}" if extra.strip() else instruction), []
    else:
        raise _Bad("needs 'conversations', 'prompt' or 'instruction' next to 'chosen' and 'rejected'")
    return {"prompt": prompt, "chosen": _response(row["chosen"], "chosen"),
            "rejected": _response(row["rejected"], "rejected"), "history": history}
