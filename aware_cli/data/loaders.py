"""Read fine-tuning pairs (alpaca, chat messages, JSONL, CSV, HF datasets) into `Example`s.

Files are parsed by the `datasets` library; when it rejects a file we re-scan the file
ourselves, because its errors rarely say where the problem is. Every bad input becomes a
one-line `DataError` naming the file and, where there is one, the line/row and the field.
"""

from __future__ import annotations

import csv
import json
import logging
import random
import re
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from ..config.schema import DataConfig
from ..errors import DataError
from . import builtin

HARMFUL_LABELS = {"1", "true", "yes", "harmful", "unsafe"}
MESSAGES_FIELD = "messages"
# "owner/name" or "name": what a Hugging Face Hub dataset id looks like.
_HUB_ID = re.compile(r"^[\w-]+(/[\w.-]+)?$")
# A missing path ending like this is a mistyped file, not a Hub id.
_DATA_FILE_SUFFIXES = (".json", ".jsonl", ".csv", ".tsv", ".txt", ".parquet", ".gz")


# meta key: the row's `harmful` label comes from a curated safety set (data.anchors.label_field), so verifiers
# may trust it where they ignore task rows' labels (harm does, whatever verifier.harm.use_labels says).
CURATED_LABEL = "curated_label"


@dataclass
class Example:
    """One training/eval pair."""

    id: str  # index of the source row, before shuffling
    prompt: str
    response: str  # reference target y*; "" only for chat rows that end with the user's turn
    harmful: Optional[bool] = None  # from data.label_field, when set
    meta: dict = field(default_factory=dict)  # source, unused columns, chat history


@dataclass
class _Source:
    """Where the rows come from and how to name a row in an error message."""

    reader: str  # "json", "csv" or "hf"
    location: str  # absolute file path, local directory or Hub id
    not_local: Optional[str] = None  # for a Hub id: the local path that was tried first

    def where(self, index: int) -> str:
        """`file:LINE (row N)` for line-based files, `source row N` otherwise (N counts from 1)."""
        row = f"row {index + 1}"
        lines = _row_lines(Path(self.location), self.reader) if self.reader != "hf" else []
        if index < len(lines):
            return f"{self.location}:{lines[index]} ({row})"
        return f"{self.location} {row}"


# ---------------------------------------------------------------- public API


def load_examples(cfg: DataConfig, base_dir: Optional[Path] = None) -> list[Example]:
    """Read `cfg.path`, turn its rows into Examples, then shuffle (seeded) and apply `cfg.limit`."""
    if cfg.format == "hexphi":
        examples = _hexphi_examples(cfg, base_dir)
    else:
        source = _resolve_source(cfg, base_dir)
        rows = _read_rows(source, cfg.split)
        to_pair = _row_reader(cfg, rows)
        examples = [_make_example(cfg, source, index, row, to_pair) for index, row in enumerate(rows)
                    if _selected(row, cfg.where, source, index)]
    if cfg.shuffle:
        random.Random(cfg.seed).shuffle(examples)
    if cfg.limit is not None:
        examples = examples[: cfg.limit]
    if not examples:
        raise DataError(f"data.path: {cfg.path} has no usable rows")
    return examples


def _hexphi_examples(cfg: DataConfig, base_dir: Optional[Path]) -> list[Example]:
    """HEx-PHI category files: every prompt is harmful; the category goes into meta."""
    from aware_cli.data.hexphi import read_hexphi

    directory = builtin.resolve(cfg.path, base_dir)
    return [Example(id=row["id"], prompt=row["prompt"], response="", harmful=True,
                    meta={"source": str(directory), "category": row["category"],
                          "category_name": row["category_name"], "columns": {}})
            for row in read_hexphi(directory)]


