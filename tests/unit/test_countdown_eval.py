"""Scoring a countdown policy's samples: correctness, pass@k per level, distinct valid expressions, the targets."""

import pytest

from tasks.countdown.eval_base import first_per_level, select_rows, summarize, targets, uniform_distinct_reference
from tasks.countdown.policy_eval import (
    accuracy_by_level,
    mean_distinct_on_solved,
    pass_at_k_by_level,
    score_samples,
)

TRUTH = "3 5 7 8 -> 24"


def test_distinct_counts_canonical_forms_of_correct_answers_only() -> None:
    samples = [
        "Answer: (3*7)-(5-8)",
        "Answer: 3*7-(5-8)",  # the same expression, other parentheses
        "Answer: (5*7)-(3+8)",
        "Answer: (8+3)-(5*7)",  # wrong value
        "garbage",
    ]
    scored = score_samples(samples, TRUTH, level=4)
    assert scored.correct == (True, True, True, False, False)
    assert scored.distinct_solutions(5) == 2 and scored.distinct_solutions(2) == 1
    assert mean_distinct_on_solved([scored], 5) == (2.0, 1)
    unsolved = score_samples(["Answer: 1"], TRUTH, level=4)
    assert mean_distinct_on_solved([scored, unsolved], 5) == (2.0, 1)  # only solved puzzles count
    assert mean_distinct_on_solved([unsolved], 5) == (0.0, 0)


def test_accuracy_and_pass_at_k_per_level() -> None:
    easy = score_samples(["Answer: (3*7)-(5-8)"] * 3 + ["x"], TRUTH, level=1)
    hard = score_samples(["x"] * 3 + ["Answer: (5*7)-(3+8)"], TRUTH, level=6)
    never = score_samples(["x"] * 4, TRUTH, level=6)
    assert accuracy_by_level([easy, hard, never]) == {1: 0.75, 6: 0.125}
    assert pass_at_k_by_level([easy, hard, never], 4) == {1: 1.0, 6: 0.5}
    assert pass_at_k_by_level([hard], 1) == {6: 0.25}


def test_summary_and_targets() -> None:
    per_level = {"1": {"pass@1": 0.7, "pass@64": 1.0}, "6": {"pass@1": 0.05, "pass@64": 0.4}}
    verdicts = targets(per_level, distinct=2.5)
    assert all(v["met"] for v in verdicts.values())
    assert verdicts["hardest pass@64 >= 3 x pass@1"]["value"] == pytest.approx(8.0)
    per_level["6"]["pass@1"] = 0.2
    verdicts = targets(per_level, distinct=1.5)
    assert not verdicts["hardest pass@1 <= 0.1"]["met"] and not verdicts["hardest pass@64 >= 3 x pass@1"]["met"]
    assert not verdicts["distinct valid among 16 on solved >= 2"]["met"]
    scored = [score_samples(["Answer: (3*7)-(5-8)"] * 64, TRUTH, level) for level in (1, 6)]
    result = summarize(scored, 64)
    assert result["per_level"]["1"] == {"puzzles": 1, "pass@1": 1.0, "pass@8": 1.0, "pass@16": 1.0, "pass@64": 1.0}
    assert result["distinct_on_solved"]["mean"] == 1.0 and "targets" in result
    some = [score_samples(["x"] * 23 + ["Answer: (3*7)-(5-8)"], TRUTH, 1), score_samples(["x"] * 24, TRUTH, 1)]
    assert summarize(some, 24)["per_level"]["1"]["pass@24"] == 0.5  # pass@samples: the share any sample solves


def test_first_per_level_keeps_file_order() -> None:
    rows = [{"extra_info": {"level": level}, "i": i} for i, level in enumerate([1, 2, 1, 1, 2])]
    assert [r["i"] for r in first_per_level(rows, 2)] == [0, 1, 2, 4]
    assert len(first_per_level(rows, 0)) == 5
    assert [r["i"] for r in select_rows(rows, 2, first=2)] == [0, 1]  # a run's held-out set: the first rows
    assert select_rows(rows, 2) == first_per_level(rows, 2)
    with pytest.raises(ValueError, match="--first must be >= 1"):
        select_rows(rows, 2, first=0)


def test_the_distinct_reference_spreads_the_policys_correct_samples_uniformly_over_the_solutions() -> None:
    four = score_samples(["Answer: (3*7)-(5-8)"] * 2 + ["x"] * 2, TRUTH, level=4)  # 2 correct of 4; 4 solutions
    one = score_samples(["Answer: (3*7)-(5-8)"] * 3 + ["x"], TRUTH, level=6)  # 3 correct, as if of 1 solution
    never = score_samples(["x"] * 4, TRUTH, level=6)
    # two draws over four solutions: 4 (1 - (3/4)^2) = 1.75 distinct expected; one solution: 1 whatever the draws
    assert uniform_distinct_reference([four, one, never], [4, 1, 4], first=4) == pytest.approx((1.75 + 1) / 2)
    assert uniform_distinct_reference([four], [4], first=1) == pytest.approx(1.0)  # one draw: one distinct
    assert uniform_distinct_reference([never], [4], first=4) == 0.0
    result = summarize([four, one], 4, solution_counts=[4, 1])
    assert result["distinct_on_solved"]["if_uniform_over_solutions"] == pytest.approx(1.375)
    assert "if_uniform_over_solutions" not in summarize([four], 4)["distinct_on_solved"]
