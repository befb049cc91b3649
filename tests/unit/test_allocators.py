"""The rollout allocators: every one sums to the budget within the bounds; `informative` is optimal (brute force),
symmetric in p and 1 - p, and gives tied questions counts within one; `e3` is the budget rule; `uniform` is GRPO's;
`knapsack` is optimal for Knapsack RL's value (brute force), reads the window, and feeds the never-solved last."""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.allocators import (
    ALLOCATORS,
    QuestionStats,
    e3_allocation,
    informative_allocation,
    informative_gain,
    knapsack_allocation,
    knapsack_gain,
    knapsack_value,
    uniform_allocation,
)
from core.budget import allocate_rollouts


@st.composite
def problems(draw, max_batch: int = 12) -> tuple[list[QuestionStats], int, int, int]:
    """A batch's statistics and a feasible (total, n_min, n_max)."""
    batch = draw(st.integers(0, max_batch))
    stats = []
    for _ in range(batch):
        attempts = draw(st.integers(0, 40))
        stats.append(QuestionStats(attempts, draw(st.integers(0, attempts)), draw(st.floats(0, 1))))
    n_min = draw(st.integers(1, 6))
    n_max = draw(st.integers(n_min, 14))
    total = draw(st.integers(batch * n_min, batch * n_max))
    return stats, total, n_min, n_max


def objective(stats: list[QuestionStats], counts: list[int]) -> float:
    """The plug-in number of groups with at least one right and one wrong answer (posterior-mean accuracies)."""
    return sum(1 - s.success**n - s.failure**n for s, n in zip(stats, counts, strict=True))


@settings(max_examples=300, deadline=None)
@given(problems(), st.sampled_from(sorted(ALLOCATORS)))
def test_every_allocator_sums_to_the_budget_within_the_bounds(problem, name):
    stats, total, n_min, n_max = problem
    counts = ALLOCATORS[name](stats, total, n_min, n_max)
    assert len(counts) == len(stats) and sum(counts) == total
    assert all(n_min <= c <= n_max for c in counts)


@settings(max_examples=150, deadline=None)
@given(problems(max_batch=4))
def test_informative_is_optimal_against_brute_force(problem):
    stats, total, n_min, n_max = problem
    counts = informative_allocation(stats, total, n_min, n_max)
    feasible = (c for c in itertools.product(range(n_min, n_max + 1), repeat=len(stats)) if sum(c) == total)
    best = max(objective(stats, list(c)) for c in feasible)
    # the greedy is exact; the sums it is compared by differ by rounding only (a few ulps of terms below 4)
    assert objective(stats, counts) >= best - 1e-12


def posterior_informative(stats: QuestionStats, n: int) -> Fraction:
    """The posterior expectation, exactly, of the chance that n rollouts hold a right and a wrong answer:
    `1 - E[t^n] - E[(1 - t)^n]`, t ~ Beta(a, b), with `E[t^n] = prod_k (a + k) / (a + b + k)`."""
    a, b = stats.correct + 1, stats.attempts - stats.correct + 1
    right = wrong = Fraction(1)
    for k in range(n):
        right *= Fraction(a + k, a + b + k)
        wrong *= Fraction(b + k, a + b + k)
    return 1 - right - wrong


