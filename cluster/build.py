"""Where the run happens: start or join Ray, and turn the plain actor classes into named Ray actors with the
resources the config gives them. Resources live here and nowhere else.
"""

from __future__ import annotations

import logging
import math
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from actors.colocated import ColocatedRank
from actors.learner import Learner
from actors.protocols import RunLogLike
from actors.reward_scorer import RewardScorer
from actors.rollout_worker import RolloutWorker
from actors.scheduler import Scheduler
from actors.settings import SchedulerSettings
from cluster.colocated import ColocatedPool
from cluster.environment import LOOPBACK_ENV, ray_on_loopback, worker_env
from cluster.learner_group import LearnerGroup
from cluster.reward_client import RewardScorerClient
from cluster.rollout_pool import ROLLOUT_NAME, RolloutPool
from cluster.shared_folder import check_shared_folder
from cluster.weight_sync import make_transport
from core.config import RayConfig, RewardConfig, RolloutConfig, RunConfig
from tasks.prepare import Split

log = logging.getLogger(__name__)

SCHEDULER_NAME = "e3/scheduler"
SCORER_NAME = "e3/reward-scorer"
LIGHT_ACTOR_CPUS = 0.1
"""CPUs reserved by the scheduler and the reward scorer's front end: they mostly wait on the others."""
NODE_RESOURCE_SHARE = 0.01
"""How much of a custom node resource (`ray.rollout_node_resource`, `ray.learner_node_resource`) each rollout
worker or learner rank takes: a node started with 1 of it holds up to 100 of them."""


def required_cpus(cfg: RunConfig) -> float:
    """Ray CPUs that the run's actors reserve in total (colocated engines use their learner rank's)."""
    rollout = 0.0 if cfg.rollout.placement == "colocated" else cfg.rollout.num_workers * cfg.rollout.num_cpus
    return rollout + cfg.learner.num_ranks * cfg.learner.num_cpus + 2 * LIGHT_ACTOR_CPUS


def max_model_len(cfg: RunConfig) -> int:
    """The longest prompt + response an engine serves."""
    return cfg.data.max_prompt_tokens + cfg.rollout.max_new_tokens


def start_ray(cfg: RayConfig, needed_cpus: float) -> bool:
    """Join the cluster at `cfg.address`, or start a local one on loopback with enough logical CPUs.

    Returns whether this call connected (False when Ray was already initialized in this process, as in tests),
    so the caller knows whether to disconnect at the end.
    """
    if ray.is_initialized():
        return False
    env = worker_env()
    if cfg.address:
        ray.init(address=cfg.address, runtime_env={"env_vars": env}, logging_level=logging.WARNING)
        return True
    if not ray_on_loopback():
        log.warning("%s=0 was not set before Ray was imported: Ray may listen on every interface", LOOPBACK_ENV)
    num_cpus = cfg.num_cpus if cfg.num_cpus is not None else max(os.cpu_count() or 1, math.ceil(needed_cpus))
    metrics_port = (cfg.metrics_export_port or free_loopback_port()) if cfg.include_dashboard else None
    ray.init(
        address="local",
        num_cpus=num_cpus,
        include_dashboard=cfg.include_dashboard,
        dashboard_host=cfg.dashboard_host,
        _node_ip_address="127.0.0.1",
        _metrics_export_port=metrics_port,
        runtime_env={"env_vars": env},
        logging_level=logging.WARNING,
        configure_logging=True,
    )
    if metrics_port is not None:
        log.info("Prometheus metrics of this node (the e3_* gauges): http://127.0.0.1:%d/metrics", metrics_port)
    return True


def free_loopback_port() -> int:
    """A TCP port free on 127.0.0.1 right now (another process could take it before it is bound)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def ray_session(cfg: RayConfig, needed_cpus: float) -> Iterator[bool]:
    """`start_ray` for the block, and a disconnect at its end when this call connected. Yields whether this call
    started a local cluster of its own (which `restart_local_ray` may then start afresh)."""
    connected = start_ray(cfg, needed_cpus)
    try:
        yield connected and not cfg.address
    finally:
        if connected:
            ray.shutdown()


def restart_local_ray(cfg: RayConfig, needed_cpus: float) -> None:
    """Stop the local cluster this process started (and whatever of it is left after a failure) and start a
    fresh one. Only for a cluster of one's own: a driver of a Ray job stays connected, since Ray deletes the job's
    working directory when its driver disconnects."""
    ray.shutdown()
    start_ray(cfg, needed_cpus)


def node_resources(name: str) -> dict[str, float]:
    """The share of the custom node resource `name` an actor requires to land on a node that has it; {} when
    `name` is empty (anywhere)."""
    return {name: NODE_RESOURCE_SHARE} if name else {}


def spawn_rollout_worker(
    index: int,
    model_path: str,
    cfg: RolloutConfig,
    dtype: str,
    seed: int,
    max_model_len: int,
    worker_class: type = RolloutWorker,
    node_resource: str = "",
) -> ray.actor.ActorHandle:
    """Create rollout worker `index` as the named actor `e3/rollout-<index>` (of `worker_class`: tests pass
    fakes derived from `RolloutWorker`), on a node that has the custom resource `node_resource` when one is
    named."""
    actor = ray.remote(worker_class).options(
        name=ROLLOUT_NAME.format(index=index),
        num_cpus=cfg.num_cpus,
        num_gpus=cfg.num_gpus,
        resources=node_resources(node_resource),
        max_restarts=0,
    )
    return actor.remote(
        model_path=model_path, config=cfg, dtype=dtype, seed=seed, max_model_len=max_model_len, name=f"rollout-{index}"
    )


@dataclass
class EvalCluster:
    """The actors that evaluate a policy: the rollout workers and the reward scorer (`mode=eval`)."""

    rollout_pool: RolloutPool
    scorer: RewardScorerClient

    def shutdown(self) -> None:
        """Stop the scorer (its worker processes first) and the rollout workers."""
        self.scorer.shutdown()
        self.rollout_pool.shutdown()


@dataclass
class Cluster:
    """The run's actors: the scheduler (driven by launch.py), and the parts it drives."""

    scheduler: ray.actor.ActorHandle
    rollout_pool: RolloutPool
    learner_group: LearnerGroup
    scorer: RewardScorerClient

    def shutdown(self, close_timeout_s: float = 30.0) -> None:
        """Stop every actor of the run (the Ray cluster itself stays up), the scheduler after it has closed its
        run log (so that a W&B run stopped by a failure keeps every step it logged), if it still can within
        `close_timeout_s`."""
        try:
            ray.get(self.scheduler.close.remote(), timeout=close_timeout_s)
        except ray.exceptions.RayError:  # the scheduler died with the run, or is stuck
            log.warning("the scheduler could not close its run log; W&B may lack the last steps it logged")
        ray.kill(self.scheduler, no_restart=True)
        EvalCluster(self.rollout_pool, self.scorer).shutdown()
        self.learner_group.shutdown()


