"""Countdown search traces: every step is right arithmetic on numbers that are left, an attempt copies the target and
says `no` exactly when it misses, attempts never repeat, and the answer line is the last attempt (the reaching one)."""

import itertools
import random
import re

import pytest

from tasks.countdown.expression import evaluate, leaves, parse
from tasks.countdown.problems import LEVELS, Puzzle, unique_puzzles
from tasks.countdown.reward import ANSWER_PREFIX, is_correct
from tasks.countdown.search import CHECK, MISS, attempts_allowed, integer_steps, random_attempt, search_trace

STEP = re.compile(r"(\d+)([-+*/])(\d+)=(\d+)")
OPERATIONS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b, "/": lambda a, b: a / b}


def replay(numbers: tuple[int, ...], target: int, line: str) -> tuple[int, bool]:
    """Check one attempt line against the puzzle: each step takes two numbers that are left, computes right and
    leaves a positive integer, and the target is copied after them; returns (the attempt's last value, whether the
    line says it missed)."""
    missed = line.endswith(f" {MISS}")
    body, copied = line.removesuffix(f" {MISS}").rsplit(f" {CHECK} ", 1)
    assert copied == str(target), line
    steps = body.split(",")
    left = list(numbers)
    for step in steps:
        match = STEP.fullmatch(step)
        assert match, f"malformed step {step!r} in {line!r}"
        a, op, b, result = int(match[1]), match[2], int(match[3]), int(match[4])
        assert a >= b and OPERATIONS[op](a, b) == result > 0, step
        for used in (a, b):
            assert used in left, f"{step}: {used} is not left in {left}"
            left.remove(used)
        left.append(result)
    assert len(left) == 1
    return left[0], missed


def operation_values(tree) -> list[int]:
    """The value of every operation in ``tree``."""
    if isinstance(tree, int):
        return []
    return [*operation_values(tree.left), *operation_values(tree.right), int(evaluate(tree))]


def puzzles(level: int, count: int) -> list[Puzzle]:
    return list(itertools.islice(unique_puzzles(level, "search-test"), count))


@pytest.mark.parametrize("level", sorted(LEVELS))
def test_traces_check_every_attempt_and_answer_with_the_last_one(level: int) -> None:
    rng = random.Random(level)
    for puzzle in puzzles(level, 25):
        trace = search_trace(puzzle.numbers, puzzle.target, rng, max_steps=10)
        allowed = 5 if len(puzzle.numbers) == 3 else 3
        *attempts, answer_line = trace.split("\n")
        assert 1 <= len(attempts) <= allowed and answer_line.startswith(f"{ANSWER_PREFIX} ")
        assert len(set(line.removesuffix(f" {MISS}") for line in attempts)) == len(attempts), trace
        results = [replay(puzzle.numbers, puzzle.target, line) for line in attempts]
        assert all(missed == (value != puzzle.target) for value, missed in results), trace
        assert all(missed for _, missed in results[:-1]), "the trace goes on after reaching the target"
        answer = parse(answer_line.removeprefix(f"{ANSWER_PREFIX} "))
        assert sorted(leaves(answer)) == sorted(puzzle.numbers)
        reached = not results[-1][1]
        assert is_correct(trace, puzzle.ground_truth) == reached
        assert reached or len(attempts) == allowed
        # the answer is the last attempt: its operations make the values that attempt's steps made
        steps = attempts[-1].split(f" {CHECK} ")[0].split(",")
        assert sorted(operation_values(answer)) == sorted(int(step.rsplit("=", 1)[1]) for step in steps)


def test_the_last_step_is_the_one_nearest_the_target() -> None:
    rng = random.Random(0)
    numbers, target = (2, 3, 4), 10
    for _ in range(50):
        attempt = random_attempt(numbers, target, rng)
        value, _ = replay(numbers, target, attempt.line(target))
        assert value == attempt.value == evaluate(attempt.tree)
        # the two numbers left before the last step, and every last step they allow
        *_, last = attempt.steps
        a, b = (int(x) for x in STEP.fullmatch(last).group(1, 3))
        best = min(abs(v - target) for _, (v, _) in integer_steps((a, a), (b, b)))
        assert abs(attempt.value - target) == best


def test_integer_steps_keep_to_positive_integers() -> None:
    assert [line for line, _ in integer_steps((3, 3), (12, 12))] == ["12+3=15", "12*3=36", "12-3=9", "12/3=4"]
    assert [line for line, _ in integer_steps((5, 5), (5, 5))] == ["5+5=10", "5*5=25", "5/5=1"]
    assert [line for line, _ in integer_steps((7, 7), (2, 2))] == ["7+2=9", "7*2=14", "7-2=5"]


def test_a_trace_is_deterministic_for_a_seed_and_varies_across_seeds() -> None:
    numbers, target = (1, 4, 6, 8), 24
    assert search_trace(numbers, target, random.Random(5), 12) == search_trace(numbers, target, random.Random(5), 12)
    traces = {search_trace(numbers, target, random.Random(seed), 12) for seed in range(20)}
    answers = {trace.rsplit("\n", 1)[1] for trace in traces if is_correct(trace, "1 4 6 8 -> 24")}
    assert len(answers) >= 2, "random attempts should find different solutions"


def test_few_distinct_attempts_end_the_trace_early_and_bad_limits_are_refused() -> None:
    # two numbers leave one attempt: the last step nearest the target (1+1=2 of 1+1, 1*1, 1/1 for 5)
    trace = search_trace((1, 1), 5, random.Random(0), max_steps=12)
    assert trace == f"1+1=2 {CHECK} 5 {MISS}\n{ANSWER_PREFIX} 1+1" and not is_correct(trace, "1 1 -> 5")
    with pytest.raises(ValueError, match="max_steps"):
        search_trace((1, 2, 3), 6, random.Random(0), max_steps=0)
    assert [attempts_allowed(n, 12) for n in (2, 3, 4, 5)] == [12, 6, 4, 3] and attempts_allowed(4, 2) == 1


def test_the_warm_start_shows_search_traces_or_worked_solutions_and_refuses_other_formats() -> None:
    from tasks.countdown.build_base import BasePolicyConfig, training_responses
    from tasks.countdown.problems import worked_solution

    puzzle = puzzles(3, 1)[0]
    traces = training_responses(puzzle, BasePolicyConfig(solutions_per_puzzle=8))
    assert 1 <= len(traces) <= 8 and len(set(traces)) == len(traces)
    assert traces == training_responses(puzzle, BasePolicyConfig(solutions_per_puzzle=8))  # seeded
    for trace in traces:
        *attempts, _ = trace.split("\n")
        assert len(attempts) <= 3  # 10 steps: three attempts on four numbers
    worked = training_responses(puzzle, BasePolicyConfig(response_format="worked", solutions_per_puzzle=2))
    assert worked == [worked_solution(tree) for tree in puzzle.integer_solutions()[:2]]
    with pytest.raises(ValueError, match="response_format"):
        BasePolicyConfig(response_format="essay")
    with pytest.raises(ValueError, match="max_steps"):
        BasePolicyConfig(max_steps=0)
