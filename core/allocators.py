"""Rollout allocators: how a step's fixed budget of responses is shared over its questions (`budget.allocator`).

Every allocator sees the batch's questions' difficulty statistics (`QuestionStats`: attempts and correct answers
so far in the difficulty table, and the current rank) and the step's `total` and bounds, and returns one count per
question, in batch order, with `n_min <= count <= n_max` and `sum == total`. Questions with equal statistics get
counts within one of each other (E3_SPEC section 2, revised), earlier positions the odd ones.

- `e3`: E3's rule (E3_SPEC section 2): shares in proportion to the difficulty rank (`core.budget`).
- `uniform`: GRPO's: every question `total // B`, the remainder one each to the hardest questions.
- `informative`: maximise a plug-in estimate of the number of groups that carry a gradient, i.e. hold at least one
  right and one wrong answer: `sum_i 1 - p_i^n_i - q_i^n_i`, with `p_i` the posterior mean of question i's
  accuracy under a uniform Beta(1, 1) prior, `p = (correct + 1) / (attempts + 2)`, and `q = (attempts - correct +
  1) / (attempts + 2)` its failure probability (computed so, not as `1 - p`, so that a question and its mirror
  image get bit-identical gains). The objective is separable and, for p in (0, 1), strictly concave in n: the
  gain of one more rollout, `p^n q + q^n p`, falls with n. Greedy marginal gains from `n_min` are therefore
  exactly optimal under the box and sum constraints.

  The plug-in is the expected count *if each question's accuracy were exactly its posterior mean*. It is not the
  posterior expectation of the count, `sum_i 1 - E[t_i^n_i] - E[(1 - t_i)^n_i]` with
  `t_i ~ Beta(correct + 1, attempts - correct + 1)`: `x^n` is convex, so `E[t^n] >= p^n` (equal only for
  n <= 1) and the plug-in overstates each group's chance, the more the fewer attempts a question has (an unseen
  question with 2 rollouts: 1/2 against 1/3). The two objectives can prefer different allocations
  (`tests/unit/test_allocators.py` has one); this module maximises the plug-in.

- `knapsack`: Knapsack RL (arXiv 2509.25849): n rollouts of a question with success rate p are worth
  `v(n) = (1 - p^n - (1 - p)^n) * p (1 - p)^2` (the chance of a gradient times the information of one). p is the
  empirical rate of the question's last `budget.p_window` outcomes (`window_attempts` / `window_correct`; the
  cumulative counts where the caller gives no window). A question with no outcome yet, or p in {0, 1}, has
  `v = 0` for every n and gets `n_min`; the others are filled greedily by marginal value, exactly optimal since
  `v` is concave in n for p in (0, 1) (its gain `p (1 - p)^2 (p^n q + q^n p)` falls with n). The greedy stops only
  when those questions are at `n_max`; what remains goes to the questions never solved (`correct == 0`, unseen
  ones included), evenly, then to any other question below `n_max`, evenly (so the sum is always `total`). At the
  first step every question is unseen: `knapsack` is then `uniform` without its rank tie-break.

What the `informative` objective implies: a question near p = 0.5 has the largest first gains, but they fall
fast (`~2^-n`); a hard question (p small) keeps a gain of about `(1 - p)^n p`, which falls slowly. Once the
questions near 0.5 are saturated the hard ones get the rollouts, as E3 intends, by a measured gain rather than a
rank, and so do the easy ones: the objective is symmetric in p and 1 - p, so a question solved 9 times in 10 is
worth as much as one solved once in 10. In the ablation (bench/results/ablation.md) the last epoch gave the
easiest quarter of the ranks 9.2 rollouts, the hardest 8.5 and the middle ranks 5.9. An unseen question has
p = 0.5, the largest first gain: it is explored first. The prior is the uniform Beta(1, 1) (Laplace's rule of
succession): one pseudo-success and one pseudo-failure, so no question is ever judged certain (p in (0, 1)
always, which the concavity needs).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from core.budget import allocate_rollouts


@dataclass(frozen=True)
class QuestionStats:
    """What the difficulty table knows of one question when its step's budget is allocated."""

    attempts: int
    """Rollouts of this question observed so far."""
    correct: int
    """Of those, the correct ones."""
    rank: float
    """Its difficulty rank in [0, 1] (0 = easiest)."""
    window_attempts: int | None = None
    """Rollouts among its last `budget.p_window` outcomes (None: the caller keeps no window)."""
    window_correct: int | None = None
    """Of those, the correct ones."""

    @property
    def recent_rate(self) -> float | None:
        """The empirical success rate of the window (of all attempts without one); None with no outcome yet."""
        attempts, correct = self.window_attempts, self.window_correct
        if attempts is None or correct is None:
            attempts, correct = self.attempts, self.correct
        return correct / attempts if attempts else None

    @property
    def success(self) -> float:
        """Posterior mean accuracy under a uniform Beta(1, 1) prior."""
        return (self.correct + 1) / (self.attempts + 2)

    @property
    def failure(self) -> float:
        """Posterior mean error rate (`1 - success`, computed from the counts)."""
        return (self.attempts - self.correct + 1) / (self.attempts + 2)


