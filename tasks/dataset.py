"""Question datasets for every task: one loader, strict validation, a stable id per question.

Two formats are read:

* verl-style Parquet: `data_source` (string), `prompt` (a chat list of `{role, content}` structs),
  `reward_model.ground_truth` (string), and optionally `ability` (string), `rank` (float in [0, 1]),
  `id` (string or integer) and `extra_info.index` (string or integer). Only these columns are read.
* JSON lines (`.jsonl` or `.json`): one object per line with `prompt` (string, becomes one user message),
  `answer` (string or integer), and optionally `source` (else "unknown"), `id` and `rank`.

Question ids: the `id` column when the file has one, else `extra_info.index`, else the row position. The
choice is made once per file, never per row, so ids from different schemes cannot collide.

Everything is checked before a run starts, and every problem raises `DatasetError` naming the file, the row
(Parquet: 0-based row; JSON lines: 1-based line) and the field.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

log = logging.getLogger(__name__)

EmptyAnswerPolicy = Literal["error", "drop"]
LengthPolicy = Literal["filter", "error"]

PARQUET_SUFFIXES = (".parquet",)
JSONL_SUFFIXES = (".jsonl", ".json")


class DatasetError(ValueError):
    """A dataset file, row or field that cannot be used; the message names all three where they apply."""

    def __init__(self, problem: str, path: Path | str | None = None, row: str | None = None, field: str | None = None):
        parts = [str(p) for p in (path, row, f"field {field!r}" if field else None) if p is not None]
        super().__init__(f"{', '.join(parts)}: {problem}" if parts else problem)
        self.path = path
        self.row = row
        self.field = field


class ChatMessage(NamedTuple):
    """One message of a chat prompt."""

    role: str
    content: str


@dataclass(frozen=True)
class Question:
    """One question of a dataset: an immutable chat prompt and the answer it is scored against.

    `id` is stable across runs (see the module docstring); `rank` is the dataset's precomputed difficulty
    percentile in [0, 1] (0 = easiest) or None when the dataset has none.
    """

    id: str
    prompt: tuple[ChatMessage, ...]
    ground_truth: str
    data_source: str
    rank: float | None = None
    ability: str | None = None

    def __post_init__(self) -> None:
        if not self.id:
            raise ValueError("Question: empty id")
        if not self.prompt or not all(isinstance(m, ChatMessage) for m in self.prompt):
            raise ValueError(f"Question {self.id!r}: prompt must be a non-empty tuple of ChatMessage")
        if not self.ground_truth.strip():
            raise ValueError(f"Question {self.id!r}: empty ground_truth")
        if self.rank is not None and not 0.0 <= self.rank <= 1.0:
            raise ValueError(f"Question {self.id!r}: rank={self.rank} outside [0, 1]")

    def chat(self) -> list[dict[str, str]]:
        """The prompt as the list of `{"role", "content"}` dicts that chat templates expect."""
        return [m._asdict() for m in self.prompt]


def load_questions(path: Path | str, *, empty_answer: EmptyAnswerPolicy = "error") -> list[Question]:
    """Read and validate every question of a Parquet or JSON-lines file, in file order.

    `empty_answer="drop"` skips rows whose answer is empty or blank (logging their ids) instead of raising;
    the shipped training set has 6 such rows, which could never earn a reward. Any other problem raises
    `DatasetError`: missing file, unknown suffix, missing or mistyped column, missing or empty prompt, rank
    NaN or outside [0, 1], duplicate ids (naming both rows).
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError("no such file", path)
    if path.suffix in PARQUET_SUFFIXES:
        table = _read_parquet(path)
    elif path.suffix in JSONL_SUFFIXES:
        table = _read_jsonl(path)
    else:
        raise DatasetError(f"unknown suffix {path.suffix!r}; expected one of {PARQUET_SUFFIXES + JSONL_SUFFIXES}", path)
    return _build(path, table, empty_answer)