def test_informative_maximises_the_plug_in_count_not_its_posterior_expectation():
    """An unseen question (p = 1/2) and one right in 3 (p = 2/5), 5 rollouts, 2 to 8 each: the plug-in prefers
    (3, 2), 3/4 + 12/25 = 1.23 against 1/2 + 18/25 = 1.22; the posterior expectation prefers (2, 3),
    1/3 + 3/5 = 14/15 against 1/2 + 2/5 = 9/10."""
    stats = [QuestionStats(0, 0, 0.5), QuestionStats(3, 1, 0.5)]
    counts = informative_allocation(stats, 5, 2, 8)
    assert counts == [3, 2]
    # two terms below 1 each, a few ulps of rounding
    assert objective(stats, [3, 2]) == pytest.approx(1.23, abs=1e-12)
    assert objective(stats, [2, 3]) == pytest.approx(1.22, abs=1e-12)
    posterior = {c: sum(posterior_informative(s, n) for s, n in zip(stats, c, strict=True)) for c in [(3, 2), (2, 3)]}
    assert posterior == {(3, 2): Fraction(9, 10), (2, 3): Fraction(14, 15)}
    for s in stats:  # Jensen: the plug-in never falls below the posterior expectation, and is above it for n >= 2
        assert posterior_informative(s, 1) == 0 and 1 - s.success - s.failure == pytest.approx(0, abs=1e-15)
        for n in range(2, 9):
            assert 1 - s.success**n - s.failure**n > posterior_informative(s, n)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 30), st.data(), st.integers(2, 8), st.integers(1, 4), st.integers(0, 10))
def test_tied_questions_get_counts_within_one(attempts, data, copies, n_min, spread):
    correct = data.draw(st.integers(0, attempts))
    twin = QuestionStats(attempts, correct, 0.5)
    others = [QuestionStats(10, 3, 0.2), QuestionStats(4, 4, 0.9)]
    stats = [*others[:1], *[twin] * copies, *others[1:]]
    n_max = n_min + spread
    total = data.draw(st.integers(len(stats) * n_min, len(stats) * n_max))
    counts = informative_allocation(stats, total, n_min, n_max)
    twins = counts[1 : 1 + copies]
    assert max(twins) - min(twins) <= 1
    assert twins == sorted(twins, reverse=True)  # earlier positions get the odd ones


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 30), st.data(), st.integers(1, 4), st.integers(0, 10))
def test_a_question_and_its_mirror_image_get_the_same_count(attempts, data, n_min, spread):
    correct = data.draw(st.integers(0, attempts))
    question, mirror = QuestionStats(attempts, correct, 0.3), QuestionStats(attempts, attempts - correct, 0.7)
    assert informative_gain(question, 5) == informative_gain(mirror, 5)  # bit-identical, not just close
    stats = [question, QuestionStats(6, 1, 0.5), mirror]
    n_max = n_min + spread
    total = data.draw(st.integers(3 * n_min, 3 * n_max))
    counts = informative_allocation(stats, total, n_min, n_max)
    assert abs(counts[0] - counts[2]) <= 1  # equal gains: within one, the earlier first
    assert counts[0] >= counts[2]


def test_informative_saturates_the_middle_then_feeds_the_hard_questions():
    # p = 41/42, 21/42 and 5/42 (the hard one is less extreme than the easy one: mirror images would tie)
    easy, middle, hard = QuestionStats(40, 40, 0.0), QuestionStats(40, 20, 0.5), QuestionStats(40, 4, 1.0)
    # few rollouts to spare: the one near p = 0.5 gains most from its first extra rollouts
    assert informative_allocation([easy, middle, hard], 3 * 2 + 2, 2, 16) == [2, 4, 2]
    # many to spare: once the middle one is saturated (gain 2^-n), the hard one's slowly falling gain wins
    counts = informative_allocation([easy, middle, hard], 3 * 8, 2, 16)
    assert counts == [4, 6, 14]
    assert informative_gain(hard, counts[2] - 1) >= informative_gain(middle, counts[1])


def test_e3_is_the_budget_rule_and_uniform_is_grpo():
    stats = [QuestionStats(8, c, r) for c, r in [(8, 0.0), (4, 0.25), (2, 0.5), (1, 0.75), (0, 1.0)]]
    assert e3_allocation(stats, 40, 4, 12) == allocate_rollouts([s.rank for s in stats], 40, 4, 12)
    assert uniform_allocation(stats, 40, 4, 12) == [8] * 5
    assert uniform_allocation(stats, 42, 4, 12) == [8, 8, 8, 9, 9]  # the remainder to the hardest


