"""Tests for core.budget: the rollout allocation rule (E3_SPEC section 2) and the bounds schedule."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.budget import BudgetBounds, _repair, allocate_rollouts
from core.config import BudgetConfig


def reference_allocation(ranks: list[float], total: int, n_min: int, n_max: int) -> list[int]:
    """The E3 reference rule, written as plainly as the spec states it (no cap on the proportional share)."""
    r = np.asarray(ranks, dtype=np.float64)
    counts = np.full(len(r), float(n_min))
    rank_sum = r.sum()
    weights = r / (rank_sum + 1e-8) if rank_sum > 0 else r
    counts = np.floor(counts + (total - len(r) * n_min) * weights).astype(np.int64)
    deficit = total - int(counts.sum())
    for i in np.argsort(-r, kind="stable"):  # hardest first, ties by earlier position
        if deficit <= 0:
            break
        if counts[i] < n_max:
            give = min(deficit, n_max - int(counts[i]))
            counts[i] += give
            deficit -= give
    return counts.tolist()


def max_share(ranks: list[float], total: int, n_min: int) -> float:
    """The largest proportional share (reference step 3, before the floor), counted above n_min."""
    r = np.asarray(ranks, dtype=np.float64)
    rank_sum = r.sum()
    weights = r / (rank_sum + 1e-8) if rank_sum > 0 else r
    return float(((total - len(r) * n_min) * weights).max())


rank_values = st.one_of(
    st.floats(min_value=0.0, max_value=1.0, allow_nan=False),
    st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0]),  # exact ties
)


@st.composite
def allocation_problems(draw: st.DrawFn) -> tuple[list[float], int, int, int]:
    """A feasible (ranks, total, n_min, n_max)."""
    ranks = draw(st.lists(rank_values, min_size=1, max_size=64))
    n_min = draw(st.integers(1, 8))
    n_max = draw(st.integers(n_min, n_min + 12))
    total = draw(st.integers(len(ranks) * n_min, len(ranks) * n_max))
    return ranks, total, n_min, n_max


@st.composite
def few_level_problems(draw: st.DrawFn) -> tuple[list[float], int, int, int]:
    """A feasible problem whose ranks take only a few distinct values (many ties, as with averaged ranks)."""
    levels = draw(st.lists(st.floats(min_value=0.0, max_value=1.0, allow_nan=False), min_size=1, max_size=4))
    ranks = draw(st.lists(st.sampled_from(levels), min_size=1, max_size=64))
    n_min = draw(st.integers(1, 8))
    n_max = draw(st.integers(n_min, n_min + 12))
    total = draw(st.integers(len(ranks) * n_min, len(ranks) * n_max))
    return ranks, total, n_min, n_max


@st.composite
def uncapped_problems(draw: st.DrawFn) -> tuple[list[float], int, int, int]:
    """A feasible problem with distinct ranks in which no proportional share exceeds n_max (our rule must equal
    the reference)."""
    ranks = draw(st.lists(rank_values, min_size=1, max_size=64, unique=True))
    n_min = draw(st.integers(1, 8))
    total = len(ranks) * n_min + draw(st.integers(0, 8 * len(ranks)))
    n_max = max(n_min + math.ceil(max_share(ranks, total, n_min)), math.ceil(total / len(ranks)))
    n_max += draw(st.integers(0, 3))
    return ranks, total, n_min, n_max


@settings(max_examples=300, deadline=None)
@given(allocation_problems())
def test_counts_sum_to_total_within_bounds_and_grow_with_rank(problem: tuple[list[float], int, int, int]) -> None:
    ranks, total, n_min, n_max = problem
    counts = allocate_rollouts(ranks, total, n_min, n_max)
    assert len(counts) == len(ranks)
    assert sum(counts) == total
    assert all(n_min <= c <= n_max for c in counts)
    for i, j in zip(*np.nonzero(np.subtract.outer(ranks, ranks) < 0), strict=True):
        assert counts[i] <= counts[j], (ranks[i], ranks[j], counts[i], counts[j])


def assert_ties_within_one(ranks: list[float], counts: list[int]) -> None:
    """Questions of equal rank got counts within one of each other, earlier positions never fewer."""
    for level in set(ranks):
        tied = [c for r, c in zip(ranks, counts, strict=True) if r == level]
        assert max(tied) - min(tied) <= 1, (level, tied)
        assert tied == sorted(tied, reverse=True), (level, tied)  # the odd ones go to earlier positions


@settings(max_examples=300, deadline=None)
@given(st.one_of(allocation_problems(), few_level_problems()))
def test_tied_ranks_get_counts_within_one(problem: tuple[list[float], int, int, int]) -> None:
    ranks, total, n_min, n_max = problem
    counts = allocate_rollouts(ranks, total, n_min, n_max)
    assert sum(counts) == total
    assert all(n_min <= c <= n_max for c in counts)
    assert_ties_within_one(ranks, counts)
    for i, j in zip(*np.nonzero(np.subtract.outer(ranks, ranks) < 0), strict=True):
        assert counts[i] <= counts[j], (ranks[i], ranks[j], counts[i], counts[j])


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 64), st.integers(1, 8), st.integers(0, 12), st.floats(0.0, 1.0, allow_nan=False), st.data())
def test_equal_ranks_share_the_total_evenly(
    batch: int, n_min: int, spread: int, rank: float, data: st.DataObject
) -> None:
    n_max = n_min + spread
    total = data.draw(st.integers(batch * n_min, batch * n_max))
    counts = allocate_rollouts([rank] * batch, total, n_min, n_max)
    base, extra = divmod(total, batch)
    assert counts == [base + 1] * extra + [base] * (batch - extra)


def test_paper_batch_of_equal_ranks_gets_the_mean_where_the_reference_does_not() -> None:
    # E3_SPEC section 2 (revised): 64 equal ranks, 512 rollouts, bounds 4..12.
    reference = reference_allocation([0.5] * 64, 512, 4, 12)
    assert sorted(reference, reverse=True) == [12] * 12 + [11] + [7] * 51
    assert allocate_rollouts([0.5] * 64, 512, 4, 12) == [8] * 64


@settings(max_examples=300, deadline=None)
@given(uncapped_problems())
def test_equals_reference_when_no_share_exceeds_n_max(problem: tuple[list[float], int, int, int]) -> None:
    ranks, total, n_min, n_max = problem
    assert n_min + max_share(ranks, total, n_min) <= n_max
    assert allocate_rollouts(ranks, total, n_min, n_max) == reference_allocation(ranks, total, n_min, n_max)


@pytest.mark.parametrize(
    ("ranks", "total", "n_min", "n_max", "expected"),
    [
        # Uniform bounds (epoch 1 of the paper's schedule): the ranks do not matter.
        ([0.0, 0.3, 0.9], 24, 8, 8, [8, 8, 8]),
        # Shares 0, 4-, 8- (just under, because of the 1e-8): floors 4, 7, 11; repair adds to the two hardest.
        ([0.0, 0.5, 1.0], 24, 4, 12, [4, 8, 12]),
        # All ranks 0: no proportional share; the repair spreads the 6 over the one tied level evenly.
        ([0.0, 0.0, 0.0], 30, 8, 12, [10, 10, 10]),
        # Two tied levels: excess 7, shares 0.875 and 2.625 floor to 0 and 2 (counts 4, 4, 6, 6); the deficit 3 goes
        # to the hard level, spread 2 + 1 (earlier position first); the reference would give 8 and 7 as well here.
        ([0.125, 0.125, 0.375, 0.375], 23, 4, 12, [4, 4, 8, 7]),
        # Spec example bounds 4..12: the reference gives the hardest question 14 (see next test); we cap at 12
        # and split its excess 8 over the rest in proportion 0.1 : 0.1 : 0.15 -> floors 6, 6, 7, repair +1.
        ([0.1, 0.1, 0.15, 0.65], 32, 4, 12, [6, 6, 8, 12]),
        # Two rounds of water-filling: both 1.0 questions hit the cap, the 0.01 one takes what is left.
        ([0.0, 0.01, 1.0, 1.0], 20, 2, 6, [2, 6, 6, 6]),
        ([], 0, 4, 12, []),
    ],
)
def test_hand_computed_allocations(ranks: list[float], total: int, n_min: int, n_max: int, expected: list[int]) -> None:
    assert allocate_rollouts(ranks, total, n_min, n_max) == expected


def test_reference_exceeds_n_max_where_ours_is_capped() -> None:
    ranks, total, n_min, n_max = [0.1, 0.1, 0.15, 0.65], 32, 4, 12
    assert max(reference_allocation(ranks, total, n_min, n_max)) == 14
    assert max(allocate_rollouts(ranks, total, n_min, n_max)) == n_max


def test_skewed_paper_sized_batch_is_capped() -> None:
    # 64 questions, 512 rollouts, bounds 4..12; the reference gives each of the 16 hard questions
    # 4 + 256 * 0.9 / (19.2 + 1e-8), just under 16, floored to 15.
    ranks = [0.1] * 48 + [0.9] * 16
    assert max(reference_allocation(ranks, 512, 4, 12)) == 15
    # Ours: the hard ones are capped at 12; the excess 256 - 16*8 = 128 split over 48 equal ranks is 2.67 each,
    # floored to 2 (count 6); the repair spreads the remaining 32 over the 48 tied easy questions, one each to the
    # first 32 (the reference's walk would give the first five 12 and the sixth 8).
    assert allocate_rollouts(ranks, 512, 4, 12) == [7] * 32 + [6] * 16 + [12] * 16


@pytest.mark.parametrize(
    ("ranks", "total", "n_min", "n_max", "message"),
    [
        ([0.5, 0.5], 7, 4, 12, r"total=7 .* B\*n_min=2\*4=8"),
        ([0.5, 0.5], 25, 4, 12, r"total=25 .* B\*n_max=2\*12=24"),
        ([0.5, 0.5], 16, 9, 8, r"n_min=9 > n_max=8"),
        ([0.5, 0.5], 2, 0, 8, r"n_min must be >= 1, got n_min=0"),
        ([0.5, float("nan")], 16, 4, 12, r"\(1, nan\)"),
        ([1.5, 0.5], 16, 4, 12, r"\(0, 1.5\)"),
        ([0.5, -0.1], 16, 4, 12, r"\(1, -0.1\)"),
    ],
)
def test_bad_inputs_raise_with_the_numbers(
    ranks: list[float], total: int, n_min: int, n_max: int, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        allocate_rollouts(ranks, total, n_min, n_max)


def test_repair_removes_a_surplus_from_the_easiest_first() -> None:
    # Unreachable through allocate_rollouts in exact arithmetic; guards against floating-point rounding.
    counts = np.array([8, 8, 8, 8])
    _repair(counts, np.array([0.5, 0.1, 0.9, 0.1]), total=25, n_min=4, n_max=12)
    assert counts.tolist() == [8, 5, 8, 4]  # 7 too many: 4 from the later 0.1, then 3 from the earlier one


def test_bounds_schedule_of_the_paper() -> None:
    bounds = BudgetBounds(n=8, n_low=4, n_high=12, n_update=2)
    seen = [(bounds.n_min, bounds.n_max)]
    for _ in range(3):
        seen.append(bounds.end_epoch())
    assert seen == [(8, 8), (6, 10), (4, 12), (4, 12)]
    assert (bounds.n_min, bounds.n_max) == (4, 12)


def test_bounds_start_wide_and_zero_update() -> None:
    wide = BudgetBounds(8, 4, 12, 2, start_wide=True)
    assert (wide.n_min, wide.n_max) == (4, 12)
    assert wide.end_epoch() == (4, 12)
    fixed = BudgetBounds(8, 4, 12, 0)
    assert fixed.end_epoch() == (8, 8)


def test_bounds_state_round_trip() -> None:
    bounds = BudgetBounds(8, 4, 12, 2)
    bounds.end_epoch()
    restored = BudgetBounds(8, 4, 12, 2)
    restored.load_state_dict(bounds.state_dict())
    assert (restored.n_min, restored.n_max) == (6, 10)
    assert restored.end_epoch() == bounds.end_epoch() == (4, 12)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((8, 9, 12, 2), r"n_low=9, n=8, n_high=12"),
        ((8, 4, 7, 2), r"n_low=4, n=8, n_high=7"),
        ((8, 0, 12, 2), r"n_low=0"),
        ((8, 4, 12, -1), r"n_update=-1"),
    ],
)
def test_bounds_validation(args: tuple[int, int, int, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        BudgetBounds(*args)


def test_bounds_refuse_state_outside_their_limits() -> None:
    bounds = BudgetBounds(8, 6, 10, 2)
    with pytest.raises(ValueError, match=r"n_min=4, n_max=12"):
        bounds.load_state_dict({"n_min": 4, "n_max": 12})
    with pytest.raises(ValueError, match=r"missing keys \['n_max'\]"):
        bounds.load_state_dict({"n_min": 8})
    assert (bounds.n_min, bounds.n_max) == (8, 8)


@pytest.mark.parametrize(
    "config",
    [BudgetConfig(), BudgetConfig(n=6, n_low=2, n_high=9, n_update=3, start_wide=True), BudgetConfig(n_update=0)],
)
def test_bounds_from_config_equal_the_positional_construction(config: BudgetConfig) -> None:
    built = BudgetBounds.from_config(config)
    by_hand = BudgetBounds(config.n, config.n_low, config.n_high, config.n_update, start_wide=config.start_wide)
    for _ in range(4):
        assert (built.n, built.n_min, built.n_max) == (by_hand.n, by_hand.n_min, by_hand.n_max)
        assert built.end_epoch() == by_hand.end_epoch()
    with pytest.raises(ValueError, match=r"n_low=9, n=8, n_high=12"):
        BudgetBounds.from_config(BudgetConfig(n_low=9))
