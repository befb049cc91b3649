"""The generation queue: the batches a step issues, and with `train.max_staleness = k >= 1`, generation ahead of
training (docs/generation-ahead.md says how E3 runs in it, with what lag, and what each step costs).

With k = 0 the queue is a pass-through: a step draws its batch, generates it and trains on it. With k >= 1 it
holds the batches issued up to k steps ahead of the one training, oldest first: a batch issued at step s - k
samples with weights version s - k (each rollout is stamped with its version and temperature) and trains at step
s, while the rollout workers generate the next ones; weights are pushed between generation batches, never into
one. A checkpoint saves the queued batches' seeded requests and the weights they were issued with, so that a
resumed run regenerates them exactly. The queue is the only writer of its batches.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from actors.checkpoint_files import WEIGHTS_FILE
from actors.protocols import LearnerGroupLike, RolloutPoolLike
from core.config import StalePolicy
from core.messages import LearnerResult, Rollout, RolloutRequest, TemperatureUpdate, TrainBatch
from core.sampler import EpochBatch
from core.step_record import PhaseTimer
from tasks.dataset import Question

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DrawnQuestions:
    """A step's questions as drawn: the sampler's batch, the questions, their difficulty ranks and the budget
    bounds at that moment."""

    batch: EpochBatch
    questions: list[Question]
    ranks: list[float]
    n_min: int
    n_max: int


@dataclass
class IssuedBatch:
    """One step's generation as issued: its questions, seeded requests, and the weights version and temperature
    the workers held when it was issued. Written by the `GenerationQueue` alone."""

    step: int
    drawn: DrawnQuestions
    requests: list[RolloutRequest]
    version: int
    temperature: float
    pending: Any = None
    """The pool's handle of the generation in flight (`RolloutPool.submit`); None when not submitted."""
    rollouts: list[Rollout] | None = field(default=None, repr=False)
    stale_dropped: int = 0
    """Samples older than the staleness bound that were generated again (`stale_policy=drop`)."""
    stale_kept: int = 0
    """Samples older than the bound trained on all the same (`stale_policy=wait`)."""

    def state_dict(self) -> dict[str, Any]:
        """What regenerates this batch exactly (JSON values): its step, questions, ranks, bounds, per-question
        counts, and the weights version and temperature it was issued with. Not its outputs."""
        batch = self.drawn.batch
        return {
            "step": self.step,
            "indices": list(batch.indices),
            "epoch": batch.epoch,
            "step_in_epoch": batch.step_in_epoch,
            "end_of_epoch": batch.end_of_epoch,
            "ranks": list(self.drawn.ranks),
            "n_min": self.drawn.n_min,
            "n_max": self.drawn.n_max,
            "counts": [r.num_samples for r in self.requests],
            "version": self.version,
            "temperature": self.temperature,
        }


Draw = Callable[[int, PhaseTimer], tuple[DrawnQuestions, list[RolloutRequest]]]
"""Draws step s's questions and allocates their budget as seeded requests (the scheduler's, phases `sample` and
`allocate`)."""
Requests = Callable[[list[int], list[int], int], list[RolloutRequest]]
"""The seeded requests of step s: question `indices[p]` gets `counts[p]` samples (to rebuild a saved batch)."""


