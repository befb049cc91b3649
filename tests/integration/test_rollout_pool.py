"""Rollout workers as a pool on a real local Ray cluster: balanced requests, temperature and weights reaching
every worker and stamped on every rollout, generation following the synced weights, and a worker process killed
mid-step being replaced (with the current weights)."""

from __future__ import annotations

import os
import signal

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from cluster.build import build_rollout_pool
from core.messages import TemperatureUpdate
from tests.support.config import run_config
from tests.support.rollouts import (
    LOGPROB_ATOL,
    PERTURBATION,
    assert_generated_with,
    reference_logprobs,
    requests,
    wait_until_gone,
)


@pytest.fixture(scope="module")
def perturbed(embedded_task):
    """The base policy with every parameter perturbed: (state dict as the learner sends it, its transformers
    model, the unperturbed transformers model)."""
    base = load_file(
        str(embedded_task.model / "model.safetensors")
    )  # tied head: the embedding only, like the learner's
    generator = torch.Generator().manual_seed(1234)
    weights = {
        name: t + PERTURBATION * (t.std() if t.numel() > 1 else t.abs()) * torch.randn(t.shape, generator=generator)
        for name, t in base.items()
    }
    base_model = AutoModelForCausalLM.from_pretrained(embedded_task.model, dtype=torch.float32).eval()
    model = AutoModelForCausalLM.from_pretrained(embedded_task.model, dtype=torch.float32).eval()
    model.load_state_dict(weights, strict=False)
    assert all(not torch.equal(p, q) for p, q in zip(model.parameters(), base_model.parameters(), strict=True))
    return weights, model, base_model


@pytest.fixture(scope="module")
def pool(embedded_task, ray_cluster, tmp_path_factory):
    cfg = run_config(tmp_path_factory.mktemp("pool"), "rollout.num_workers=2", "rollout.engine=vllm")
    pool = build_rollout_pool(cfg, embedded_task.model)
    yield pool
    pool.shutdown()


def test_temperature_and_weights_reach_every_worker_and_are_stamped(pool, ray_cluster, perturbed):
    weights, model, base_model = perturbed
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
    assert_generated_with(rollouts, model, base_model, 0.7)  # both workers sample from the synced weights


def test_worker_process_killed_during_a_step_is_replaced_and_its_requests_reissued(pool, perturbed):
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
    _, model, base_model = perturbed
    assert_generated_with([r for r in rollouts if r.worker == "rollout-0"], model, base_model, 0.9)  # not the base


class KeptSource:
    """A weight source (what `keep_weights` copies from) holding fixed weights."""

    def __init__(self, ray_module, weights: dict) -> None:
        self.ref = ray_module.put(weights)

    def state_dict_ref(self):
        return self.ref


def test_worker_lost_under_generation_issued_ahead_is_replaced_with_the_weights_it_was_issued_with(
    pool, ray_cluster, embedded_task
):
    """Generation submitted ahead of training (`submit`/`collect`): the learner has moved on by the time it is
    collected, so a replacement must get the weights kept for the issue version, not the pool's current ones
    (here the perturbed weights every worker holds; the kept copy of version 5 is the base policy, so that the
    test tells the two apart), and its share must be answered exactly once."""
    base = load_file(str(embedded_task.model / "model.safetensors"))
    pool.keep_weights(KeptSource(ray_cluster, base), 5)
    restarts = pool.restarts
    victim = pool.info()[1]["pid"]
    os.kill(victim, signal.SIGKILL)  # before its share arrives: a tiny model answers faster than a kill lands
    wait_until_gone(victim)
    pending = pool.submit(requests([12] * 8, step=9))
    rollouts = pool.collect(pending)
    assert pool.restarts == restarts + 1
    assert [len(r.completions) for r in rollouts] == [12] * 8 and [r.step for r in rollouts] == [9] * 8
    assert [r.question_id for r in rollouts] == [f"q{i}" for i in range(8)]
    assert {r.weights_version for r in rollouts} == {5} and {r.temperature for r in rollouts} == {0.9}
    base_model = AutoModelForCausalLM.from_pretrained(embedded_task.model, dtype=torch.float32).eval()
    replaced = [r for r in rollouts if r.worker == "rollout-1"]
    assert replaced and all(r.weights_version == 5 for r in replaced)
    gaps = [
        (torch.tensor(c.logprobs) - want).abs().max()
        for r in replaced
        for c, want in zip(r.completions, reference_logprobs(base_model, r, 0.9), strict=True)
    ]
    assert max(gaps) <= LOGPROB_ATOL  # sampled with the kept (issue-time) weights
    pool.release_weights(6)
    assert not pool._kept
