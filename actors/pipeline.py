"""Generation ahead of training (`train.max_staleness = k`): what the scheduler keeps of each batch it issued.

With k = 0 a step generates its own batch, trains on it and syncs (the synchronous loop). With k >= 1 the
scheduler keeps a queue of issued batches, oldest first, up to k steps ahead of the one training, and a step

1. issues the batches of the steps up to t + k that are not issued yet: draws their questions from the sampler,
   allocates their budgets from the difficulty table as it is now, and submits their seeded requests
   (`request_seed(seed, step, position)`) to the rollout pool, which samples them with the weights version and
   temperature the workers hold now (each rollout comes back stamped with both);
2. pops batch t (waiting for it if it is still generating), scores it, counts it into the difficulty table and
   builds the train batch (the learner divides by the stamped temperature of each sample);
3. on a step whose version a checkpoint will need (below), keeps a copy of the weights the queued batches were
   issued with (`RolloutPool.keep_weights`); trains, and meanwhile the rollout workers generate the batches
   queued for steps t + 1 .. t + k;
4. tells the pool the learner's new version (`RolloutPool.track_source`: a worker lost from now on is replaced
   with it, stamped as such, unless its batch's weights were kept), waits for those batches (weights are pushed
   between generation batches, never into one), then pushes the new weights and sends the temperature the
   controller sets from step t's entropy.

So a batch issued at step s - k samples with weights version s - k (at the run's start: version 0) and trains at
step s on version s: it is at most k versions old, and the pipeline never issues one that would be older.

E3 in this pipeline, with its lag (k steps; 0 in the synchronous loop):
- budget: step s's budget is allocated from the difficulty table as it is when step s is issued (at the start
  of step s - k), so it has seen the results of steps up to s - k - 1;
- the table observes results in step order (step s's when step s trains);
- ranks are recomputed at each epoch end (and every K steps if configured), after the step that ends the epoch
  trains; the first k steps of the next epoch were allocated with the old ranks and budget bounds;
- temperature: a request samples at the temperature current when it was issued and is stamped with it; the
  learner uses the stamp; the controller is updated with each trained step's entropy in step order, and the
  temperature it sets after step t reaches the requests issued after it, first those of step t + k + 1.

Exact resume: a checkpoint after step t saves the queued batches' seeded requests (their questions, counts,
steps), the versions and temperatures they were issued with, and the weights of those versions (publish dtype),
not their outputs; `Scheduler.restore` loads those weights into the workers, generates the batches again
(the same seeds, weights and temperatures: the same rollouts) and then syncs the checkpoint's own weights, so
a resumed run equals an uninterrupted one.

Which weights are kept: a batch issued at step s (with version s) stays queued through the checkpoints after
steps s .. s + k - 1, so version s is gathered (before step s trains, while the learner still holds it) only
when one of those steps checkpoints; on every other step nothing is gathered. A worker lost while generation
runs ahead is then restored to the issue-time weights when they were kept, else given the learner's newest.

Paper scale (E3_SPEC §6, one step ahead): the queue holds one step's rollouts, 512 responses of up to 6,144
tokens: 3.1M token ids and 3.1M float32 log-probs, about 38 MB of Python-side data in the scheduler; a kept
version is one publish-dtype policy in the object store, 3.55 GB for 1.5B parameters in bf16 and 15.2 GB for 7B,
on checkpointing steps only (written into the checkpoint beside the float32 policy and AdamW's two moments,
12 bytes a parameter: 21.4 GB and 91.4 GB, so +17%).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from core.messages import Rollout, RolloutRequest
from core.sampler import EpochBatch
from tasks.dataset import Question


@dataclass(frozen=True)
class Sampled:
    """A step's batch of questions, their difficulty ranks and the budget bounds when it was drawn."""

    batch: EpochBatch
    questions: list[Question]
    ranks: list[float]
    n_min: int
    n_max: int


@dataclass
class IssuedBatch:
    """One step's generation as issued: its questions, seeded requests, and the weights version and temperature
    the workers held when it was issued; `pending` while it generates, `rollouts` once collected."""

    step: int
    sampled: Sampled
    requests: list[RolloutRequest]
    version: int
    temperature: float
    pending: Any = None
    """The pool's handle of the generation in flight (`RolloutPool.submit`); None when not submitted."""
    rollouts: list[Rollout] | None = field(default=None, repr=False)
    dropped: int = 0
    """Samples older than the staleness bound that were generated again (`stale_policy=drop`)."""
    kept_stale: int = 0
    """Samples older than the bound trained on all the same (`stale_policy=wait`)."""

    def state_dict(self) -> dict[str, Any]:
        """What regenerates this batch exactly (JSON values): its step, questions, ranks, bounds, per-question
        counts, and the weights version and temperature it was issued with. Not its outputs."""
        batch = self.sampled.batch
        return {
            "step": self.step,
            "indices": list(batch.indices),
            "epoch": batch.epoch,
            "step_in_epoch": batch.step_in_epoch,
            "end_of_epoch": batch.end_of_epoch,
            "ranks": list(self.sampled.ranks),
            "n_min": self.sampled.n_min,
            "n_max": self.sampled.n_max,
            "counts": [r.num_samples for r in self.requests],
            "version": self.version,
            "temperature": self.temperature,
        }


def staleness_histogram(rollouts: list[Rollout], trained_version: int) -> tuple[int, ...]:
    """Samples by how many versions older than `trained_version` their weights were: entry j counts the
    completions sampled with version `trained_version - j` (as long as the largest staleness present + 1)."""
    ages = [(trained_version - r.weights_version, len(r.completions)) for r in rollouts]
    counts = [0] * (max(age for age, _ in ages) + 1 if ages else 0)
    for age, samples in ages:
        counts[max(age, 0)] += samples
    return tuple(counts)
