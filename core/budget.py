"""Dynamic rollout budget (E3_SPEC section 2): how many rollouts each question of a batch gets.

`allocate_rollouts` splits a fixed total over the batch in proportion to difficulty rank, with strict per-question
bounds; `BudgetBounds` is the per-epoch schedule of those bounds, widening from uniform to `[n_low, n_high]`.

Departures from the reference code (more in docs/algorithm.md):
- the share above `n_max` is redistributed over the other questions by the same proportional rule (water-filling,
  `_water_filled_shares`) before the floor and the repair, so `n_min <= c_i <= n_max` and `sum c = total` always
  hold; the reference never caps the proportional share at `n_max`, so a question can get more than `n_max`;
- tied ranks (E3_SPEC section 2, revised): the repair spreads each rank level's portion evenly, so tied questions'
  counts differ by at most one, where the reference hands the whole rounding deficit to the first questions in
  walk order (`_repair`).
Wherever the ranks are all distinct and no share exceeds `n_max`, the counts equal the reference's exactly. The
reference's `+1e-8` is kept, so the spec's "an exact share stays exact" does not hold (`_WEIGHT_EPS` says why).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from core.config import BudgetConfig

_WEIGHT_EPS = 1e-8
"""Added to the rank sum before normalising, as in the reference code (keeps its floor results bit-identical).

