"""pass@k / mean@k against hand-computed values and the closed form with exact binomials."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.passk import mean_at_k, pass_at_k, summarize


@pytest.mark.parametrize(
    ("n", "c", "k", "expected"),
    [
        (10, 0, 1, 0.0),  # nothing correct
        (10, 0, 10, 0.0),
        (10, 10, 1, 1.0),  # everything correct
        (10, 3, 1, 0.3),  # pass@1 = c / n
        (4, 1, 2, 0.5),  # 1 - C(3,2)/C(4,2) = 1 - 3/6
        (5, 2, 2, 0.7),  # 1 - C(3,2)/C(5,2) = 1 - 3/10
        (10, 2, 3, 64 / 120),  # 1 - C(8,3)/C(10,3) = 1 - 56/120
        (5, 3, 3, 1.0),  # n - c < k: every 3 samples include a correct one
        (1000, 1, 500, 0.5),  # one correct sample of 1000 is among 500 drawn half the time
    ],
)
def test_pass_at_k_hand_computed(n: int, c: int, k: int, expected: float) -> None:
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 300).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n), st.integers(1, n))))
def test_pass_at_k_matches_exact_binomials(nck: tuple[int, int, int]) -> None:
    n, c, k = nck
    exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
    assert pass_at_k(n, c, k) == pytest.approx(float(exact), abs=1e-9)


def test_pass_at_k_is_stable_for_huge_n() -> None:
    # C(10^6, 5*10^5) overflows floats; the product form does not.
    assert pass_at_k(1_000_000, 1, 500_000) == pytest.approx(0.5, abs=1e-9)
    assert pass_at_k(1_000_000, 0, 500_000) == 0.0


def test_pass_at_k_grows_with_k_and_c() -> None:
    values_k = [pass_at_k(16, 3, k) for k in range(1, 17)]
    values_c = [pass_at_k(16, c, 4) for c in range(17)]
    assert values_k == sorted(values_k) and values_k[-1] == 1.0
    assert values_c == sorted(values_c) and values_c[0] == 0.0


def test_mean_at_k_is_c_over_n() -> None:
    assert mean_at_k(8, 2, 1) == 0.25
    assert mean_at_k(8, 2, 8) == 0.25


@pytest.mark.parametrize(("n", "c", "k"), [(4, 5, 1), (4, -1, 1), (4, 2, 0), (4, 2, 5), (0, 0, 1)])
def test_invalid_counts_raise_with_values(n: int, c: int, k: int) -> None:
    with pytest.raises(ValueError, match=f"n={n}"):
        pass_at_k(n, c, k)
    with pytest.raises(ValueError, match=f"n={n}"):
        mean_at_k(n, c, k)


def test_summarize_per_source_and_overall() -> None:
    results = {
        "aime": [[True, False, False, False], [False, False, False, False]],  # c = 1, 0 of n = 4
        "math": [[True, True, False, False]],  # c = 2 of n = 4
    }
    summary = summarize(results, ks=[2, 1])
    # pass@2: 1 - C(3,2)/C(4,2) = 0.5 for c=1; 0 for c=0; 1 - C(2,2)/C(4,2) = 5/6 for c=2.
    assert summary["aime/pass@1"] == pytest.approx(0.125)
    assert summary["aime/pass@2"] == pytest.approx(0.25)
    assert summary["aime/mean@2"] == pytest.approx(0.125)
    assert summary["math/pass@2"] == pytest.approx(5 / 6)
    assert summary["math/mean@1"] == pytest.approx(0.5)
    assert summary["all/pass@2"] == pytest.approx((0.5 + 0 + 5 / 6) / 3)
    assert summary["all/mean@1"] == pytest.approx((0.25 + 0 + 0.5) / 3)
    assert summary["aime/n_questions"] == 2 and summary["all/n_questions"] == 3
    assert len(summary) == 3 * (2 * 2 + 1)


def test_summarize_rejects_too_few_samples_naming_the_question() -> None:
    with pytest.raises(ValueError, match=r"'amc' question 1 has 2 samples < k=4"):
        summarize({"amc": [[True] * 4, [False] * 2]}, ks=[1, 4])


def test_summarize_rejects_empty_inputs() -> None:
    with pytest.raises(ValueError, match="no k"):
        summarize({"amc": [[True]]}, ks=[])
    with pytest.raises(ValueError, match="'amc' has no questions"):
        summarize({"amc": []}, ks=[1])
    with pytest.raises(ValueError, match="may not be named 'all'"):
        summarize({"all": [[True]]}, ks=[1])
