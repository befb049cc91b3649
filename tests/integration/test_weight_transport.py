"""The collective weight transport and the rollout pool's fault tolerance, on a real local Ray cluster: a real
FSDP2 learner group (two gloo ranks) broadcasts its weights to real rollout workers (vLLM and transformers), and
workers killed (SIGKILL) or hung (fakes) during a weight sync, a temperature update, held-out evaluation or
generation are replaced without any work counted twice."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import shutil
import signal
import time
from functools import partial

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from actors.rollout_worker import RolloutWorker
from actors.weight_transport import TensorSpec, plan_buckets
from cluster.build import spawn_rollout_worker
from cluster.learner_group import LearnerGroup
from cluster.rollout_pool import RolloutPool
from cluster.weight_sync import make_transport
from core.messages import TemperatureUpdate
from tests.integration.conftest import run_config
from tests.integration.fake_workers import (
    HANG_S,
    FakeWorkerDyingMidSync,
    FakeWorkerHungInGeneration,
    FakeWorkerHungInSync,
)
from tests.integration.test_rollout_pool import (
    PERTURBATION,
    assert_generated_with,
    reference_logprobs,
    requests,
    wait_until_gone,
)

BUCKET_MB = 0.25
"""Small buckets, so that the 1.0M-parameter policy (4 MB in float32) crosses in many broadcasts."""
SYNC_TIMEOUT_S = 20.0
"""The deadline of a weight sync or temperature update in these tests (a sync takes well under a second)."""


def test_plan_buckets_keeps_order_and_gives_large_tensors_their_own_bucket():
    specs = [TensorSpec("a", (10,)), TensorSpec("b", (20,)), TensorSpec("big", (5, 30)), TensorSpec("c", (40,))]
    layout = plan_buckets(specs, torch.float32, bucket_bytes=4 * 64)  # 64 elements
    assert [[s.name for s in bucket] for bucket in layout.buckets] == [["a", "b"], ["big"], ["c"]]
    assert layout.names == ["a", "b", "big", "c"] and layout.numel == 220 and layout.nbytes == 880


@pytest.fixture(scope="module")
def perturbed_policy(embedded_task, tmp_path_factory):
    """A model directory holding the base policy with every parameter perturbed (the learner starts from it,
    the workers from the base policy), and the transformers models of both."""
    folder = tmp_path_factory.mktemp("perturbed-policy")
    for file in embedded_task.model.iterdir():
        if file.is_file():
            shutil.copy2(file, folder / file.name)
    base = load_file(str(embedded_task.model / "model.safetensors"))
    generator = torch.Generator().manual_seed(4321)
    weights = {
        name: t + PERTURBATION * (t.std() if t.numel() > 1 else t.abs()) * torch.randn(t.shape, generator=generator)
        for name, t in base.items()
    }
    save_file(weights, str(folder / "model.safetensors"))
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    base_model = AutoModelForCausalLM.from_pretrained(embedded_task.model, dtype=torch.float32).eval()
    return folder, model, base_model


@pytest.fixture(scope="module")
def learner(perturbed_policy, ray_cluster, tmp_path_factory):
    """Two FSDP2 ranks (gloo) holding the perturbed policy."""
    cfg = run_config(tmp_path_factory.mktemp("learner"), "learner.num_ranks=2")
    group = LearnerGroup(str(perturbed_policy[0]), cfg.learner, "float32", seed=0)
    yield group
    group.shutdown()


def make_pool(
    tmp_path, model, engine: str, fakes: dict[int, type] | None = None, workers: int = 2, **overrides
) -> RolloutPool:
    """`workers` workers on the base policy with the collective transport; `fakes[i]` is worker i's class at
    its first spawn only (its replacement is a real `RolloutWorker`)."""
    cfg = run_config(tmp_path, f"rollout.num_workers={workers}", f"rollout.engine={engine}")
    rollout = dataclasses.replace(cfg.rollout, **overrides)
    spawn_real = partial(
        spawn_rollout_worker,
        model_path=str(model),
        cfg=rollout,
        dtype="float32",
        seed=0,
        max_model_len=cfg.data.max_prompt_tokens + rollout.max_new_tokens,
    )
    first = dict(fakes or {})

    def spawn(index: int):
        return spawn_real(index, worker_class=first.pop(index, RolloutWorker))

    pool = RolloutPool(
        spawn,
        workers,
        timeout_s=rollout.timeout_s,
        sync_timeout_s=rollout.sync_timeout_s,
        max_restarts_per_hour=rollout.max_restarts_per_hour,
        transport=make_transport("collective", BUCKET_MB, rollout.sync_timeout_s),
    )
    pool.wait_ready()
    return pool


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["vllm", "hf"])
def test_collective_sync_generates_with_the_learners_weights(
    engine, embedded_task, learner, perturbed_policy, tmp_path
):
    _, model, base_model = perturbed_policy
    pool = make_pool(tmp_path, embedded_task.model, engine, sync_timeout_s=SYNC_TIMEOUT_S)
    try:
        layout = learner.weight_layout(int(BUCKET_MB * 2**20))
        assert len(layout.buckets) > 4 and layout.dtype == "float32"
        pool.set_temperature(TemperatureUpdate(0.8, step=0))
        pool.sync_weights(learner, version=1)
        assert [(i["weights_version"], i["weights_intact"]) for i in pool.info()] == [(1, True), (1, True)]
        rollouts = pool.generate(requests([4, 4, 4, 4]))
        assert {r.worker for r in rollouts} == {"rollout-0", "rollout-1"} and {r.weights_version for r in rollouts} == {
            1
        }
        assert_generated_with(rollouts, model, base_model, 0.8)  # log-prob gap <= 1e-4 to the learner's weights
        pool.sync_weights(learner, version=2)  # the same group again: no rebuild, same result
        assert [i["weights_version"] for i in pool.info()] == [2, 2] and pool.restarts == 0
    finally:
        pool.shutdown()


GPU_LOGPROB_ATOL = 1e-3
"""On a GPU, vLLM's float32 kernels may use TF32 matmuls (10-bit mantissa) against the CPU reference: looser than
the CPU's 1e-4, still an order below the 1e-2 gap of sampling from other weights (test_rollout_pool.py)."""


