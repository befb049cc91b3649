"""The question loader on the shared E3 files, and its errors on small broken files."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks.dataset import (
    ChatMessage,
    DatasetError,
    Question,
    dataset_fingerprint,
    filter_by_prompt_length,
    load_questions,
)

DATA_DIR = Path(os.environ.get("E3_DATA_DIR", Path(__file__).resolve().parents[2].parent / "shared/datasets/e3"))
TRAIN_EMPTY_ANSWER_ROWS = ["1448", "6024", "7150", "8086", "9039", "9514"]


def shared_file(name: str) -> Path:
    path = DATA_DIR / name
    if not path.is_file():
        pytest.skip(f"shared dataset {path} not present")
    return path


# ---------------------------------------------------------------- the shared files


def test_train_set_has_six_empty_answers_that_error_by_default() -> None:
    path = shared_file("train_data.parquet")
    with pytest.raises(DatasetError, match=r"train_data\.parquet, row 1448, field 'reward_model.ground_truth'"):
        load_questions(path)


def test_train_set_loads_with_empty_answers_dropped() -> None:
    questions = load_questions(shared_file("train_data.parquet"), empty_answer="drop")
    assert len(questions) == 10_240 - len(TRAIN_EMPTY_ANSWER_ROWS)
    ids = [q.id for q in questions]
    assert ids == [str(i) for i in range(10_240) if str(i) not in TRAIN_EMPTY_ANSWER_ROWS]
    assert all(q.ground_truth.strip() for q in questions)
    assert all(q.rank is not None and 0.0 <= q.rank < 1.0 for q in questions)
    assert Counter(q.data_source for q in questions).keys() == {"math", "omni_math", "amc", "aime"}
    assert all(len(q.prompt) == 1 and q.prompt[0].role == "user" for q in questions)
    assert all(q.ability == "math" for q in questions)
    first = questions[0]
    assert first.ground_truth == "843" and first.data_source == "math"
    assert first.chat() == [{"role": "user", "content": first.prompt[0].content}]


def test_valid_set_loads() -> None:
    questions = load_questions(shared_file("valid_data.parquet"))
    assert len(questions) == 512
    assert Counter(q.data_source for q in questions) == {
        "aime": 128,
        "amc": 128,
        "math": 128,
        "omni_math": 128,
    }
    assert all(q.ground_truth.strip() and q.rank is not None and 0.0 <= q.rank < 1.0 for q in questions)


def test_test_set_loads_from_json_lines() -> None:
    questions = load_questions(shared_file("test.json"))
    assert len(questions) == 1288
    assert Counter(q.data_source for q in questions) == {
        "olympiad_bench": 675,
        "math": 500,
        "amc": 83,
        "aime": 30,
    }
    assert [q.id for q in questions] == [str(i) for i in range(1288)]
    assert all(q.ground_truth.strip() and q.rank is None for q in questions)
    assert questions[0].ground_truth == "204" and questions[0].prompt[0].content.startswith("Every morning Aya")


def test_fingerprint_is_stable_and_sensitive() -> None:
    questions = load_questions(shared_file("valid_data.parquet"))
    again = load_questions(shared_file("valid_data.parquet"))
    assert dataset_fingerprint(questions) == dataset_fingerprint(again)
    assert len(dataset_fingerprint(questions)) == 64
    changed = [*questions[:-1], Question(**{**questions[-1].__dict__, "ground_truth": "other"})]
    assert dataset_fingerprint(changed) != dataset_fingerprint(questions)
    assert dataset_fingerprint(questions[::-1]) != dataset_fingerprint(questions)


# ---------------------------------------------------------------- small files


def chat(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def write_parquet(tmp_path: Path, columns: dict[str, Any], schema: pa.Schema | None = None) -> Path:
    path = tmp_path / "data.parquet"
    pq.write_table(pa.table(columns, schema=schema), path)
    return path


def verl_columns(n: int = 3, **overrides: Any) -> dict[str, Any]:
    columns: dict[str, Any] = {
        "data_source": ["math"] * n,
        "prompt": [chat(f"What is {i} + 1?") for i in range(n)],
        "ability": ["math"] * n,
        "reward_model": [{"ground_truth": str(i + 1), "style": "rule"} for i in range(n)],
        "rank": [i / n for i in range(n)],
    }
    columns.update(overrides)
    return {k: v for k, v in columns.items() if v is not None}


def write_jsonl(tmp_path: Path, records: list[Any]) -> Path:
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_minimal_parquet_round_trip(tmp_path: Path) -> None:
    questions = load_questions(write_parquet(tmp_path, verl_columns(rank=None, ability=None)))
    assert questions == [
        Question(
            id=str(i),
            prompt=(ChatMessage("user", f"What is {i} + 1?"),),
            ground_truth=str(i + 1),
            data_source="math",
        )
        for i in range(3)
    ]


def test_id_column_wins_over_extra_info_index(tmp_path: Path) -> None:
    extra = [{"index": 10 + i, "split": "train"} for i in range(3)]
    assert [q.id for q in load_questions(write_parquet(tmp_path, verl_columns(extra_info=extra)))] == [
        "10",
        "11",
        "12",
    ]
    with_ids = verl_columns(extra_info=extra, id=["a", "b", "c"])
    assert [q.id for q in load_questions(write_parquet(tmp_path, with_ids))] == ["a", "b", "c"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"reward_model": None}, r"field 'reward_model\.ground_truth': missing column"),
        ({"prompt": None}, r"field 'prompt': missing column"),
        ({"rank": ["0.1", "0.2", "0.3"]}, r"field 'rank': column has type string, expected a floating-point"),
        ({"prompt": ["a", "b", "c"]}, r"field 'prompt': column has type string, expected list<struct"),
        ({"id": [1.0, 2.0, 3.0]}, r"field 'id': column has type double, expected string or integer"),
        ({"prompt": [chat("a"), [], chat("c")]}, r"row 1, field 'prompt': missing or empty prompt"),
        ({"prompt": [chat("a"), None, chat("c")]}, r"row 1, field 'prompt': missing or empty prompt"),
        ({"prompt": [chat("a"), chat("b"), chat("  ")]}, r"row 2, field 'prompt': message 0 has an empty"),
        ({"rank": [0.1, float("nan"), 0.3]}, r"row 1, field 'rank': rank=nan is NaN or outside \[0, 1\]"),
        ({"rank": [0.1, 0.2, 1.5]}, r"row 2, field 'rank': rank=1.5 is NaN or outside \[0, 1\]"),
        ({"id": ["a", "b", "a"]}, r"row 2, field 'id': duplicate question id 'a' \(also at row 0\)"),
        ({"id": ["a", None, "c"]}, r"row 1, field 'id': missing id"),
        (
            {"extra_info": [{"index": 1}, {"index": 2}, {"index": 1}]},
            r"row 2, field 'extra_info\.index': duplicate question id '1' \(also at row 0\)",
        ),
        ({"id": ["a", "", "c"]}, r"row 1, field 'id': empty question id"),
        (
            {"reward_model": [{"ground_truth": "1"}, {"ground_truth": " "}, {"ground_truth": "3"}]},
            r"row 1, field 'reward_model\.ground_truth': missing or empty answer",
        ),
        (
            {"reward_model": [{"ground_truth": "1"}, None, {"ground_truth": "3"}]},
            r"row 1, field 'reward_model\.ground_truth'",
        ),
    ],
)
def test_broken_parquet_names_file_row_and_field(tmp_path: Path, overrides: dict[str, Any], message: str) -> None:
    path = write_parquet(tmp_path, verl_columns(**overrides))
    with pytest.raises(DatasetError, match=message) as error:
        load_questions(path)
    assert str(error.value).startswith(str(path))


def test_empty_answers_can_be_dropped(tmp_path: Path) -> None:
    answers = [{"ground_truth": "1"}, {"ground_truth": ""}, {"ground_truth": "3"}]
    path = write_parquet(tmp_path, verl_columns(reward_model=answers))
    assert [q.id for q in load_questions(path, empty_answer="drop")] == ["0", "2"]


def test_json_lines_fields(tmp_path: Path) -> None:
    records = [
        {"prompt": "What is 1 + 1?", "answer": "2", "source": "toy", "id": "q1", "rank": 0.25},
        {"prompt": "What is 2 + 2?", "answer": 4, "source": "toy", "id": 7},
    ]
    questions = load_questions(write_jsonl(tmp_path, records))
    assert questions[0] == Question("q1", (ChatMessage("user", "What is 1 + 1?"),), "2", "toy", rank=0.25)
    assert (questions[1].id, questions[1].ground_truth, questions[1].rank) == ("7", "4", None)


@pytest.mark.parametrize(
    ("records", "message"),
    [
        (
            [{"prompt": "a", "answer": "1"}, {"answer": "2"}],
            r"line 2, field 'prompt': missing or empty prompt",
        ),
        (
            [{"prompt": "a", "answer": "1"}, {"prompt": "b"}],
            r"line 2, field 'answer': missing or empty answer",
        ),
        (
            [{"prompt": "a", "answer": ["1"]}],
            r"line 1, field 'answer': expected a string or integer, got list",
        ),
        (
            [{"prompt": "a", "answer": True}],
            r"line 1, field 'answer': expected a string or integer, got bool",
        ),
        ([{"prompt": ["a"], "answer": "1"}], r"line 1, field 'prompt': expected a string, got list"),
        (
            [{"prompt": "a", "answer": "1", "rank": -0.5}],
            r"line 1, field 'rank': rank=-0.5 is NaN or outside",
        ),
        (
            [{"prompt": "a", "answer": "1", "id": "x"}] * 2,
            r"line 2, field 'id': duplicate question id 'x' \(also at line 1\)",
        ),
        (
            [{"prompt": "a", "answer": "1", "id": "x"}, {"prompt": "b", "answer": "2"}],
            r"line 2, field 'id': 'id' must be",
        ),
        ([[{"prompt": "a", "answer": "1"}]], r"line 1: expected a JSON object, got list"),
    ],
)
def test_broken_json_lines_name_file_line_and_field(tmp_path: Path, records: list[Any], message: str) -> None:
    path = write_jsonl(tmp_path, records)
    with pytest.raises(DatasetError, match=message) as error:
        load_questions(path)
    assert str(error.value).startswith(str(path))


def test_invalid_json_line(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    path.write_text('{"prompt": "a", "answer": "1"}\n\n{"prompt": "b", answer}\n')
    with pytest.raises(DatasetError, match=r"data\.jsonl, line 3: not valid JSON"):
        load_questions(path)


def test_non_utf8_line(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    path.write_bytes(b'{"prompt": "a", "answer": "1"}\n{"prompt": "\xff", "answer": "2"}\n')
    with pytest.raises(DatasetError, match=r"data\.jsonl, line 2: not UTF-8 text"):
        load_questions(path)


def test_missing_file_and_unknown_suffix(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"nope\.parquet: no such file"):
        load_questions(tmp_path / "nope.parquet")
    (tmp_path / "data.csv").write_text("prompt,answer\n")
    with pytest.raises(DatasetError, match=r"data\.csv: unknown suffix '\.csv'"):
        load_questions(tmp_path / "data.csv")
    (tmp_path / "bad.parquet").write_text("not parquet")
    with pytest.raises(DatasetError, match=r"bad\.parquet: not a readable Parquet file"):
        load_questions(tmp_path / "bad.parquet")


def test_filter_by_prompt_length() -> None:
    questions = [Question(str(i), (ChatMessage("user", "q"),), "1", "toy") for i in range(4)]
    kept, n_dropped = filter_by_prompt_length(questions, [5, 20, 10, 30], max_len=10)
    assert ([q.id for q in kept], n_dropped) == (["0", "2"], 2)
    assert filter_by_prompt_length(questions, [1, 2, 3, 4], max_len=10, policy="error") == (questions, 0)
    with pytest.raises(DatasetError, match=r"question '1' has a 20-token prompt > max_len=10 \(2 of 4"):
        filter_by_prompt_length(questions, [5, 20, 10, 30], max_len=10, policy="error")
    with pytest.raises(ValueError, match="3 lengths for 4 questions"):
        filter_by_prompt_length(questions, [1, 2, 3], max_len=10)