def dataset_fingerprint(questions: Sequence[Question]) -> str:
    """SHA-256 (hex) of the questions' ids and ground truths, in order.

    Two lists get the same fingerprint iff they have the same ids with the same answers in the same order.
    """
    digest = hashlib.sha256()
    for q in questions:
        digest.update(json.dumps([q.id, q.ground_truth]).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def filter_by_prompt_length(
    questions: Sequence[Question], lengths: Sequence[int], max_len: int, policy: LengthPolicy = "filter"
) -> tuple[list[Question], int]:
    """Keep the questions whose prompt length (`lengths[i]`, in tokens) is at most `max_len`.

    Returns `(kept, n_dropped)`. With `policy="error"` any too-long prompt raises `DatasetError` naming the
    first offending question id, its length and how many prompts are too long.
    """
    if len(lengths) != len(questions):
        raise ValueError(f"filter_by_prompt_length: {len(lengths)} lengths for {len(questions)} questions")
    if policy not in ("filter", "error"):
        raise ValueError(f"filter_by_prompt_length: policy={policy!r}, expected 'filter' or 'error'")
    too_long = [i for i, n in enumerate(lengths) if n > max_len]
    if too_long and policy == "error":
        first = too_long[0]
        raise DatasetError(
            f"question {questions[first].id!r} has a {lengths[first]}-token prompt > max_len={max_len} "
            f"({len(too_long)} of {len(questions)} prompts are too long)"
        )
    dropped = set(too_long)
    return [q for i, q in enumerate(questions) if i not in dropped], len(too_long)


class _Row(NamedTuple):
    """One raw record, already type-checked, before value checks."""

    where: str  # "row 12" or "line 13", for error messages
    id: str
    prompt: Any
    answer: str | None
    data_source: str | None
    rank: float | None
    ability: str | None


class _Table(NamedTuple):
    """A file's raw records and the names its format gives to the id and answer fields."""

    rows: list[_Row]
    id_field: str
    answer_field: str


def _build(path: Path, table: _Table, empty_answer: EmptyAnswerPolicy) -> list[Question]:
    if empty_answer not in ("error", "drop"):
        raise ValueError(f"load_questions: empty_answer={empty_answer!r}, expected 'error' or 'drop'")
    questions: list[Question] = []
    first_seen: dict[str, str] = {}
    dropped: list[str] = []
    for row in table.rows:
        if not row.id.strip():
            raise DatasetError("empty question id", path, row.where, table.id_field)
        if row.id in first_seen:
            raise DatasetError(
                f"duplicate question id {row.id!r} (also at {first_seen[row.id]})",
                path,
                row.where,
                table.id_field,
            )
        first_seen[row.id] = row.where
        if row.answer is None or not row.answer.strip():
            if empty_answer == "error":
                raise DatasetError("missing or empty answer", path, row.where, table.answer_field)
            dropped.append(row.id)
            continue
        if row.rank is not None and not (0.0 <= row.rank <= 1.0):  # NaN fails both comparisons
            raise DatasetError(f"rank={row.rank} is NaN or outside [0, 1]", path, row.where, "rank")
        questions.append(
            Question(
                id=row.id,
                prompt=_chat(path, row),
                ground_truth=row.answer,
                data_source=row.data_source or "unknown",
                rank=row.rank,
                ability=row.ability,
            )
        )
    if dropped:
        log.warning("%s: dropped %d question(s) with an empty answer: %s", path, len(dropped), dropped)
    return questions


def _chat(path: Path, row: _Row) -> tuple[ChatMessage, ...]:
    """The row's prompt as chat messages: a plain string becomes one user message."""
    if isinstance(row.prompt, str):
        messages = (ChatMessage("user", row.prompt),)
    elif row.prompt:
        messages = tuple(ChatMessage(m["role"], m["content"]) if m else ChatMessage("", "") for m in row.prompt)
    else:
        raise DatasetError("missing or empty prompt", path, row.where, "prompt")
    for i, m in enumerate(messages):
        if not m.role or m.content is None or not m.content.strip():
            raise DatasetError(f"message {i} has an empty role or content: {m}", path, row.where, "prompt")
    return messages


# ---------------------------------------------------------------- Parquet


def _read_parquet(path: Path) -> _Table:
    try:
        parquet = pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as e:
        raise DatasetError(f"not a readable Parquet file ({e})", path) from None
    schema = parquet.schema_arrow

    def column(name: str, check: Callable[[pa.DataType], bool], expected: str, required: bool) -> list[Any] | None:
        """The values of a (possibly nested, dotted) column after checking its type; None if absent."""
        field_type = _nested_type(schema, name)
        if field_type is None:
            if required:
                raise DatasetError(f"missing column (the file has {schema.names})", path, field=name)
            return None
        if not check(field_type):
            raise DatasetError(f"column has type {field_type}, expected {expected}", path, field=name)
        values = parquet.read(columns=[name]).column(0)  # a nested path comes back as a pruned struct
        for child in name.split(".")[1:]:
            values = pc.struct_field(values, child)
        return values.to_pylist()

    sources = column("data_source", _is_string, "string", required=True)
    prompts = column("prompt", _is_chat, "list<struct<role: string, content: string>>", required=True)
    answers = column("reward_model.ground_truth", _is_string, "string", required=True)
    ranks = column("rank", pa.types.is_floating, "a floating-point number", required=False)
    abilities = column("ability", _is_string, "string", required=False)
    id_name = "id" if _nested_type(schema, "id") is not None else "extra_info.index"
    ids = column(id_name, _is_id, "string or integer", required=False)

    n = parquet.metadata.num_rows
    rows = []
    for i in range(n):
        if ids is not None and ids[i] is None:
            raise DatasetError("missing id", path, f"row {i}", id_name)
        rows.append(
            _Row(
                where=f"row {i}",
                id=str(ids[i]) if ids is not None else str(i),
                prompt=prompts[i],
                answer=answers[i],
                data_source=sources[i],
                rank=ranks[i] if ranks is not None else None,
                ability=abilities[i] if abilities is not None else None,
            )
        )
    return _Table(rows, id_field=id_name, answer_field="reward_model.ground_truth")


def _nested_type(schema: pa.Schema, dotted: str) -> pa.DataType | None:
    """The type of a dotted column path such as `reward_model.ground_truth`, or None when absent."""
    head, *rest = dotted.split(".")
    if schema.get_field_index(head) < 0:
        return None
    field_type = schema.field(head).type
    for name in rest:
        if not pa.types.is_struct(field_type) or field_type.get_field_index(name) < 0:
            return None
        field_type = field_type.field(name).type
    return field_type


def _is_string(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def _is_id(t: pa.DataType) -> bool:
    return _is_string(t) or pa.types.is_integer(t)


def _is_chat(t: pa.DataType) -> bool:
    if not (pa.types.is_list(t) or pa.types.is_large_list(t)) or not pa.types.is_struct(t.value_type):
        return False
    message = t.value_type
    return all(message.get_field_index(k) >= 0 and _is_string(message.field(k).type) for k in ("role", "content"))


# ---------------------------------------------------------------- JSON lines


def _read_jsonl(path: Path) -> _Table:
    rows: list[_Row] = []
    has_ids = False
    with path.open("rb") as lines:
        for line_no, line in _numbered_lines(path, lines):
            if not line.strip():
                continue
            where = f"line {line_no}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise DatasetError(
                    f"not valid JSON ({e.msg}); expected one JSON object per line", path, where
                ) from None
            if not isinstance(record, dict):
                raise DatasetError(f"expected a JSON object, got {type(record).__name__}", path, where)
            record_has_id = record.get("id") is not None
            if rows and record_has_id != has_ids:
                first = "has one" if has_ids else "has none"
                raise DatasetError(
                    f"'id' must be on every line or on none (the first record {first})", path, where, "id"
                )
            has_ids = record_has_id
            rows.append(_jsonl_row(path, where, record, default_id=str(len(rows))))
    return _Table(rows, id_field="id", answer_field="answer")


def _numbered_lines(path: Path, lines: Iterable[bytes]) -> Iterator[tuple[int, str]]:
    """`enumerate(lines, start=1)` with each line decoded as UTF-8; a bad line raises naming its number."""
    for line_no, raw in enumerate(lines, start=1):
        try:
            yield line_no, raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise DatasetError(f"not UTF-8 text ({e.reason})", path, f"line {line_no}") from None


def _jsonl_row(path: Path, where: str, record: dict[str, Any], default_id: str) -> _Row:
    def get(key: str, types: tuple[type, ...], expected: str) -> Any:
        value = record.get(key)
        if value is not None and (not isinstance(value, types) or isinstance(value, bool)):
            raise DatasetError(f"expected {expected}, got {type(value).__name__} {value!r:.60}", path, where, key)
        return value

    prompt = get("prompt", (str,), "a string")
    answer = get("answer", (str, int), "a string or integer")
    rank = get("rank", (float, int), "a number")
    record_id = get("id", (str, int), "a string or integer")
    return _Row(
        where=where,
        id=str(record_id) if record_id is not None else default_id,
        prompt=prompt,
        answer=str(answer) if answer is not None else None,
        data_source=get("source", (str,), "a string"),
        rank=float(rank) if rank is not None else None,
        ability=None,
    )