@pytest.mark.gpu
@pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.device_count() < 2 or importlib.util.find_spec("vllm") is None,
    reason="needs two CUDA GPUs (NCCL cannot put two ranks on one) and vLLM",
)
def test_nccl_sync_generates_with_the_learners_weights_on_gpu(embedded_task, perturbed_policy, ray_cluster, tmp_path):
    """The same code path as on CPU, with NCCL and CUDA tensors: one learner rank and one vLLM worker, a GPU each."""
    _, model, base_model = perturbed_policy
    cfg = run_config(tmp_path, "learner.num_ranks=1", "learner.num_gpus=1")
    learner = LearnerGroup(str(perturbed_policy[0]), cfg.learner, "float32", seed=0)
    pool = None
    try:
        pool = make_pool(tmp_path, embedded_task.model, "vllm", workers=1, num_gpus=1.0, gpu_memory_utilization=0.3)
        pool.set_temperature(TemperatureUpdate(0.8, step=0))
        pool.sync_weights(learner, version=1)
        rollouts = pool.generate(requests([4, 4]))
        assert {r.weights_version for r in rollouts} == {1}
        gaps = []
        for rollout in rollouts:
            for c, want in zip(rollout.completions, reference_logprobs(model, rollout, 0.8), strict=True):
                gaps.append(float((torch.tensor(c.logprobs) - want).abs().max()))
        assert max(gaps) <= GPU_LOGPROB_ATOL, max(gaps)
    finally:
        if pool is not None:
            pool.shutdown()
        learner.shutdown()


# ----------------------------------------------------------------------------------- killed worker processes


@pytest.fixture
def pool(embedded_task, learner, ray_cluster, tmp_path_factory):
    """Two vLLM workers at version 3 and temperature 0.9, for one test: the worker names are taken while it lives,
    so the tests that build pools of their own can only run after it is shut down."""
    pool = make_pool(tmp_path_factory.mktemp("fault-pool"), embedded_task.model, "vllm", sync_timeout_s=SYNC_TIMEOUT_S)
    pool.set_temperature(TemperatureUpdate(0.9, step=3))
    pool.sync_weights(learner, version=3)
    yield pool
    pool.shutdown()


def kill_worker(pool: RolloutPool, index: int) -> int:
    """SIGKILL worker `index`'s process (its pid from `info()`) and wait until it is gone; returns the pid."""
    pid = pool.info()[index]["pid"]
    os.kill(pid, signal.SIGKILL)
    wait_until_gone(pid)
    return pid