class GenerationQueue:
    """The batches issued and not yet trained on, and the calls a step makes on them: `take` (issue through
    `step + k`, pop `step`'s), `rollouts` (its rollouts, under the staleness bound), `train` (the learner's step,
    the queued batches generating meanwhile), and the checkpoint's `save`, `restore_state` and `regenerate`."""

    def __init__(
        self,
        pool: RolloutPoolLike,
        learner: LearnerGroupLike,
        draw: Draw,
        max_staleness: int,
        stale_policy: StalePolicy,
        total_steps: int,
        checkpoints_after: Callable[[int], bool],
    ) -> None:
        """`draw` draws a step's batch; `checkpoints_after(s)` says whether a checkpoint is written after step s
        (a version is kept for one only); batches of steps from `total_steps` on are drawn but not generated."""
        self.pool, self.learner, self.draw = pool, learner, draw
        self.max_staleness, self.stale_policy, self.total_steps = max_staleness, stale_policy, total_steps
        self.checkpoints_after = checkpoints_after
        self.batches: deque[IssuedBatch] = deque()

    @property
    def ahead(self) -> bool:
        """Whether generation runs ahead of training (`max_staleness` >= 1)."""
        return self.max_staleness > 0

    # -- the step -------------------------------------------------------------------------------------------

    def take(self, step: int, version: int, temperature: float, timer: PhaseTimer) -> IssuedBatch:
        """Issue the batches of every step up to `step + k` not issued yet, in step order (drawn and allocated
        from the difficulty table as it is now; ahead of training also submitted, sampling with `version` and
        `temperature`, which the workers hold now), and pop `step`'s."""
        last = step + self.max_staleness
        next_step = self.batches[-1].step + 1 if self.batches else step
        for s in range(next_step, last + 1):
            drawn, requests = self.draw(s, timer)
            issued = IssuedBatch(s, drawn, requests, version, temperature)
            if self.ahead and s < self.total_steps:
                with timer("submit"):
                    issued.pending = self.pool.submit(requests)
            self.batches.append(issued)
        return self.batches.popleft()

    def rollouts(self, issued: IssuedBatch, version: int) -> list[Rollout]:
        """The batch's rollouts: generated now when synchronous; ahead of training waited for, with any older
        than `k` versions behind `version` generated again with the current weights (`stale_policy=drop`) or
        kept (`wait`), counted on the batch."""
        if not self.ahead:
            return self.pool.generate(issued.requests)
        rollouts = self._collected(issued)
        stale = [i for i, r in enumerate(rollouts) if version - r.weights_version > self.max_staleness]
        if not stale:
            return rollouts
        samples = sum(len(rollouts[i].completions) for i in stale)
        log.warning(
            "step %d: %d rollouts are more than %d versions older than version %d: %s",
            issued.step,
            len(stale),
            self.max_staleness,
            version,
            "generating them again" if self.stale_policy == "drop" else "training on them (stale_policy=wait)",
        )
        if self.stale_policy != "drop":
            issued.stale_kept = samples
            return rollouts
        fresh = self.pool.generate([issued.requests[i] for i in stale])  # same seeds, current weights
        for i, rollout in zip(stale, fresh, strict=True):
            rollouts[i] = rollout
        issued.stale_dropped = samples
        return rollouts

    def train(self, batch: TrainBatch, version: int, timer: PhaseTimer) -> LearnerResult:
        """The learner's step on `batch` from `version` (phase `train`). Ahead of training the queued batches
        generate meanwhile: before it, on a step whose version a checkpoint will need, the pool keeps the weights
        (phase `keep_weights`, a full gather); after it, the pool learns the learner's new version (a worker lost
        from now on is replaced with it, stamped as such) and every queued batch is waited for (phase
        `wait_ahead`), so that the weights are pushed between generation batches, never into one; then the pool
        drops kept weights no queued batch was issued with."""
        if not self.ahead:
            with timer("train"):
                return self.learner.train(batch, version)
        with timer("keep_weights"):
            if self._checkpoint_needs(version):
                self.pool.keep_weights(self.learner, version)
        with timer("train"):
            result = self.learner.train(batch, version)
        self.pool.track_source(self.learner, result.weights_version)
        with timer("wait_ahead"):
            for issued in self.batches:
                if issued.pending is not None:
                    self._collected(issued)
        self.pool.release_weights(min((b.version for b in self.batches), default=result.weights_version))
        return result

    def staleness(self, rollouts: list[Rollout], trained_version: int) -> tuple[int, ...]:
        """Ahead of training, samples by how many versions older than `trained_version` their weights were
        (entry j: version `trained_version - j`); empty when synchronous."""
        if not self.ahead:
            return ()
        ages = [(trained_version - r.weights_version, len(r.completions)) for r in rollouts]
        counts = [0] * (max(age for age, _ in ages) + 1 if ages else 0)
        for age, samples in ages:
            counts[max(age, 0)] += samples
        return tuple(counts)

    def next_epoch(self, default: int) -> int:
        """The epoch of the next batch to train (`default`, the sampler's, when none is queued)."""
        return self.batches[0].drawn.batch.epoch if self.batches else default

    def _checkpoint_needs(self, version: int) -> bool:
        """Whether a checkpoint will save weights `version` (the learner holds it until it trains): a batch
        issued with it is queued, and one of the steps it stays queued through checkpoints. The batch issued at
        step s (version s) is queued through the checkpoints after steps s .. s + k - 1."""
        queued = [b for b in self.batches if b.version == version]
        return bool(queued) and any(self.checkpoints_after(s) for s in range(version, version + self.max_staleness))

    def _collected(self, issued: IssuedBatch) -> list[Rollout]:
        """The batch's rollouts: collected from the pool (submitted first if it was not)."""
        if issued.rollouts is None:
            pending = issued.pending if issued.pending is not None else self.pool.submit(issued.requests)
            issued.rollouts, issued.pending = self.pool.collect(pending), None
        return issued.rollouts

    # -- checkpoints ----------------------------------------------------------------------------------------

    def save(self, folder: Path) -> list[dict[str, Any]]:
        """Write the weights every queued batch was issued with into `folder`, one `v<version>/` each (a version
        the pool did not keep is logged and left out: a restore then generates its batches with the checkpoint's
        weights), and return the queue's state (`IssuedBatch.state_dict` of each batch, oldest first)."""
        for version in sorted({b.version for b in self.batches}):
            try:
                self.pool.save_weights(version, str(folder / f"v{version}"))
            except KeyError:
                log.warning(
                    "checkpoint: weights version %d of queued generation was not kept; a resumed run "
                    "generates those batches with the checkpoint's weights instead",
                    version,
                )
        return [issued.state_dict() for issued in self.batches]

    def restore_state(self, entries: list[dict[str, Any]], questions: list[Question], requests: Requests) -> None:
        """Replace the queue by the batches `save` returned (not generated yet): their questions (indices into
        `questions`), ranks and bounds as drawn, and their requests rebuilt with their seeds by `requests`."""
        self.batches = deque(_issued_from_state(entry, questions, requests) for entry in entries)

    def regenerate(self, folder: Path, sync_checkpoint_weights: Callable[[], None]) -> None:
        """Generate the restored batches again as they were issued: version by version, the workers load the
        weights saved for it in `folder` and take the batch's temperature, and each batch is generated (the same
        seeds: the same rollouts). The versions whose weights are missing come last, generated with the
        checkpoint's own (newer) weights after `sync_checkpoint_weights()` (logged: the resumed run then departs
        from an uninterrupted one), since a worker refuses a version older than the one it holds."""
        batches = [b for b in self.batches if b.step < self.total_steps]
        versions = sorted({b.version for b in batches})
        saved = [v for v in versions if (folder / f"v{v}" / WEIGHTS_FILE).is_file()]
        for version in saved + [v for v in versions if v not in saved]:
            if version in saved:
                self.pool.load_policy(str(folder / f"v{version}"), version)
            else:
                log.warning("restore: no saved weights version %d for queued generation; generating it with the "
                            "checkpoint's weights", version)  # fmt: skip
                sync_checkpoint_weights()
            for issued in (b for b in batches if b.version == version):
                self.pool.set_temperature(TemperatureUpdate(issued.temperature, issued.step))
                self._collected(issued)


def _issued_from_state(entry: dict[str, Any], questions: list[Question], requests: Requests) -> IssuedBatch:
    """A queued batch from its `IssuedBatch.state_dict()`."""
    batch = EpochBatch(list(entry["indices"]), int(entry["epoch"]), int(entry["step_in_epoch"]),
                       bool(entry["end_of_epoch"]))  # fmt: skip
    drawn = DrawnQuestions(
        batch, [questions[i] for i in batch.indices], [float(r) for r in entry["ranks"]], int(entry["n_min"]),
        int(entry["n_max"]),
    )  # fmt: skip
    step = int(entry["step"])
    return IssuedBatch(
        step, drawn, requests(batch.indices, [int(c) for c in entry["counts"]], step), int(entry["version"]),
        float(entry["temperature"]),
    )  # fmt: skip