def split_examples(examples: list[Example], eval_size: int) -> tuple[list[Example], list[Example]]:
    """Split into (train, eval): eval is the first `eval_size` rows, train the rest."""
    if eval_size >= len(examples):
        raise DataError(
            f"data.eval_size ({eval_size}) >= number of rows ({len(examples)}): no rows left for "
            "training; lower data.eval_size or use more rows (data.limit)"
        )
    return examples[eval_size:], examples[:eval_size]


# ---------------------------------------------------------------- where the data is


def _resolve_source(cfg: DataConfig, base_dir: Optional[Path]) -> _Source:
    """A local file (read as CSV or JSON), a local dataset folder, or a Hub id (read by `datasets`)."""
    path = builtin.resolve(cfg.path, base_dir)  # builtin:<name> → the packaged file
    if path.is_file():
        by_extension = cfg.format in ("auto", "hf") and path.suffix.lower() == ".csv"
        return _Source("csv" if cfg.format == "csv" or by_extension else "json", str(path))
    if path.is_dir():
        return _Source("hf", str(path))
    if cfg.format == "hf" or _looks_like_hub_id(cfg.path):
        return _Source("hf", cfg.path, not_local=str(path))
    hint = f"; {cfg.missing_hint}" if cfg.missing_hint else ""  # data we cannot ship says where to get it
    raise DataError(f"data.path: file not found: {path}{hint}")


def _looks_like_hub_id(text: str) -> bool:
    return bool(_HUB_ID.match(text)) and not text.lower().endswith(_DATA_FILE_SUFFIXES)


# ---------------------------------------------------------------- reading rows


def _read_rows(source: _Source, split: str) -> list[dict]:
    if source.reader == "hf":
        return _read_hub(source, split)
    path = Path(source.location)
    if not path.read_bytes().strip():  # `datasets` fails obscurely on empty files
        raise DataError(f"data.path: {path} has no usable rows")
    return _read_file(path, source.reader)


def _read_hub(source: _Source, split: str) -> list[dict]:
    import datasets

    try:
        with _quiet_datasets():
            return datasets.load_dataset(source.location, split=split).to_list()
    except Exception as exc:  # hub, network and format errors all mean "cannot use this data"
        tried_locally = f"no local file {source.not_local}; " if source.not_local else ""
        raise DataError(
            f"data.path: cannot load dataset '{source.location}' (split '{split}'): {tried_locally}"
            f"datasets.load_dataset says: {_one_line(exc)}"
        ) from exc


def _read_file(path: Path, reader: str) -> list[dict]:
    import datasets

    # Local rows end up in a Python list anyway, so the Arrow cache can be thrown away.
    options = {"na_filter": False} if reader == "csv" else {}  # keep "", "NA", "null" as text
    try:
        with _quiet_datasets(), tempfile.TemporaryDirectory(prefix="aware-data-") as cache_dir:
            dataset = datasets.load_dataset(
                reader, data_files=str(path), split="train", cache_dir=cache_dir, keep_in_memory=True, **options
            )
            return dataset.to_list()
    except Exception as exc:
        raise _explain_read_failure(path, reader, exc) from exc


@contextmanager
def _quiet_datasets() -> Iterator[None]:
    """No progress bars, and no log lines for failures we report ourselves as a DataError."""
    import datasets

    datasets.disable_progress_bars()
    previous = datasets.logging.get_verbosity()
    datasets.logging.set_verbosity(logging.CRITICAL)
    try:
        yield
    finally:
        datasets.logging.set_verbosity(previous)


def _explain_read_failure(path: Path, reader: str, exc: Exception) -> DataError:
    """Find the line `datasets` choked on; fall back to its own message."""
    find_problem = _first_csv_problem if reader == "csv" else _first_json_problem
    problem = find_problem(path)
    if problem is not None:
        line, message = problem
        return DataError(f"{path}:{line}: {message}")
    if _has_no_rows(path, reader):  # e.g. "[]" or a CSV header alone
        return DataError(f"data.path: {path} has no usable rows")
    return DataError(f"data.path: cannot read {path} as {reader.upper()}: {_one_line(exc)}")


