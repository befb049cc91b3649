"""The colocated placement (`rollout.placement=colocated`): the learner ranks are the rollout workers.

Each rank of the learner group is a `ColocatedRank` (actors/colocated.py), a learner rank whose process also holds
a rollout engine on the same devices. `ColocatedPool` drives those same actors as the rollout pool, so the
scheduler, its calls and their deadlines are those of the split placement; what differs:
- a weight sync is the in-process handover (`HandoverTransport`: every rank loads its own gathered parameters
  into its engine at once; nothing crosses a process boundary but the version);
- a rank lost (dead, or hung past a deadline) is not replaced alone, since the learner group cannot lose a member:
  the pool raises it as a lost actor, and the run heals as from any lost learner rank (`train.max_failures`:
  every actor is rebuilt and the run resumes from its last checkpoint, cluster/recovery.py);
- the pool does not stop the actors: the learner group does.
"""

from __future__ import annotations

from typing import Any

from ray.exceptions import RayActorError

from cluster.learner_group import ACTOR_NAME, LearnerGroup
from cluster.rollout_pool import RolloutPool, is_lost
from cluster.weight_sync import WeightSource, wait_all
from core.config import RolloutConfig


class HandoverTransport:
    """The colocated weight sync: `take_learner_weights(version)` on every rank at once (a collective of theirs)."""

    name = "colocated"

    def push(
        self, source: WeightSource, workers: dict[int, Any], version: int, timeout_s: float
    ) -> dict[int, Exception]:
        """Have every rank in `workers` (all of the group's: the handover gathers over them) load its policy into
        its engine as `version`, under one deadline; returns the error of each rank that did not (none: all did).
        `source` is those same ranks, as the learner group."""
        if sorted(workers) != list(range(len(workers))):
            raise ValueError(f"the colocated handover needs every rank at once, got ranks {sorted(workers)}")
        refs = {i: rank.take_learner_weights.remote(version) for i, rank in workers.items()}
        values, errors = wait_all(refs, timeout_s)
        errors.update({i: RuntimeError(f"loaded version {v}") for i, v in values.items() if v != version})
        return errors

    def close(self, workers: Any) -> None:
        """Nothing to leave: the handover has no group of its own."""


class ColocatedPool(RolloutPool):
    """The learner group's ranks as the rollout pool (the module docstring says what differs from the split one)."""

    def __init__(self, learner_group: LearnerGroup, config: RolloutConfig) -> None:
        """Drive the ranks of `learner_group` (already set up, engines built) with `config`'s deadlines."""
        super().__init__(
            learner_group.actors.__getitem__,
            learner_group.num_ranks,
            timeout_s=config.timeout_s,
            sync_timeout_s=config.sync_timeout_s,
            max_restarts_per_hour=0,
            transport=HandoverTransport(),
            worker_name=ACTOR_NAME.replace("{rank}", "{index}"),
        )

    def _sync(self, indices: set[int]) -> None:
        """Hand the current weights over on every rank at once (the gathers need them all), once: a rank lost is
        raised as `_replace` raises it, any other failure as itself. Never a retry on some ranks only, whose gathers
        would wait on the others until the deadline."""
        if self._weights_ref is not None:  # a state dict through the object store (`load_weights`)
            super()._sync(indices)
            return
        workers = dict(enumerate(self.workers))
        errors = self.transport.push(self._source, workers, self._version, self.sync_timeout_s)
        if not errors:
            return
        for index, error in sorted(errors.items()):
            if is_lost(error):
                self._replace(index, error, restore_weights=False)
        raise RuntimeError(
            f"colocated weight handover to version {self._version} failed on ranks {sorted(errors)}: {errors}"
        ) from next(iter(errors.values()))

    def _replace(self, index: int, error: Exception, restore_weights: bool) -> None:
        """A colocated rank is a learner rank: never replaced alone. Raises it as a lost actor (the run heals)."""
        raise RayActorError(
            error_msg=(
                f"colocated learner rank {index} lost ({type(error).__name__}: {error}); a rank that holds an "
                "engine is not replaced alone: the run heals as from a lost learner rank (train.max_failures)"
            )
        ) from error

    def shutdown(self) -> None:
        """Nothing: the ranks are the learner group's, which stops them (`LearnerGroup.shutdown`)."""
