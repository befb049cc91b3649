"""Countdown puzzles, the exhaustive solver and the dataset splits: levels, worked solutions, determinism,
disjointness, schema."""

import itertools
from fractions import Fraction
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tasks.countdown.expression import canonical_key, evaluate, leaves, parse, render
from tasks.countdown.generate import CountdownDataConfig, ensure_datasets, generate_splits, question_id
from tasks.countdown.problems import LEVELS, Puzzle, take_puzzles, worked_solution
from tasks.countdown.reward import is_correct
from tasks.countdown.solver import has_integer_steps, solutions_by_target, solve

SMALL = CountdownDataConfig(seed=3, train_size=60, valid_size=12, test_size=24)


def brute_force_values(numbers: tuple[int, ...]) -> set[Fraction]:
    """Every value of every expression over ``numbers`` (each once), by splitting the multiset in two: an
    independent oracle for the solver's reach."""
    if len(numbers) == 1:
        return {Fraction(numbers[0])}
    values = set()
    for size in range(1, len(numbers)):
        for left_idx in itertools.combinations(range(len(numbers)), size):
            left = tuple(numbers[i] for i in left_idx)
            right = tuple(numbers[i] for i in range(len(numbers)) if i not in left_idx)
            for a in brute_force_values(left):
                for b in brute_force_values(right):
                    values |= {a + b, a - b, a * b} | ({a / b} if b else set())
    return values


@pytest.mark.parametrize("numbers", [(3, 5, 7, 8), (1, 1, 2, 12), (2, 9, 11)])
def test_the_solver_reaches_every_integer_target_and_only_solutions(numbers) -> None:
    found = solutions_by_target(numbers)
    reachable = {int(v) for v in brute_force_values(numbers) if v.denominator == 1 and 1 <= v <= 200}
    assert set(found) == reachable
    for target, trees in found.items():
        keys = [canonical_key(t) for t in trees]
        assert len(set(keys)) == len(keys)  # distinct solutions
        for tree in trees:
            assert evaluate(tree) == target and sorted(leaves(tree)) == sorted(numbers)


def test_solve_counts_distinct_solutions() -> None:
    assert {render(t) for t in solve((3, 5, 7, 8), 24)} == {"(3*7)-(5-8)", "(5*7)-(3+8)", "3-(7*(5-8))", "3+(7*(8-5))"}
    assert solve((1, 1), 5) == ()
    assert [render(t) for t in solve((4, 4), 0)] == ["4-4"]  # targets outside the cache's range still solve


def test_worked_solution_shows_integer_steps_and_ends_with_the_answer() -> None:
    tree = parse("((8-7)+5)*3")
    assert worked_solution(tree) == "8-7=1\n1+5=6\n6*3=18\nAnswer: ((8-7)+5)*3"
    assert is_correct(worked_solution(tree), "3 5 7 8 -> 18")
    assert not has_integer_steps(parse("6/(1-(3/4))"))
    with pytest.raises(ValueError, match="integer steps"):
        worked_solution(parse("6/(1-(3/4))"))


@pytest.mark.parametrize("level", sorted(LEVELS))
def test_every_level_meets_its_spec_and_its_solutions_are_correct(level: int) -> None:
    assert len(LEVELS) >= 5
    spec = LEVELS[level]
    for puzzle in take_puzzles(level, "test", 8):
        assert len(puzzle.numbers) == spec.sources and all(1 <= n <= spec.max_source for n in puzzle.numbers)
        assert spec.accepts(puzzle.target, len(puzzle.solutions()))
        assert puzzle.integer_solutions()
        for tree in puzzle.integer_solutions():
            assert is_correct(worked_solution(tree), puzzle.ground_truth)


def test_levels_get_harder() -> None:
    """Fewer sources, smaller targets and more solutions first."""
    specs = [LEVELS[level] for level in sorted(LEVELS)]
    assert [s.sources for s in specs] == sorted(s.sources for s in specs)
    assert specs[0].min_solutions > specs[-1].max_solutions
    assert specs[-1].max_solutions == 1 and specs[-1].sources == 4


def test_splits_are_deterministic_disjoint_and_sized() -> None:
    first, second = generate_splits(SMALL), generate_splits(SMALL)
    assert first == second
    questions = {name: {p.question for p in split} for name, split in first.items()}
    assert {name: len(q) for name, q in questions.items()} == {"train": 60, "valid": 12, "test": 24}
    assert not questions["train"] & questions["valid"] and not questions["train"] & questions["test"]
    assert not questions["valid"] & questions["test"]


def test_split_files_follow_the_rlvr_schema(tmp_path: Path) -> None:
    paths = ensure_datasets(tmp_path / "data", SMALL)
    rows = pq.read_table(paths["train"]).to_pylist()
    assert len(rows) == 60
    row = rows[0]
    assert row["data_source"] == f"countdown/L{row['extra_info']['level']}" and row["ability"] == "countdown"
    assert row["id"] == question_id(row["prompt"][0]["content"])
    assert 0 <= row["rank"] < 1
    puzzle = Puzzle(row["extra_info"]["level"], *_parse_question(row["prompt"][0]["content"]))
    assert row["reward_model"]["ground_truth"] == puzzle.ground_truth
    assert puzzle.solutions()


def _parse_question(question: str) -> tuple[tuple[int, ...], int]:
    """(numbers, target) from ``Numbers 3 5 7 8. Make 24.``."""
    numbers, target = question.removeprefix("Numbers ").removesuffix(".").split(". Make ")
    return tuple(int(n) for n in numbers.split()), int(target)
