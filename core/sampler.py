"""A seeded, resumable epoch sampler: which dataset rows form each training batch.

Every epoch is a fresh permutation of `range(num_items)` drawn from a numpy Generator seeded with
`(seed, epoch)`, so epoch e's order depends on nothing but the seed and e, and a sampler restored from
`state_dict()` yields exactly the batches the original would have yielded next.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class EpochBatch:
    """One batch of dataset row indices and where it falls in the run."""

    indices: list[int]
    """Dataset row positions, in sampling order."""
    epoch: int
    """0-based epoch this batch belongs to."""
    step_in_epoch: int
    """0-based position of this batch within its epoch."""
    end_of_epoch: bool
    """True for the last batch of its epoch (the caller then recomputes ranks and widens budget bounds)."""


class EpochSampler:
    """Yields shuffled batches epoch after epoch; deterministic in `seed` and exactly resumable.

    Every batch has `batch_size` rows; the remainder of each epoch's order (`num_items % batch_size` rows) is
    skipped, and a new order is drawn for the next epoch.
    """

    def __init__(self, num_items: int, batch_size: int, seed: int) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got batch_size={batch_size}")
        if num_items < 1:
            raise ValueError(f"num_items must be >= 1, got num_items={num_items}")
        if batch_size > num_items:
            raise ValueError(f"batch_size={batch_size} > num_items={num_items} would yield no batches")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got seed={seed}")
        self._num_items = num_items
        self._batch_size = batch_size
        self._seed = seed
        self._epoch = 0
        self._step_in_epoch = 0
        self._order = self._permutation(0)

    @property
    def steps_per_epoch(self) -> int:
        """Number of batches in one epoch."""
        return self._num_items // self._batch_size

    @property
    def epoch(self) -> int:
        """0-based epoch of the next batch."""
        return self._epoch

    @property
    def step_in_epoch(self) -> int:
        """0-based position of the next batch within its epoch."""
        return self._step_in_epoch

    def _permutation(self, epoch: int) -> np.ndarray:
        """The row order of `epoch`, a function of `(seed, epoch)` only."""
        return np.random.default_rng((self._seed, epoch)).permutation(self._num_items)

    def next_batch(self) -> EpochBatch:
        """Return the next batch and advance; after the last batch of an epoch, the next epoch begins."""
        start = self._step_in_epoch * self._batch_size
        indices = self._order[start : start + self._batch_size].tolist()
        end_of_epoch = self._step_in_epoch == self.steps_per_epoch - 1
        batch = EpochBatch(indices, self._epoch, self._step_in_epoch, end_of_epoch)
        if end_of_epoch:
            self._epoch += 1
            self._step_in_epoch = 0
            self._order = self._permutation(self._epoch)
        else:
            self._step_in_epoch += 1
        return batch

    def state_dict(self) -> dict[str, Any]:
        """Return the position of the next batch plus the settings it depends on (restorable)."""
        return {
            "epoch": self._epoch,
            "step_in_epoch": self._step_in_epoch,
            "seed": self._seed,
            "num_items": self._num_items,
            "batch_size": self._batch_size,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from `state_dict()`; ValueError if it was saved by a sampler with different settings."""
        settings = {
            "seed": self._seed,
            "num_items": self._num_items,
            "batch_size": self._batch_size,
        }
        differing = {key: (state.get(key), value) for key, value in settings.items() if state.get(key) != value}
        if differing:
            raise ValueError(f"sampler state does not match this sampler; (saved, current): {differing}")
        epoch, step = int(state["epoch"]), int(state["step_in_epoch"])
        if epoch < 0 or not 0 <= step < self.steps_per_epoch:
            raise ValueError(
                f"bad sampler position epoch={epoch}, step_in_epoch={step} (steps_per_epoch={self.steps_per_epoch})"
            )
        self._epoch = epoch
        self._step_in_epoch = step
        self._order = self._permutation(epoch)