def build_rollout_pool(cfg: RunConfig, model_path: Path, worker_class: type = RolloutWorker) -> RolloutPool:
    """Start `rollout.num_workers` named rollout workers (of `worker_class`) as one pool, with the weight
    transport `rollout.weight_transport`, and wait until their engines are up."""
    spawn = partial(
        spawn_rollout_worker,
        model_path=str(model_path),
        cfg=cfg.rollout,
        dtype=cfg.model.dtype,
        seed=cfg.train.seed,
        max_model_len=max_model_len(cfg),
        worker_class=worker_class,
        node_resource=cfg.ray.rollout_node_resource,
    )
    r = cfg.rollout
    pool = RolloutPool(
        spawn,
        r.num_workers,
        timeout_s=r.timeout_s,
        sync_timeout_s=r.sync_timeout_s,
        max_restarts_per_hour=r.max_restarts_per_hour,
        transport=make_transport(r.weight_transport, r.weight_bucket_mb, r.sync_timeout_s),
    )
    pool.wait_ready()
    return pool


def build_scorer(config: RewardConfig, reward_fn: str) -> RewardScorerClient:
    """Start the named reward scorer actor, behind a client whose calls have deadlines."""
    handle = ray.remote(RewardScorer).options(name=SCORER_NAME, num_cpus=LIGHT_ACTOR_CPUS).remote(reward_fn, config)
    return RewardScorerClient(handle, config)


def build_eval_cluster(cfg: RunConfig, model_path: Path, reward_fn: str) -> EvalCluster:
    """Start the rollout workers on `model_path` and the reward scorer, as training does, for an evaluation."""
    return EvalCluster(build_rollout_pool(cfg, model_path), build_scorer(cfg.reward, reward_fn))


def build_cluster(
    cfg: RunConfig,
    model_path: Path,
    reward_fn: str,
    *,
    train: Split,
    settings: SchedulerSettings,
    heldout: Split | None,
    run_log: RunLogLike | None,
) -> Cluster:
    """Start the rollout workers, the learner group, the reward scorer and the scheduler (holding `train`, the
    `settings`, the `heldout` questions and the `run_log`), and wait until the workers have their engines.

    The scheduler runs on this (the driver's) node; when the learner ranks landed on other nodes, the checkpoint
    folder must be shared with them (`check_shared_folder` refuses the run otherwise). Whatever was started is
    stopped again when a later part fails. With `rollout.placement=colocated` the learner ranks hold the engines
    and are the rollout pool too (cluster/colocated.py)."""
    colocated = cfg.rollout.placement == "colocated"
    started: list = []
    try:
        learner_group = LearnerGroup(
            str(model_path),
            config=cfg.learner,
            dtype=cfg.model.dtype,
            seed=cfg.train.seed,
            node_resource=cfg.ray.learner_node_resource,
            node_resource_share=NODE_RESOURCE_SHARE,
            rank_class=ColocatedRank if colocated else Learner,
            rank_options={"rollout": cfg.rollout, "max_model_len": max_model_len(cfg)} if colocated else {},
        )
        started.append(learner_group)
        here = ray.get_runtime_context().get_node_id()
        if settings.checkpoint_dir:
            roles = {node: "learner" for node in learner_group.node_ids()}
            check_shared_folder(Path(settings.checkpoint_dir), {**roles, here: "driver and scheduler"})
        scorer = build_scorer(cfg.reward, reward_fn)
        started.append(scorer)
        rollout_pool = ColocatedPool(learner_group, cfg.rollout) if colocated else build_rollout_pool(cfg, model_path)
        started.append(rollout_pool)
        scheduler = (
            ray.remote(Scheduler)
            .options(
                name=SCHEDULER_NAME,
                num_cpus=LIGHT_ACTOR_CPUS,
                scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=here, soft=False),
            )
            .remote(
                train=train,
                settings=settings,
                budget=cfg.budget,
                temperature=cfg.temperature,
                reward=cfg.reward,
                rollout_pool=rollout_pool,
                learner_group=learner_group,
                scorer=scorer,
                heldout=heldout,
                run_log=run_log,
            )
        )
    except BaseException:
        for part in reversed(started):
            part.shutdown()
        raise
    return Cluster(scheduler=scheduler, rollout_pool=rollout_pool, learner_group=learner_group, scorer=scorer)