def _first_json_problem(path: Path) -> Optional[tuple[int, str]]:
    lines = _decoded_lines(path)
    if _is_json_document(lines):
        try:
            json.loads("".join(lines))
        except json.JSONDecodeError as err:
            return err.lineno, _json_message(err)
        return None
    for number, line in enumerate(lines, start=1):  # JSON Lines
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as err:
            return number, _json_message(err)
        if not isinstance(value, dict):
            return number, f"expected a JSON object per line, got {type(value).__name__}"
    return None


def _first_csv_problem(path: Path) -> Optional[tuple[int, str]]:
    lines = _decoded_lines(path)
    reader = csv.reader(lines)
    try:
        header = next(reader, [])
        for row in reader:
            if row and len(row) != len(header):
                return reader.line_num, f"expected {len(header)} fields like the header, found {len(row)}"
    except csv.Error as err:
        return reader.line_num, f"not valid CSV ({err})"
    return None


def _decoded_lines(path: Path) -> list[str]:
    """The file's lines, with their endings; decoded line by line to name a non-UTF-8 line."""
    lines = []
    for number, raw in enumerate(path.read_bytes().splitlines(keepends=True), start=1):
        try:
            lines.append(raw.decode("utf-8"))
        except UnicodeDecodeError as err:
            raise DataError(f"{path}:{number}: not valid UTF-8 ({err.reason} at byte {err.start})") from None
    return lines


def _json_message(err: json.JSONDecodeError) -> str:
    return f"not valid JSON ({err.msg} at column {err.colno})"


def _is_json_document(lines: list[str]) -> bool:
    """A JSON list of rows (rather than JSON Lines)."""
    return "".join(lines).lstrip().startswith("[")


def _has_no_rows(path: Path, reader: str) -> bool:
    lines = _decoded_lines(path)
    if reader == "json" and _is_json_document(lines):
        try:
            return json.loads("".join(lines)) == []
        except ValueError:
            return False
    return not _row_lines(path, reader)


def _row_lines(path: Path, reader: str) -> list[int]:
    """Line number of each data row of a JSON Lines or CSV file (empty for a JSON document)."""
    lines = _decoded_lines(path)
    if reader == "csv":
        rows = csv.reader(lines)
        next(rows, None)  # header
        return [rows.line_num for row in rows if row]
    if _is_json_document(lines):
        return []
    return [number for number, line in enumerate(lines, start=1) if line.strip()]


# ---------------------------------------------------------------- rows -> examples

PairReader = Callable[[DataConfig, dict], tuple[str, str, dict]]


class _RowProblem(Exception):
    """What is wrong with a row; `_make_example` adds where the row is."""


def _row_reader(cfg: DataConfig, rows: list[dict]) -> PairReader:
    """Chat rows or flat columns: from `data.format`, or (auto/hf) from the columns present."""
    if cfg.format == "messages":
        return _chat_pair
    if cfg.format in ("auto", "hf") and rows and MESSAGES_FIELD in rows[0] and cfg.prompt_field not in rows[0]:
        return _chat_pair
    return _column_pair


def _make_example(cfg: DataConfig, source: _Source, index: int, row: dict, to_pair: PairReader) -> Example:
    try:
        prompt, response, meta = to_pair(cfg, row)
        harmful = _harmful_label(cfg.label_field, row, cfg.label_default)
    except _RowProblem as problem:
        raise DataError(f"{source.where(index)}: {problem}") from None
    used = {cfg.prompt_field, cfg.input_field, cfg.response_field, cfg.label_field, MESSAGES_FIELD}
    columns = {key: value for key, value in row.items() if key not in used and value is not None}
    return Example(
        id=str(index),
        prompt=prompt,
        response=response,
        harmful=harmful,
        meta={"source": source.location, "columns": columns, **meta},
    )


