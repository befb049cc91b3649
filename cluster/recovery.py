"""Which failures a run can heal from: the loss of a process or a node, as Ray reports it.

A run with `train.max_failures` > 0 shuts its actors down, builds them again and resumes from its last complete
checkpoint after such a failure (launch.py); any other error (a bug, a bad input) stops the run at once, since
running it again would only fail again.
"""

from __future__ import annotations

import ray

LOST = (
    ray.exceptions.RayActorError,  # an actor's process died (killed, crashed, out of memory) or its node did
    ray.exceptions.WorkerCrashedError,  # a task's worker process died
    ray.exceptions.NodeDiedError,
    ray.exceptions.ObjectLostError,  # every copy of an object was on processes or nodes that are gone
)


def lost_process(error: BaseException) -> bool:
    """Whether `error`, or the error a remote call it wraps raised (`RayTaskError.cause`, any depth), says that a
    process or a node of the cluster is gone."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, LOST):
            return True
        seen = seen.cause if isinstance(seen, ray.exceptions.RayTaskError) else None
    return False