def test_an_unseen_question_is_explored_first():
    unseen, known = QuestionStats(0, 0, 0.5), QuestionStats(20, 19, 0.1)
    assert unseen.success == 0.5 and math.isclose(informative_gain(unseen, 2), 0.25)
    assert informative_allocation([known, unseen], 2 * 2 + 1, 2, 8) == [2, 3]


@pytest.mark.parametrize("name", sorted(ALLOCATORS))
def test_infeasible_budgets_are_named(name):
    stats = [QuestionStats(0, 0, 0.5)] * 3
    with pytest.raises(ValueError, match=r"total=40|B\*n_min|total=40 is above"):
        ALLOCATORS[name](stats, 40, 2, 6)


# -- knapsack -------------------------------------------------------------------------------------------------


@st.composite
def windowed_problems(draw, max_batch: int = 12) -> tuple[list[QuestionStats], int, int, int]:
    """A batch's statistics with windows (a window of at most 16 of each question's attempts; never-solved, unseen
    and always-solved questions all likely) and a feasible (total, n_min, n_max)."""
    batch = draw(st.integers(0, max_batch))
    stats = []
    for _ in range(batch):
        attempts = draw(st.integers(0, 40))
        correct = draw(st.sampled_from([0, attempts, None])) if attempts else 0
        correct = draw(st.integers(0, attempts)) if correct is None else correct
        window = draw(st.integers(0, min(attempts, 16)))
        low, high = max(0, window - (attempts - correct)), min(window, correct)
        stats.append(QuestionStats(attempts, correct, draw(st.floats(0, 1)), window, draw(st.integers(low, high))))
    n_min = draw(st.integers(1, 6))
    n_max = draw(st.integers(n_min, 14))
    total = draw(st.integers(batch * n_min, batch * n_max))
    return stats, total, n_min, n_max


def knapsack_objective(stats: list[QuestionStats], counts: list[int]) -> float:
    """Knapsack RL's summed value, over the questions with a recent success rate in (0, 1)."""
    return sum(
        knapsack_value(s.recent_rate, n)
        for s, n in zip(stats, counts, strict=True)
        if s.recent_rate is not None and 0 < s.recent_rate < 1
    )


def valued(s: QuestionStats) -> bool:
    return s.recent_rate is not None and 0 < s.recent_rate < 1


@settings(max_examples=300, deadline=None)
@given(windowed_problems())
def test_knapsack_sums_to_the_budget_within_the_bounds(problem):
    stats, total, n_min, n_max = problem
    counts = knapsack_allocation(stats, total, n_min, n_max)
    assert len(counts) == len(stats) and sum(counts) == total
    assert all(n_min <= c <= n_max for c in counts)


@settings(max_examples=200, deadline=None)
@given(windowed_problems(max_batch=4))
def test_knapsack_is_optimal_against_brute_force_and_feeds_the_never_solved_last(problem):
    stats, total, n_min, n_max = problem
    counts = knapsack_allocation(stats, total, n_min, n_max)
    feasible = [c for c in itertools.product(range(n_min, n_max + 1), repeat=len(stats)) if sum(c) == total]
    best = max(knapsack_objective(stats, list(c)) for c in feasible)
    assert knapsack_objective(stats, counts) >= best - 1e-12
    # the fallback: nothing beyond n_min leaves the valued questions until they are all at n_max, and nothing goes
    # to the solved questions without a value until the never-solved ones are all at n_max
    extra = [c - n_min for c in counts]
    if any(valued(s) and c < n_max for s, c in zip(stats, counts, strict=True)):
        assert all(e == 0 for s, e in zip(stats, extra, strict=True) if not valued(s))
    if any(not valued(s) and s.correct == 0 and c < n_max for s, c in zip(stats, counts, strict=True)):
        assert all(e == 0 for s, e in zip(stats, extra, strict=True) if not valued(s) and s.correct > 0)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 16), st.data(), st.integers(2, 8), st.integers(1, 4), st.integers(0, 10))