def _column_pair(cfg: DataConfig, row: dict) -> tuple[str, str, dict]:
    prompt = _required_text(row, cfg.prompt_field)
    extra = row.get(cfg.input_field) if cfg.input_field else None
    if extra is not None and str(extra).strip():
        prompt = f"{prompt}\n\n{extra}"
    # prompt-only files (benchmarks such as XSTest) set data.response_field=null
    response = _required_text(row, cfg.response_field, allow_empty=True) if cfg.response_field else ""
    return prompt, response, {}


def _chat_pair(cfg: DataConfig, row: dict) -> tuple[str, str, dict]:
    """Prompt = last user turn before the final assistant turn; earlier turns become history."""
    turns = _chat_turns(row)
    response = ""
    if turns and turns[-1]["role"] == "assistant":
        response = turns.pop()["content"]
    found = last_user_turn(turns)
    if found is None:
        raise _RowProblem(f"field '{MESSAGES_FIELD}' has no user message before the final assistant message")
    prompt, history = found
    return prompt, response, {"history": history}


def last_user_turn(turns: list[dict]) -> Optional[tuple[str, list[dict]]]:
    """(the last user turn's text, the turns before it as history) of [{role, content}] turns; None without one.

    Shared by chat rows here and by preference rows (`preference.py`)."""
    user_turns = [i for i, turn in enumerate(turns) if turn["role"] == "user"]
    if not user_turns:
        return None
    last_user = user_turns[-1]
    return turns[last_user]["content"], turns[:last_user]


def _chat_turns(row: dict) -> list[dict]:
    turns = row.get(MESSAGES_FIELD)
    if turns is None:
        raise _missing_field(row, MESSAGES_FIELD)
    if not isinstance(turns, list):
        raise _RowProblem(f"field '{MESSAGES_FIELD}' must be a list of {{role, content}}, got {type(turns).__name__}")
    cleaned = []
    for number, turn in enumerate(turns, start=1):
        if not isinstance(turn, dict) or not isinstance(turn.get("role"), str) or turn.get("content") is None:
            raise _RowProblem(f"message {number} of '{MESSAGES_FIELD}' needs a 'role' and a 'content'")
        cleaned.append({"role": turn["role"], "content": str(turn["content"])})
    return cleaned


def _required_text(row: dict, name: str, allow_empty: bool = False) -> str:
    value = row.get(name)
    if value is None:  # `datasets` fills a column missing from some rows with None
        raise _missing_field(row, name)
    if isinstance(value, (dict, list)):
        raise _RowProblem(f"field '{name}' must be text, got {type(value).__name__}")
    text = str(value)
    if not allow_empty and not text.strip():
        raise _RowProblem(f"field '{name}' is empty")
    return text


def _missing_field(row: dict, name: str) -> _RowProblem:
    present = ", ".join(key for key, value in row.items() if value is not None) or "none"
    return _RowProblem(f"missing field '{name}' (fields present: {present})")


def _harmful_label(label_field: Optional[str], row: dict, default: Optional[bool]) -> Optional[bool]:
    if not label_field:
        return default
    if label_field not in row:  # absent from every row: most likely a typo in data.label_field
        raise _missing_field(row, label_field)
    return _is_truthy_label(row[label_field])


def _is_truthy_label(value: Any) -> bool:
    if isinstance(value, (bool, int, float)):
        return bool(value)
    return value is not None and str(value).strip().lower() in HARMFUL_LABELS


def _one_line(exc: BaseException) -> str:
    """The root cause as one short line (`datasets` wraps the useful message in generic ones)."""
    while exc.__cause__ is not None and str(exc.__cause__).strip():
        exc = exc.__cause__
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def _selected(row: dict, where: dict, source: _Source, index: int) -> bool:
    """`data.where`: every named column holds the value (or one of the listed values)."""
    for column, wanted in where.items():
        if column not in row:
            raise DataError(f"{source.where(index)}: data.where names column '{column}', which the row lacks "
                            f"(columns: {', '.join(row)})")
        allowed = wanted if isinstance(wanted, list) else [wanted]
        if str(row[column]) not in {str(v) for v in allowed}:
            return False
    return True
