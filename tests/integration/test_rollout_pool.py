"""Rollout workers as a pool on a real local Ray cluster: balanced requests, temperature and weights reaching
every worker and stamped on every rollout, and a worker process killed mid-step being replaced."""

from __future__ import annotations

import os
import signal
import time

import pytest
from safetensors.torch import load_file

from cluster.build import build_rollout_pool
from core.messages import RolloutRequest, TemperatureUpdate
from tests.integration.conftest import run_config


@pytest.fixture(scope="module")
def pool(embedded_task, ray_cluster, tmp_path_factory):
    cfg = run_config(tmp_path_factory.mktemp("pool"), "rollout.num_workers=2", "rollout.engine=vllm")
    pool = build_rollout_pool(cfg, embedded_task.model)
    yield pool
    pool.shutdown()


def requests(counts: list[int], step: int = 0) -> list[RolloutRequest]:
    prompt = (1, 2, 3, 4)
    return [RolloutRequest(f"q{i}", prompt, n, 24, seed=100 + i, step=step) for i, n in enumerate(counts)]


def test_temperature_and_weights_reach_every_worker_and_are_stamped(pool, ray_cluster, embedded_task):
    weights = load_file(str(embedded_task.model / "model.safetensors"))
    pool.load_weights(ray_cluster.put(weights), version=5)
    pool.set_temperature(TemperatureUpdate(0.7, step=4))
    assert [(i["temperature"], i["weights_version"]) for i in pool.info()] == [(0.7, 5), (0.7, 5)]

    rollouts = pool.generate(requests([6, 1, 3, 2, 4]))
    assert [len(r.completions) for r in rollouts] == [6, 1, 3, 2, 4]
    assert [r.question_id for r in rollouts] == ["q0", "q1", "q2", "q3", "q4"]
    assert {r.temperature for r in rollouts} == {0.7} and {r.weights_version for r in rollouts} == {5}
    assert {r.worker for r in rollouts} == {"rollout-0", "rollout-1"}  # balanced: 16 samples, 8 each
    per_worker = {w: sum(len(r.completions) for r in rollouts if r.worker == w) for w in ("rollout-0", "rollout-1")}
    assert per_worker == {"rollout-0": 8, "rollout-1": 8}


def test_worker_process_killed_during_a_step_is_replaced_and_its_requests_reissued(pool):
    pool.set_temperature(TemperatureUpdate(0.9, step=7))
    victim = pool.info()[0]["pid"]
    # the process dies between the step's broadcasts and its generation call (killing it while it generates
    # is a race against a tiny model that answers in a fraction of a second)
    os.kill(victim, signal.SIGKILL)
    wait_until_gone(victim)
    rollouts = pool.generate(requests([12] * 8, step=8))
    assert pool.restarts == 1
    assert [len(r.completions) for r in rollouts] == [12] * 8  # every question's samples exactly once
    assert [r.question_id for r in rollouts] == [f"q{i}" for i in range(8)]
    assert {r.temperature for r in rollouts} == {0.9} and {r.weights_version for r in rollouts} == {5}
    fresh = pool.info()[0]
    assert fresh["pid"] != victim and fresh["temperature"] == 0.9 and fresh["weights_version"] == 5


def wait_until_gone(pid: int, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    raise AssertionError(f"process {pid} still alive after SIGKILL")