def test_knapsack_gives_tied_questions_counts_within_one(window, data, copies, n_min, spread):
    window_correct = data.draw(st.integers(0, window))
    twin = QuestionStats(20, window_correct, 0.5, window, window_correct)
    others = [QuestionStats(10, 3, 0.2, 10, 3), QuestionStats(4, 0, 0.9, 4, 0)]
    stats = [*others[:1], *[twin] * copies, *others[1:]]
    n_max = n_min + spread
    total = data.draw(st.integers(len(stats) * n_min, len(stats) * n_max))
    twins = knapsack_allocation(stats, total, n_min, n_max)[1 : 1 + copies]
    assert max(twins) - min(twins) <= 1
    assert twins == sorted(twins, reverse=True)  # earlier positions get the odd ones


def test_knapsack_reads_the_window_not_the_history():
    # solved 30 times in 40, but none of the last 8: p = 0 recently, so no value; the other has p = 1/2
    stale, live = QuestionStats(40, 30, 0.1, 8, 0), QuestionStats(40, 20, 0.5, 8, 4)
    assert knapsack_allocation([stale, live], 2 * 2 + 4, 2, 8) == [2, 6]
    # without windows the cumulative rates count: 3/4 and 1/2, both valued
    assert QuestionStats(40, 30, 0.1).recent_rate == 0.75
    assert knapsack_allocation([QuestionStats(40, 30, 0.1), QuestionStats(40, 20, 0.5)], 8, 2, 8) == [3, 5]


def test_knapsack_values_hard_questions_above_easy_ones():
    # p (1 - p)^2 peaks at p = 1/3: a question solved 1 in 4 outweighs one solved 3 in 4 by a factor of 3
    assert knapsack_value(0.25, 4) == pytest.approx(3 * knapsack_value(0.75, 4))
    hard, easy = QuestionStats(16, 4, 0.8, 16, 4), QuestionStats(16, 12, 0.2, 16, 12)
    counts = knapsack_allocation([easy, hard], 2 * 4 + 6, 4, 12)
    assert counts[1] > counts[0]
    for n in range(12):
        assert knapsack_gain(0.25, n) == pytest.approx(knapsack_value(0.25, n + 1) - knapsack_value(0.25, n))


def test_knapsack_fallback_goes_to_the_never_solved_and_unseen_first():
    unseen, never, always, live = (
        QuestionStats(0, 0, 0.5, 0, 0),
        QuestionStats(8, 0, 1.0, 8, 0),
        QuestionStats(8, 8, 0.0, 8, 8),
        QuestionStats(8, 4, 0.5, 8, 4),
    )
    # live takes up to n_max = 6; the 4 left go to unseen and never (2 each); always stays at n_min
    assert knapsack_allocation([unseen, never, always, live], 4 * 2 + 8, 2, 6) == [4, 4, 2, 6]
    # with nothing valued and nothing never solved, the rest is spread evenly, earlier positions first
    assert knapsack_allocation([always, always, always], 3 * 2 + 4, 2, 6) == [4, 3, 3]
    # the first step: every question unseen, so uniform
    assert knapsack_allocation([unseen] * 4, 4 * 8 + 2, 4, 12) == [9, 9, 8, 8]


def test_window_counts_must_be_consistent():
    with pytest.raises(ValueError, match="question stats"):
        knapsack_allocation([QuestionStats(4, 1, 0.5, 4, 2)], 4, 2, 6)
    with pytest.raises(ValueError, match="question stats"):
        knapsack_allocation([QuestionStats(4, 1, 0.5, 5, 1)], 4, 2, 6)
    with pytest.raises(ValueError, match="question stats"):
        knapsack_allocation([QuestionStats(4, 1, 0.5, 4, None)], 4, 2, 6)
