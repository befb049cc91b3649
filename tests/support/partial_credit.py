"""Reward functions with partial credit and bonuses, for tests (importable as `tests.support.partial_credit:<name>`
by the reward scorer's spawned worker processes).

The completion's last whitespace-separated word is read as an integer answer:
- the exact answer, in a short completion: reward 1.2 (the answer plus a brevity bonus), correct;
- the exact answer, in a verbose completion (over `VERBOSE_CHARS` characters): reward 0.8, correct;
- an answer off by one (a near miss): reward 0.5, not correct;
- anything else: reward 0.0, not correct.
So reward and correctness disagree both ways: 0.8 is correct although below 1, and 0.5 is partial credit for a
wrong answer.
"""

from __future__ import annotations

from core.messages import RewardResult

VERBOSE_CHARS = 20
"""Completions longer than this lose the brevity bonus."""

EXACT = "Answer: {}"
"""A short exact answer (reward 1.2), formatted with the ground truth."""
VERBOSE = "Let me think about it at length. Answer: {}"
"""A verbose exact answer (reward 0.8), formatted with the ground truth."""


def partial_credit(completion: str, ground_truth: str) -> RewardResult:
    """The reward and verdict described in the module docstring, as a `RewardResult`."""
    try:
        answer = int(completion.split()[-1])
    except (ValueError, IndexError):
        return RewardResult(0.0, False)
    target = int(ground_truth)
    if answer == target:
        return RewardResult(1.2 if len(completion) <= VERBOSE_CHARS else 0.8, True)
    if abs(answer - target) == 1:
        return RewardResult(0.5, False)
    return RewardResult(0.0, False)


def partial_credit_tuple(completion: str, ground_truth: str) -> tuple[float, bool]:
    """`partial_credit` as a plain `(reward, correct)` tuple."""
    reward, correct = partial_credit(completion, ground_truth)
    return (reward, correct)


def partial_credit_float(completion: str, ground_truth: str) -> float:
    """`partial_credit`'s reward alone: correctness is then left to `reward.correct_threshold`."""
    return partial_credit(completion, ground_truth).reward


BAD_RETURNS: dict[str, object] = {
    "none": None,
    "text": "1.0",
    "int-verdict": (1.0, 1),
    "triple": (1.0, True, 0.0),
    "nan": float("nan"),
}
"""What `bad_return` answers for each completion text: values outside the reward contract."""


def bad_return(completion: str, ground_truth: str) -> object:
    """Breaks the reward contract: `BAD_RETURNS[completion]` for the texts it names, else a valid 0.0."""
    return BAD_RETURNS.get(completion, 0.0)