What it does to exact shares: an exact integer share is floored one below and the repair hands that rollout back,
to the hardest level first. The spec also asks that "an exact share stays exact"; that cannot hold together with
equality to the reference for distinct ranks (ranks 0.25 and 0.75 with 4 rollouts to share: the reference gives
0 and 4, exact shares give 1 and 3), and equality is the property we keep. For tied ranks the even spread makes
the artefact harmless (all-equal ranks get exactly the mean)."""


def _validate(ranks: np.ndarray, total: int, n_min: int, n_max: int) -> None:
    """Raise ValueError naming the offending numbers when the allocation problem has no valid answer."""
    if n_min < 1:
        raise ValueError(f"n_min must be >= 1, got n_min={n_min}")
    if n_min > n_max:
        raise ValueError(f"n_min must be <= n_max, got n_min={n_min} > n_max={n_max}")
    batch = len(ranks)
    if batch * n_min > total:
        raise ValueError(
            f"total={total} is below the minimum B*n_min={batch}*{n_min}={batch * n_min}: "
            "every question needs at least n_min rollouts"
        )
    if total > batch * n_max:
        raise ValueError(
            f"total={total} is above the maximum B*n_max={batch}*{n_max}={batch * n_max}: "
            "no question may get more than n_max rollouts"
        )
    bad = [(i, float(r)) for i, r in enumerate(ranks) if not (0.0 <= r <= 1.0)]  # NaN fails both comparisons
    if bad:
        raise ValueError(f"ranks must lie in [0, 1]; bad (position, rank) pairs: {bad[:10]}")


def _water_filled_shares(ranks: np.ndarray, excess: float, cap: float) -> np.ndarray:
    """Split `excess` over the questions in proportion to rank, no share above `cap`.

    The first round is exactly the reference rule `excess * r_i / (sum r + 1e-8)`. Any question whose share
    exceeds `cap` is fixed at `cap`, and what is left is split over the remaining questions by the same rule,
    until no share exceeds `cap` (at most B rounds, since every round fixes at least one question).
    """
    shares = np.zeros_like(ranks)
    open_ = np.ones(len(ranks), dtype=bool)
    remaining = excess
    while open_.any():
        r = ranks[open_]
        rank_sum = r.sum()
        weights = r / (rank_sum + _WEIGHT_EPS) if rank_sum > 0 else r
        candidate = remaining * weights
        over = candidate > cap
        if not over.any():
            shares[open_] = candidate
            break
        capped = np.flatnonzero(open_)[over]
        shares[capped] = cap
        open_[capped] = False
        remaining = excess - cap * np.count_nonzero(~open_)
    return shares


def _levels(ranks: np.ndarray, hardest_first: bool) -> list[np.ndarray]:
    """The positions of each distinct rank level, hardest level first (or easiest first), each in position order."""
    values = np.unique(ranks)
    order = values[::-1] if hardest_first else values
    return [np.flatnonzero(ranks == value) for value in order]


def _spread(counts: np.ndarray, members: np.ndarray, amount: int, bound: int, sign: int) -> int:
    """Move up to `amount` rollouts into (`sign=+1`, up to `bound`) or out of (`sign=-1`, down to `bound`) the
    `members` of one rank level, one at a time to whichever member is furthest from `bound`, ties to the earlier
    position when giving and the later one when taking: the level's counts stay within one of each other when
    they start equal. Returns how many were moved."""
    moved = 0
    walk = members if sign > 0 else members[::-1]
    while moved < amount:
        room = sign * (bound - counts[walk])
        if room.max() <= 0:
            break
        widest = walk[room == room.max()]
        for i in widest[: amount - moved]:
            counts[i] += sign
        moved += min(len(widest), amount - moved)
    return moved


def _repair(counts: np.ndarray, ranks: np.ndarray, total: int, n_min: int, n_max: int) -> None:
    """Make `counts` sum to `total` in place, never leaving `[n_min, n_max]`.

    A shortfall goes to the hardest rank level first, as in the reference; within a level of tied questions it
    is spread as evenly as possible (earlier positions get the odd ones), so that tied questions' counts differ by
    at most one (E3_SPEC section 2, revised). A level of one question is filled exactly as the reference fills
    it. A surplus cannot arise in exact arithmetic (floors only round down, shares never exceed the excess);
    should floating-point rounding ever produce one, it is taken in the exact reverse order (easiest level first,
    evenly within the level, later positions first), each down to `n_min`.

    The reference's repair hands the whole rounding deficit to the first questions in walk order, each up to
    `n_max` (64 equal ranks, 512 rollouts, bounds 4..12: twelve 12s, one 11 and fifty-one 7s). This one walks the
    distinct rank levels, hardest first, and spreads each level's portion evenly (the same example: sixty-four
    8s).
    """
    deficit = total - int(counts.sum())
    if deficit == 0:
        return
    sign, bound = (1, n_max) if deficit > 0 else (-1, n_min)
    remaining = abs(deficit)
    for members in _levels(ranks, hardest_first=sign > 0):
        remaining -= _spread(counts, members, remaining, bound, sign)
        if remaining == 0:
            break


def allocate_rollouts(ranks: Sequence[float], total: int, n_min: int, n_max: int) -> list[int]:
    """Return the number of rollouts for each question, in the order of `ranks`.

    Promises: every count lies in `[n_min, n_max]`, the counts sum to `total`, a harder question (higher rank)
    never gets fewer rollouts than an easier one, and questions of equal rank get counts within one of each other
    (earlier positions get the odd ones). Wherever the ranks are all distinct and no proportional share
    `(total - B*n_min) * w_i` exceeds `n_max - n_min`, the result equals the reference rule of E3_SPEC section 2
    exactly.

    Raises ValueError (naming the numbers) when `n_min < 1`, `n_min > n_max`, `B*n_min > total`,
    `total > B*n_max`, or a rank is NaN or outside [0, 1].
    """
    rank_array = np.asarray(ranks, dtype=np.float64)
    if rank_array.ndim != 1:
        raise ValueError(f"ranks must be a flat sequence, got shape {rank_array.shape}")
    _validate(rank_array, total, n_min, n_max)
    if len(rank_array) == 0:
        return []
    excess = total - len(rank_array) * n_min
    shares = _water_filled_shares(rank_array, float(excess), float(n_max - n_min))
    counts = np.floor(n_min + shares).astype(np.int64)
    np.clip(counts, n_min, n_max, out=counts)
    _repair(counts, rank_array, total, n_min, n_max)
    return [int(c) for c in counts]


class BudgetBounds:
    """The per-epoch schedule of the rollout bounds `(n_min, n_max)` (E3_SPEC section 2).

    Starts uniform at `n_min = n_max = n` (reference) or, with `start_wide=True`, at the widest bounds
    `(n_low, n_high)`. Each `end_epoch()` moves both bounds `n_update` further apart, stopping at
    `n_low`/`n_high`. Because `n_low <= n <= n_high`, the mean budget `n` always lies within the bounds, so
    `allocate_rollouts(ranks, n * B, n_min, n_max)` is always feasible.
    """

    def __init__(self, n: int, n_low: int, n_high: int, n_update: int, start_wide: bool = False) -> None:
        if not 1 <= n_low <= n <= n_high:
            raise ValueError(
                f"bounds must satisfy 1 <= n_low <= n <= n_high, got n_low={n_low}, n={n}, n_high={n_high}"
            )
        if n_update < 0:
            raise ValueError(f"n_update must be >= 0, got n_update={n_update}")
        self._n = n
        self._n_low = n_low
        self._n_high = n_high
        self._n_update = n_update
        self._n_min, self._n_max = (n_low, n_high) if start_wide else (n, n)

    @classmethod
    def from_config(cls, config: BudgetConfig) -> BudgetBounds:
        """The schedule `config` describes (its `n`, `n_low`, `n_high`, `n_update`, `start_wide`); the same as
        passing each as its argument. Raises ValueError as the constructor does."""
        return cls(config.n, config.n_low, config.n_high, config.n_update, start_wide=config.start_wide)

    @property
    def n(self) -> int:
        """The mean number of rollouts per question (the total budget is `n * B`)."""
        return self._n

    @property
    def n_min(self) -> int:
        """The current lower bound on rollouts per question."""
        return self._n_min

    @property
    def n_max(self) -> int:
        """The current upper bound on rollouts per question."""
        return self._n_max

    def end_epoch(self) -> tuple[int, int]:
        """Widen the bounds by `n_update` each side (clamped to `[n_low, n_high]`); return the new bounds."""
        self._n_min = max(self._n_min - self._n_update, self._n_low)
        self._n_max = min(self._n_max + self._n_update, self._n_high)
        return self._n_min, self._n_max

    def state_dict(self) -> dict[str, Any]:
        """Return the current bounds as a plain dict (restorable with `load_state_dict`)."""
        return {"n_min": self._n_min, "n_max": self._n_max}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore bounds saved by `state_dict`; ValueError if they do not fit this schedule's limits."""
        missing = {"n_min", "n_max"} - state.keys()
        if missing:
            raise ValueError(f"budget bounds state is missing keys {sorted(missing)}")
        n_min, n_max = int(state["n_min"]), int(state["n_max"])
        if not self._n_low <= n_min <= self._n <= n_max <= self._n_high:
            raise ValueError(
                f"saved bounds (n_min={n_min}, n_max={n_max}) do not fit this schedule "
                f"(n_low={self._n_low}, n={self._n}, n_high={self._n_high})"
            )
        self._n_min, self._n_max = n_min, n_max

    def __repr__(self) -> str:
        return (
            f"BudgetBounds(n_min={self._n_min}, n_max={self._n_max}, n={self._n}, "
            f"n_low={self._n_low}, n_high={self._n_high}, n_update={self._n_update})"
        )