@pytest.mark.slow
def test_worker_killed_before_a_weight_sync_is_replaced_and_gets_the_version_once(pool, learner, perturbed_policy):
    restarts = pool.restarts
    victim = kill_worker(pool, 1)
    pool.sync_weights(learner, version=4)
    assert pool.restarts == restarts + 1
    infos = pool.info()
    assert infos[1]["pid"] != victim and infos[1]["name"] == "rollout-1"
    assert [(i["weights_version"], i["temperature"], i["weights_intact"]) for i in infos] == [(4, 0.9, True)] * 2
    _, model, base_model = perturbed_policy
    rollouts = pool.generate(requests([6, 6], step=4))
    assert {r.weights_version for r in rollouts} == {4}
    assert_generated_with(rollouts, model, base_model, 0.9)


@pytest.mark.slow
def test_worker_killed_before_a_temperature_update_is_replaced_with_the_weights(pool, perturbed_policy):
    restarts = pool.restarts
    victim = kill_worker(pool, 0)
    pool.set_temperature(TemperatureUpdate(0.75, step=5))
    assert pool.restarts == restarts + 1
    infos = pool.info()
    assert infos[0]["pid"] != victim
    assert [(i["temperature"], i["temperature_step"]) for i in infos] == [(0.75, 5)] * 2
    version = infos[1]["weights_version"]
    assert infos[0]["weights_version"] == version
    _, model, base_model = perturbed_policy
    rollouts = pool.generate(requests([8, 8], step=5))
    assert_generated_with([r for r in rollouts if r.worker == "rollout-0"], model, base_model, 0.75)


@pytest.mark.slow
def test_worker_killed_before_heldout_evaluation_is_replaced_and_every_prompt_answered_once(pool):
    prompts = [[1, 2, 3, 4 + i] for i in range(10)]
    before = pool.generate_greedy(prompts, max_new_tokens=16)
    restarts = pool.restarts
    kill_worker(pool, 1)
    after = pool.generate_greedy(prompts, max_new_tokens=16)
    assert pool.restarts == restarts + 1
    assert [c.token_ids for c in after] == [c.token_ids for c in before]  # same weights, greedy: same answers


# -------------------------------------------------------------- fakes: dying mid-sync, hung past the deadline


@pytest.mark.slow
def test_fake_worker_dying_mid_sync_is_replaced_and_broken_peers_too(
    embedded_task, learner, perturbed_policy, tmp_path
):
    pool = make_pool(tmp_path, embedded_task.model, "vllm", {0: FakeWorkerDyingMidSync}, sync_timeout_s=SYNC_TIMEOUT_S)
    try:
        pool.set_temperature(TemperatureUpdate(0.9, step=0))
        pool.sync_weights(learner, version=7)
        infos = pool.info()
        assert 1 <= pool.restarts <= 2  # the dead one, and its peer if its stream broke midway
        assert [(i["weights_version"], i["weights_intact"], i["temperature"]) for i in infos] == [(7, True, 0.9)] * 2
        _, model, base_model = perturbed_policy
        assert_generated_with(pool.generate(requests([6, 6])), model, base_model, 0.9)
    finally:
        pool.shutdown()


@pytest.mark.slow
def test_fake_hung_workers_in_a_weight_sync_and_in_generation_are_replaced_once_each(embedded_task, learner, tmp_path):
    start = time.monotonic()
    fakes = {0: FakeWorkerHungInSync, 1: FakeWorkerHungInGeneration}
    pool = make_pool(tmp_path, embedded_task.model, "hf", fakes, sync_timeout_s=8.0, timeout_s=10.0)
    try:
        pool.set_temperature(TemperatureUpdate(1.0, step=1))
        pool.sync_weights(learner, version=2)  # worker 0 hangs: killed at the deadline, replaced, synced
        assert pool.restarts == 1
        assert [(i["weights_version"], i["temperature"]) for i in pool.info()] == [(2, 1.0)] * 2
        rollouts = pool.generate(requests([4, 4, 4, 4], step=1))  # worker 1 hangs: replaced, its requests re-issued
        assert pool.restarts == 2
        assert [len(r.completions) for r in rollouts] == [4] * 4
        assert [r.question_id for r in rollouts] == [f"q{i}" for i in range(4)]
        assert {r.weights_version for r in rollouts} == {2} and {r.worker for r in rollouts} == {
            "rollout-0",
            "rollout-1",
        }
    finally:
        pool.shutdown()
    assert time.monotonic() - start < HANG_S / 4  # nobody waited for a sleeper