Allocator = Callable[[Sequence[QuestionStats], int, int, int], list[int]]
"""`allocator(stats, total, n_min, n_max)`: one count per question, within the bounds, summing to `total`."""


def _check(stats: Sequence[QuestionStats], total: int, n_min: int, n_max: int) -> None:
    """Raise ValueError naming the numbers when no allocation can satisfy the bounds and the sum."""
    batch = len(stats)
    if not 1 <= n_min <= n_max:
        raise ValueError(f"bounds must satisfy 1 <= n_min <= n_max, got n_min={n_min}, n_max={n_max}")
    if not batch * n_min <= total <= batch * n_max:
        raise ValueError(
            f"total={total} must lie in [B*n_min, B*n_max] = [{batch * n_min}, {batch * n_max}] for B={batch}"
        )
    bad = [(i, s) for i, s in enumerate(stats) if not 0 <= s.correct <= s.attempts or not _window_ok(s)]
    if bad:
        raise ValueError(
            f"question stats need 0 <= correct <= attempts (and a consistent window); bad (position, stats): {bad[:5]}"
        )


def _window_ok(stats: QuestionStats) -> bool:
    """Whether the window counts are both None, or `0 <= window_correct <= window_attempts <= attempts`."""
    if stats.window_attempts is None and stats.window_correct is None:
        return True
    if stats.window_attempts is None or stats.window_correct is None:
        return False
    window_attempts, window_correct = stats.window_attempts, stats.window_correct
    return 0 <= window_correct <= window_attempts <= stats.attempts and window_correct <= stats.correct


def e3_allocation(stats: Sequence[QuestionStats], total: int, n_min: int, n_max: int) -> list[int]:
    """E3's rule: counts in proportion to the difficulty rank, within the bounds (`core.budget.allocate_rollouts`)."""
    return allocate_rollouts([s.rank for s in stats], total, n_min, n_max)


def uniform_allocation(stats: Sequence[QuestionStats], total: int, n_min: int, n_max: int) -> list[int]:
    """GRPO's rule: `total // B` each; the `total % B` left over go one each to the hardest questions (highest
    rank, earlier position on ties)."""
    _check(stats, total, n_min, n_max)
    if not stats:
        return []
    base, extra = divmod(total, len(stats))
    hardest = sorted(range(len(stats)), key=lambda i: (-stats[i].rank, i))[:extra]
    counts = [base] * len(stats)
    for i in hardest:
        counts[i] += 1
    return counts


def informative_gain(stats: QuestionStats, n: int) -> float:
    """How much the chance that a group of `n` rollouts holds both a right and a wrong answer grows with one more
    rollout: `f(n + 1) - f(n)` with `f(n) = 1 - p^n - q^n`, which is `p^n q + q^n p`."""
    p, q = stats.success, stats.failure
    return p**n * q + q**n * p


