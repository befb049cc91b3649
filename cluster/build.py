"""Where the run happens: start or join Ray, and turn the plain actor classes into named Ray actors with the
resources the config gives them. Resources live here and nowhere else.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from actors.reward_scorer import RewardScorer
from actors.rollout_worker import RolloutWorker
from actors.scheduler import Scheduler
from cluster.learner_group import LearnerGroup
from cluster.rollout_pool import RolloutPool
from cluster.weight_sync import make_transport
from core.config import RayConfig, RunConfig
from core.messages import TemperatureUpdate

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
SCHEDULER_NAME = "e3/scheduler"
SCORER_NAME = "e3/reward-scorer"
ROLLOUT_NAME = "e3/rollout-{index}"
LIGHT_ACTOR_CPUS = 0.1
# Ray reads this when it is imported; "0" keeps a local cluster's ports on 127.0.0.1 (measured: without it, Ray
# listens on every interface). Set it before the first `import ray` of a process that starts a local cluster.
LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # the scheduler and the scorer's front end mostly wait on others


def worker_env() -> dict[str, str]:
    """Environment of every Ray worker process: the repo importable, no hub access, quiet libraries."""
    path = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = {
        "PYTHONPATH": path,
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "VLLM_LOGGING_LEVEL": os.environ.get("VLLM_LOGGING_LEVEL", "ERROR"),
        "TQDM_DISABLE": "1",
        "WANDB_SILENT": "true",
        "PYTHONWARNINGS": os.environ.get("PYTHONWARNINGS", "ignore"),
    }
    return env


def required_cpus(cfg: RunConfig) -> float:
    """Ray CPUs that the run's actors reserve in total."""
    return (
        cfg.rollout.num_workers * cfg.rollout.num_cpus
        + cfg.learner.num_ranks * cfg.learner.num_cpus
        + 2 * LIGHT_ACTOR_CPUS
    )


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
    if os.environ.get(LOOPBACK_ENV) != "0":
        log.warning("%s=0 was not set before Ray was imported: Ray may listen on every interface", LOOPBACK_ENV)
    num_cpus = cfg.num_cpus if cfg.num_cpus is not None else max(os.cpu_count() or 1, math.ceil(needed_cpus))
    ray.init(
        address="local",
        num_cpus=num_cpus,
        include_dashboard=cfg.include_dashboard,
        dashboard_host=cfg.dashboard_host,
        _node_ip_address="127.0.0.1",
        runtime_env={"env_vars": env},
        logging_level=logging.WARNING,
        configure_logging=True,
    )
    return True


def spawn_rollout_worker(
    index: int, model_path: str, cfg: Any, dtype: str, seed: int, max_model_len: int, worker_class: type = RolloutWorker
) -> ray.actor.ActorHandle:
    """Create rollout worker `index` as the named actor `e3/rollout-<index>` (of `worker_class`: tests pass
    fakes derived from `RolloutWorker`)."""
    actor = ray.remote(worker_class).options(
        name=ROLLOUT_NAME.format(index=index),
        num_cpus=cfg.num_cpus,
        num_gpus=cfg.num_gpus,
        max_restarts=0,
    )
    return actor.remote(model_path, cfg, dtype, seed, max_model_len, name=f"rollout-{index}")


class Remote:
    """Calls a Ray actor's methods as if it were local: each call is one remote call and a bounded wait."""

    def __init__(self, handle: ray.actor.ActorHandle, timeout_s: float | None = None) -> None:
        self._handle = handle
        self._timeout_s = timeout_s

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        method = getattr(self._handle, name)
        return lambda *args, **kwargs: ray.get(method.remote(*args, **kwargs), timeout=self._timeout_s)

    def __reduce__(self) -> tuple:
        return (Remote, (self._handle, self._timeout_s))


@dataclass
class Cluster:
    """The run's actors: the scheduler (driven by launch.py), and the parts it drives."""

    scheduler: ray.actor.ActorHandle
    rollouts: RolloutPool
    learner: LearnerGroup
    scorer: ray.actor.ActorHandle

    def shutdown(self) -> None:
        """Stop every actor of the run (the Ray cluster itself stays up)."""
        try:
            ray.get(self.scorer.close.remote(), timeout=30)
        except Exception as err:  # noqa: BLE001 - shutting down what is left matters more
            log.warning("reward scorer did not close cleanly: %r", err)
        for handle in (self.scheduler, self.scorer):
            ray.kill(handle, no_restart=True)
        self.rollouts.shutdown()
        self.learner.shutdown()


def build_rollout_pool(cfg: RunConfig, model_path: Path, worker_class: type = RolloutWorker) -> RolloutPool:
    """Start `rollout.num_workers` named rollout workers (of `worker_class`) as one pool, with the weight
    transport `rollout.weight_transport`, and wait until their engines are up."""
    spawn = partial(
        spawn_rollout_worker,
        model_path=str(model_path),
        cfg=cfg.rollout,
        dtype=cfg.model.dtype,
        seed=cfg.train.seed,
        max_model_len=cfg.data.max_prompt_tokens + cfg.rollout.max_new_tokens,
        worker_class=worker_class,
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


def build_scorer(cfg: RunConfig, reward_fn: str) -> ray.actor.ActorHandle:
    """Start the named reward scorer actor."""
    return ray.remote(RewardScorer).options(name=SCORER_NAME, num_cpus=LIGHT_ACTOR_CPUS).remote(reward_fn, cfg.reward)


def build_cluster(cfg: RunConfig, model_path: Path, reward_fn: str, scheduler_args: dict[str, Any]) -> Cluster:
    """Start the rollout workers, the learner group, the reward scorer and the scheduler, and wait until the
    workers have their engines. `scheduler_args` are the Scheduler's data and plan (questions, prompts, ...)."""
    learner = LearnerGroup(str(model_path), cfg.learner, cfg.model.dtype, cfg.train.seed)
    scorer = build_scorer(cfg, reward_fn)
    rollouts = build_rollout_pool(cfg, model_path)
    rollouts.set_temperature(TemperatureUpdate(cfg.temperature.initial, step=0))
    here = NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)
    scheduler = (
        ray.remote(Scheduler)
        .options(name=SCHEDULER_NAME, num_cpus=LIGHT_ACTOR_CPUS, scheduling_strategy=here)
        .remote(
            rollouts=rollouts,
            learner=learner,
            scorer=Remote(scorer),
            budget=cfg.budget,
            temperature=cfg.temperature,
            reward=cfg.reward,
            **scheduler_args,
        )
    )
    return Cluster(scheduler=scheduler, rollouts=rollouts, learner=learner, scorer=scorer)
