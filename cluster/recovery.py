"""Which failures a run can heal from: the loss of a process or a node, as Ray reports it.

A run with `train.max_failures` > 0 shuts its actors down, builds them again and resumes from its last complete
checkpoint after such a failure (`run_with_recovery`); any other error (a bug, a bad input) stops the run at
once, since running it again would only fail again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray

from actors.checkpoint_files import latest_checkpoint
from actors.protocols import RunLogLike
from cluster.build import Cluster, ray_session, required_cpus, restart_local_ray
from core.config import RunConfig

log = logging.getLogger("e3")

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


def run_with_recovery(
    cfg: RunConfig,
    build: Callable[[], Cluster],
    run: Callable[[Cluster, Path | None], dict[str, Any]],
    checkpoint_dir: Path,
    resume_from: Path | None,
    run_log: RunLogLike,
) -> dict[str, Any]:
    """Run the whole run in the Ray session `cfg.ray` names: `run(cluster, resume_from)` on the cluster `build()`
    starts, then its summary (with `recoveries` and `recovery_log`) goes to the scheduler's `finish` and the
    cluster is shut down. Up to `train.max_failures` times, a lost process or node (`lost_process`) shuts the
    cluster down, builds it again (in a fresh local Ray when this process started its own) and resumes from the
    latest complete checkpoint under `checkpoint_dir` (from the start if there is none: the run log is rewound).
    Any other error, or one loss too many, is raised after a log line naming the last good checkpoint and the
    resume command."""
    recoveries: list[dict[str, Any]] = []
    with ray_session(cfg.ray, required_cpus(cfg)) as own_local_cluster:
        while True:
            try:
                cluster = build()
                try:
                    summary = run(cluster, resume_from)
                    summary.update(recoveries=len(recoveries), recovery_log=recoveries)
                    ray.get(cluster.scheduler.finish.remote(summary))
                finally:
                    cluster.shutdown()
                return summary
            except ray.exceptions.RayError as error:
                resume_from = latest_checkpoint(checkpoint_dir)
                if not lost_process(error) or len(recoveries) >= cfg.train.max_failures:
                    log.error(
                        "the run failed; last good checkpoint: %s. Resume with: python launch.py run_name=%s "
                        "resume=true",
                        resume_from or "none (rerun from the start)",
                        cfg.run_name,
                    )
                    raise
                recoveries.append({"error": str(error).splitlines()[0][:300], "resumed_from": str(resume_from or "")})
                log.warning(
                    "recovery %d of %d (train.max_failures): %s. Shutting the run's actors down, building them "
                    "again and resuming from %s",
                    len(recoveries),
                    cfg.train.max_failures,
                    recoveries[-1]["error"],
                    resume_from or "the start (no checkpoint yet)",
                )
                if resume_from is None:
                    run_log.rewind(0)
                if own_local_cluster:  # the lost node may have been this machine's Ray itself
                    restart_local_ray(cfg.ray, required_cpus(cfg))