def informative_allocation(stats: Sequence[QuestionStats], total: int, n_min: int, n_max: int) -> list[int]:
    """Counts that maximise the plug-in objective `sum_i 1 - p_i^n_i - q_i^n_i`: the chance that a group of `n_i`
    rollouts holds at least one right and one wrong answer, with question i's posterior-mean accuracy `p_i` put in
    for its unknown accuracy (not the posterior expectation of that chance; see the module docstring). Exact, by
    greedy marginal gains from `n_min`: each rollout goes to the question whose next one gains most (ties: the
    question with fewer rollouts, then the earlier position)."""
    _check(stats, total, n_min, n_max)
    counts = [n_min] * len(stats)
    heap = [(-informative_gain(s, n_min), n_min, i) for i, s in enumerate(stats) if n_min < n_max]
    heapq.heapify(heap)
    for _ in range(total - n_min * len(stats)):
        _, n, i = heapq.heappop(heap)
        counts[i] = n + 1
        if n + 1 < n_max:
            heapq.heappush(heap, (-informative_gain(stats[i], n + 1), n + 1, i))
    return counts


def knapsack_value(p: float, n: int) -> float:
    """Knapsack RL's value of `n` rollouts of a question with success rate `p`: `(1 - p^n - q^n) * p q^2`."""
    q = 1.0 - p
    return (1.0 - p**n - q**n) * p * q * q


def knapsack_gain(p: float, n: int) -> float:
    """`knapsack_value(p, n + 1) - knapsack_value(p, n)`, computed as `p q^2 (p^n q + q^n p)` (no cancellation)."""
    q = 1.0 - p
    return p * q * q * (p**n * q + q**n * p)


def _spread(counts: list[int], positions: list[int], spare: int, n_max: int) -> int:
    """Add `spare` rollouts one at a time to the position in `positions` with the fewest (earlier first), none
    beyond `n_max`; returns what could not be placed."""
    heap = [(counts[i], i) for i in positions if counts[i] < n_max]
    heapq.heapify(heap)
    while spare and heap:
        n, i = heapq.heappop(heap)
        counts[i] = n + 1
        spare -= 1
        if n + 1 < n_max:
            heapq.heappush(heap, (n + 1, i))
    return spare


def knapsack_allocation(stats: Sequence[QuestionStats], total: int, n_min: int, n_max: int) -> list[int]:
    """Knapsack RL's allocation (see the module docstring): `n_min` each; the questions with a recent success rate
    in (0, 1) filled by greedy marginal `knapsack_gain` (exactly maximising the summed value; ties: fewer
    rollouts, then the earlier position) up to `n_max`; what remains spread evenly over the never-solved
    questions, then over the rest."""
    _check(stats, total, n_min, n_max)
    counts = [n_min] * len(stats)
    rates = [s.recent_rate for s in stats]
    valued = [i for i, p in enumerate(rates) if p is not None and 0.0 < p < 1.0]
    heap = [(-knapsack_gain(rates[i], n_min), n_min, i) for i in valued if n_min < n_max]
    heapq.heapify(heap)
    spare = total - n_min * len(stats)
    while spare and heap:
        _, n, i = heapq.heappop(heap)
        counts[i] = n + 1
        spare -= 1
        if n + 1 < n_max:
            heapq.heappush(heap, (-knapsack_gain(rates[i], n + 1), n + 1, i))
    never_solved = [i for i, s in enumerate(stats) if s.correct == 0]
    spare = _spread(counts, never_solved, spare, n_max)
    spare = _spread(counts, list(range(len(stats))), spare, n_max)
    assert spare == 0, "feasible by _check"
    return counts


ALLOCATORS: dict[str, Allocator] = {
    "e3": e3_allocation,
    "uniform": uniform_allocation,
    "informative": informative_allocation,
    "knapsack": knapsack_allocation,
}
"""The allocators `budget.allocator` names."""
