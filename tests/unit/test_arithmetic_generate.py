"""Arithmetic problems and dataset splits: levels, worked solutions, determinism, disjointness, schema."""

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tasks.arithmetic.generate import (
    ArithmeticDataConfig,
    ensure_datasets,
    generate_splits,
    level_ranks,
    per_level_counts,
    question_id,
    write_splits,
)
from tasks.arithmetic.problems import LEVELS, Problem, count_carries, take_problems
from tasks.arithmetic.reward import is_correct

SMALL = ArithmeticDataConfig(seed=3, train_size=120, valid_size=30, test_size=60)


def test_worked_solution_shows_columns_with_carries_and_ends_with_the_answer() -> None:
    solution = Problem(level=2, operands=(85, 47)).worked_solution()
    assert solution == "units: 5+7=12\ntens: 8+4+1=13\nAnswer: 132"
    solution = Problem(level=6, operands=(999, 909, 90)).worked_solution()
    assert solution == "units: 9+9+0=18\ntens: 9+0+9+1=19\nhundreds: 9+9+1=19\nAnswer: 1998"


@pytest.mark.parametrize("level", sorted(LEVELS))
def test_every_level_meets_its_spec_and_its_solution_is_correct(level: int) -> None:
    assert len(LEVELS) >= 5
    spec = LEVELS[level]
    for problem in take_problems(level, "test", 50):
        assert len(problem.operands) == spec.operands
        assert all(len(str(x)) == spec.digits for x in problem.operands)
        carries = count_carries(problem.operands)
        assert carries >= spec.min_carries
        assert spec.max_carries is None or carries <= spec.max_carries
        assert is_correct(problem.worked_solution(), str(sum(problem.operands)))


def test_splits_are_deterministic_disjoint_and_sized() -> None:
    first, second = generate_splits(SMALL), generate_splits(SMALL)
    assert first == second
    assert generate_splits(ArithmeticDataConfig(seed=4, train_size=120, valid_size=30, test_size=60)) != first
    questions = {name: {p.question for p in split} for name, split in first.items()}
    assert {name: len(q) for name, q in questions.items()} == {"train": 120, "valid": 30, "test": 60}
    assert not questions["train"] & questions["valid"]
    assert not questions["train"] & questions["test"]
    assert not questions["valid"] & questions["test"]
    assert [sum(p.level == level for p in first["valid"]) for level in sorted(LEVELS)] == [5] * 6


def test_per_level_counts_spread_the_remainder() -> None:
    assert per_level_counts(14, (1, 2, 3, 4)) == {1: 4, 2: 4, 3: 3, 4: 3}


def test_level_ranks_share_ties_and_stay_in_unit_interval() -> None:
    ranks = level_ranks([2, 1, 2, 3])
    assert ranks == [(1 + 0.5) / 4, 0.0, (1 + 0.5) / 4, 3 / 4]
    assert all(0 <= r < 1 for r in ranks)


def test_written_files_follow_the_rlvr_schema(tmp_path: Path) -> None:
    paths = write_splits(SMALL, tmp_path)
    table = pq.read_table(paths["valid"])
    assert table.num_rows == 30
    row = table.to_pylist()[0]
    question = row["prompt"][0]["content"]
    assert row["prompt"] == [{"role": "user", "content": question}]
    assert row["id"] == question_id(question)
    assert row["ability"] == "arithmetic"
    assert row["data_source"] == f"arithmetic/L{row['extra_info']['level']}"
    assert row["reward_model"]["style"] == "rule"
    assert int(row["reward_model"]["ground_truth"]) == sum(int(x) for x in question[8:-1].split(" + "))
    assert table.column("extra_info").combine_chunks().field("index").to_pylist() == list(range(30))
    assert len(set(table.column("id").to_pylist())) == 30


def test_ensure_datasets_regenerates_only_when_the_config_changes(tmp_path: Path) -> None:
    paths = ensure_datasets(tmp_path / "data", SMALL)
    mtime = paths["train"].stat().st_mtime_ns
    assert ensure_datasets(tmp_path / "data", SMALL)["train"].stat().st_mtime_ns == mtime
    bigger = ArithmeticDataConfig(seed=3, train_size=126, valid_size=30, test_size=60)
    assert pq.read_table(ensure_datasets(tmp_path / "data", bigger)["train"]).num_rows == 126
    assert sorted(p.name for p in tmp_path.iterdir()) == [".data.lock", "data"]


@pytest.mark.parametrize("kwargs", [{"train_size": -1}, {"levels": (1, 99)}, {"levels": ()}, {"levels": (1, 1)}])
def test_bad_config_is_rejected(kwargs: dict) -> None:
    with pytest.raises(ValueError, match="ArithmeticDataConfig"):
        ArithmeticDataConfig(**kwargs)


def test_a_used_up_level_is_reported() -> None:
    with pytest.raises(ValueError, match="level 1 has only"):
        take_problems(1, "test", 100_000)
