"""The collective weight transport and the rollout pool's fault tolerance. Without Ray: two senders (the learner
ranks, each its own group) and two receivers (the workers, members of both groups) as threads of this process,
with uneven row splits. On a real local Ray cluster: a real FSDP2 learner group (two gloo ranks, each sending its
own shards) broadcasts its weights to real rollout workers (vLLM and transformers), and workers killed (SIGKILL)
or hung (fakes) during a weight sync, a temperature update, held-out evaluation or generation are replaced
without any work counted twice."""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
import os
import shutil
import signal
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import pytest
import ray
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from actors.learner import _dim0_sharded
from actors.rollout_worker import RolloutWorker
from actors.weight_transport import (
    BucketLayout,
    TensorSpec,
    WeightGroup,
    _outgoing,
    chunk_rows,
    group_name,
    plan_buckets,
    receive_weights,
    send_weights,
)
from cluster.build import spawn_rollout_worker
from cluster.learner_group import LearnerGroup
from cluster.rollout_pool import ROLLOUT_NAME, RolloutPool
from cluster.weight_sync import make_transport
from core.messages import TemperatureUpdate
from tests.support.config import run_config
from tests.support.fake_workers import (
    HANG_S,
    FakeWorkerDyingInGeneration,
    FakeWorkerDyingInGreedy,
    FakeWorkerDyingInJoin,
    FakeWorkerDyingInSetTemperature,
    FakeWorkerDyingMidSync,
    FakeWorkerHungInGeneration,
    FakeWorkerHungInJoin,
    FakeWorkerHungInSync,
)
from tests.support.rollouts import (
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
    shapes = {"a": (10,), "b": (20,), "big": (5, 30), "c": (40,)}
    specs = [TensorSpec(name, shape, chunk_rows(shape[0], 2)) for name, shape in shapes.items()]
    layout = plan_buckets(specs, torch.float32, bucket_bytes=4 * 64)  # 64 elements of whole tensors
    assert [[s.name for s in bucket] for bucket in layout.buckets] == [["a", "b"], ["big"], ["c"]]
    assert layout.names == ["a", "b", "big", "c"] and layout.numel == 220 and layout.nbytes == 880
    assert layout.ranks == 2 and [layout.part_numel(k, 1) for k in range(3)] == [15, 60, 20]  # big: rows (3, 2)
    assert layout.rank_numel(0) + layout.rank_numel(1) == layout.numel


def test_chunk_rows_splits_like_torch_chunk_and_fsdp2():
    for length in range(10):
        for ranks in range(1, 5):
            chunks = [c.shape[0] for c in torch.chunk(torch.empty(length), ranks)]
            assert chunk_rows(length, ranks) == tuple(chunks + [0] * (ranks - len(chunks))), (length, ranks)


def test_a_parameter_not_sharded_along_dim0_alone_is_refused_by_name():
    with pytest.raises(RuntimeError, match="model.norm.weight .*Shard\\(0\\)"):
        _dim0_sharded("model.norm.weight", torch.nn.Parameter(torch.zeros(4)))


# --------------------------------------------- the transport without Ray: two senders, two receivers, threads

RANKS, WORKERS = 2, 2
GROUP_TIMEOUT_S = 30.0


def sharded_weights(direct_bytes: int = 2 * 12) -> tuple[BucketLayout, dict[str, torch.Tensor]]:
    """Weights with uneven dim-0 splits over two ranks, and their layout in bf16 buckets of 32 elements, tensors
    of at least 12 elements travelling alone (`direct_bytes` 24): a tensor of 5 rows (3 + 2, direct), a small
    one (packed) and a direct one of 1 row (rank 1's part empty) in one bucket; one larger than a bucket (its
    own bucket, already in bf16: sent without a copy) and a small one after it, alone in its packed bucket."""
    generator = torch.Generator().manual_seed(0)
    weights = {
        "a": torch.randn(5, 3, generator=generator),
        "b": torch.randn(4, generator=generator),
        "one": torch.randn(1, 12, generator=generator),
        "big": torch.randn(9, 8, generator=generator).to(torch.bfloat16),
        "c": torch.randn(3, 2, generator=generator),
    }
    specs = [TensorSpec(name, tuple(t.shape), chunk_rows(t.shape[0], RANKS)) for name, t in weights.items()]
    layout = plan_buckets(specs, torch.bfloat16, bucket_bytes=2 * 32, direct_bytes=direct_bytes)
    assert [[s.name for s in bucket] for bucket in layout.buckets] == [["a", "b", "one"], ["big"], ["c"]]
    return layout, weights


def shards_of(weights: dict[str, torch.Tensor], layout: BucketLayout, rank: int):
    """Learner rank `rank`'s rows of every weight, in the layout's order (what `Learner._local_shards` yields)."""
    for bucket in layout.buckets:
        for spec in bucket:
            start = sum(spec.rows[:rank])
            yield spec.name, weights[spec.name][start : start + spec.rows[rank]]


def free_ports(count: int) -> list[int]:
    """`count` distinct TCP ports free on 127.0.0.1 right now."""
    probes = [socket.socket() for _ in range(count)]
    try:
        for probe in probes:
            probe.bind(("127.0.0.1", 0))
        return [probe.getsockname()[1] for probe in probes]
    finally:
        for probe in probes:
            probe.close()


def run_sync(layout: BucketLayout, send, receive) -> tuple[list, list]:
    """`send(group, rank)` on each learner rank's group and `receive(groups)` on each worker (a member of every
    group, ranks 1..W), each in a thread; returns (senders', receivers') results or exceptions, by rank. Every
    thread leaves its groups when done, so a failure anywhere ends the others at once."""
    ports = free_ports(RANKS)

    def sender(rank: int):
        group = WeightGroup("127.0.0.1", ports[rank], 0, 1 + WORKERS, "gloo", GROUP_TIMEOUT_S, group_name("t", rank))
        try:
            return send(group, rank)
        finally:
            group.close()

    def receiver(member: int):
        groups = []
        try:
            for rank, port in enumerate(ports):
                groups.append(
                    WeightGroup("127.0.0.1", port, member, 1 + WORKERS, "gloo", GROUP_TIMEOUT_S, group_name("t", rank))
                )
            return receive(groups)
        finally:
            for group in groups:
                group.close()

    with ThreadPoolExecutor(RANKS + WORKERS) as threads:
        senders = [threads.submit(sender, rank) for rank in range(RANKS)]
        receivers = [threads.submit(receiver, member) for member in range(1, WORKERS + 1)]
        outcomes = [[f.exception(timeout=3 * GROUP_TIMEOUT_S) or f.result() for f in fs] for fs in (senders, receivers)]
    return outcomes[0], outcomes[1]


@pytest.mark.parametrize("direct_bytes", [2 * 12, 2**20], ids=["mixed", "all-packed"])
def test_every_rank_sends_its_rows_and_workers_get_every_tensor_bit_exact_in_order(direct_bytes):
    layout, weights = sharded_weights(direct_bytes)
    direct = {spec.name for bucket in layout.buckets for spec in bucket if layout.direct(spec)}
    assert direct == ({"a", "one", "big"} if direct_bytes == 24 else set())
    senders, receivers = run_sync(
        layout,
        lambda group, rank: send_weights(group, layout, rank, 7, shards_of(weights, layout, rank)),
        lambda groups: list(receive_weights(groups, layout, 7)),  # every tensor kept until the end
    )
    assert senders == [None, None]
    for received in receivers:
        assert [name for name, _ in received] == layout.names
        for name, tensor in received:
            assert tensor.dtype == torch.bfloat16 and torch.equal(tensor, weights[name].to(torch.bfloat16)), name
            if name in direct:  # received in place: the tensor is its whole memory, nothing joined or packed
                assert tensor.untyped_storage().nbytes() == tensor.nbytes, name


def test_a_direct_shard_already_in_the_publish_dtype_is_sent_without_a_copy():
    layout, weights = sharded_weights()
    shards = shards_of(weights, layout, 0)
    for k in range(len(layout.buckets)):
        messages = _outgoing(layout, k, 0, shards, torch.device("cpu"))
        if layout.buckets[k][0].name == "big":
            assert [m.data_ptr() for m in messages] == [weights["big"].data_ptr()]  # rank 0's rows start it
        else:  # the packed part first, then the direct tensors' rows, cast to bf16
            assert messages[0].numel() == layout.packed_numel(k, 0)
            assert all(m.dtype == torch.bfloat16 for m in messages)


def test_a_header_mismatch_on_one_group_raises_before_anything_is_yielded():
    layout, weights = sharded_weights()
    yielded = []

    def receive(groups):
        for item in receive_weights(groups, layout, 7):  # raises on the call: headers are checked before it returns
            yielded.append(item)

    start = time.monotonic()
    senders, receivers = run_sync(
        layout,
        lambda group, rank: send_weights(group, layout, rank, 7 + rank, shards_of(weights, layout, rank)),
        receive,
    )
    for error in receivers:
        assert isinstance(error, RuntimeError) and "learner rank 1 sends" in str(error), error
    assert yielded == []
    # the workers left both groups: both senders fail at once (rank 0 waits for a receive never posted)
    assert all(isinstance(error, Exception) for error in senders) and time.monotonic() - start < GROUP_TIMEOUT_S / 3


def test_a_shard_of_the_wrong_shape_fails_the_sender_naming_it():
    layout, weights = sharded_weights()

    def send(group, rank):
        shards = shards_of(weights, layout, rank)
        if rank == 1:  # rank 1 holds 2 rows of `a`, not 3
            shards = ((name, torch.zeros(3, 3) if name == "a" else shard) for name, shard in shards)
        send_weights(group, layout, rank, 7, shards)

    start = time.monotonic()
    senders, receivers = run_sync(layout, send, lambda groups: list(receive_weights(groups, layout, 7)))
    assert isinstance(senders[1], RuntimeError) and "learner rank 1 got a of local shape (3, 3)" in str(senders[1])
    # rank 1 left its group: the workers fail, leave rank 0's group too, and rank 0 fails, all at once
    assert all(isinstance(error, Exception) for error in receivers + senders[:1])
    assert time.monotonic() - start < GROUP_TIMEOUT_S / 3


def test_a_worker_binds_its_gloo_device_to_its_own_address_not_the_learners(monkeypatch):
    """The learner's group served at 127.0.0.2: rank 0 binds there, the worker to its own address on the route to
    it (127.0.0.1); binding the learner's address would fail on another host."""
    create_device = dist.ProcessGroupGloo.create_device
    bound: list[str] = []

    def spy(hostname: str):
        bound.append(hostname)
        return create_device(hostname=hostname)

    monkeypatch.setattr(dist.ProcessGroupGloo, "create_device", staticmethod(spy))
    [port] = free_ports(1)

    def member(rank: int) -> list[float]:
        group = WeightGroup("127.0.0.2", port, rank, 2, "gloo", GROUP_TIMEOUT_S, "bind")
        try:
            tensor = torch.full((3,), 7.0) if rank == 0 else torch.zeros(3)
            group.broadcast(tensor)
            return tensor.tolist()
        finally:
            group.close()

    with ThreadPoolExecutor(2) as threads:
        results = list(threads.map(member, [0, 1]))
    assert results == [[7.0] * 3, [7.0] * 3]
    assert sorted(bound) == ["127.0.0.1", "127.0.0.2"]  # the worker's own address, the learner's


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
        assert len(layout.buckets) > 4 and layout.dtype == "float32" and layout.ranks == 2
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
    """The same code path as on CPU, with NCCL and CUDA tensors: one learner rank and one vLLM worker, a GPU each.
    vLLM backend: `e3_weight_groups` (ours, `actors/engines/vllm_transfer.py`) over NCCL, not vLLM's `nccl_m2n`."""
    _, model, base_model = perturbed_policy
    cfg = run_config(tmp_path, "learner.num_ranks=1", "learner.num_gpus=1", "rollout.num_gpus=1")
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


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.device_count() < 2 or importlib.util.find_spec("vllm") is None,
    reason="needs two CUDA GPUs (NCCL cannot put two ranks on one) and vLLM",
)
def test_nccl_a_receiver_lost_mid_sync_is_replaced_and_the_learner_survives_on_gpu(
    embedded_task, perturbed_policy, ray_cluster, tmp_path
):
    """NCCL with gloo's failure semantics (`NCCL_FAILURE_SEMANTICS`): a vLLM worker SIGKILLed after its engine
    took the first weight leaves the learner rank blocked in a broadcast; the group's timeout ends the wait with
    an error the rank reports (it is not torn down by NCCL's watchdog), and the pool replaces the worker and
    syncs it. One learner rank and one worker, a GPU each. vLLM backend: `e3_weight_groups` over NCCL."""
    cfg = run_config(tmp_path, "learner.num_ranks=1", "learner.num_gpus=1", "rollout.num_gpus=1")
    learner = LearnerGroup(str(perturbed_policy[0]), cfg.learner, "float32", seed=0)
    pool = None
    try:
        pool = make_pool(
            tmp_path, embedded_task.model, "vllm", {0: FakeWorkerDyingMidSync}, workers=1, num_gpus=1.0,
            gpu_memory_utilization=0.3, sync_timeout_s=60.0,
        )  # fmt: skip
        learner_pid = ray.get(learner.actors[0].__ray_call__.remote(lambda self: os.getpid()))
        pool.sync_weights(learner, version=1)
        assert pool.restarts == 1
        assert [(i["weights_version"], i["weights_intact"]) for i in pool.info()] == [(1, True)]
        assert ray.get(learner.actors[0].__ray_call__.remote(lambda self: os.getpid())) == learner_pid
        pool.sync_weights(learner, version=2)  # the learner rank's new group carries the next sync
        assert [i["weights_version"] for i in pool.info()] == [2]
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
def test_fake_worker_killed_during_a_temperature_update_is_replaced_with_the_weights(
    embedded_task, learner, perturbed_policy, tmp_path
):
    pool = make_pool(
        tmp_path, embedded_task.model, "vllm", {1: FakeWorkerDyingInSetTemperature}, sync_timeout_s=SYNC_TIMEOUT_S
    )
    try:
        pool.sync_weights(learner, version=5)
        pool.set_temperature(TemperatureUpdate(0.75, step=5))  # worker 1 takes it and dies before it answers
        assert pool.restarts == 1
        infos = pool.info()
        assert [(i["weights_version"], i["temperature"], i["temperature_step"]) for i in infos] == [(5, 0.75, 5)] * 2
        _, model, base_model = perturbed_policy
        rollouts = pool.generate(requests([8, 8], step=5))
        assert_generated_with([r for r in rollouts if r.worker == "rollout-1"], model, base_model, 0.75)
    finally:
        pool.shutdown()


@pytest.mark.slow
def test_fake_worker_killed_during_heldout_evaluation_is_replaced_and_every_prompt_answered_once(
    embedded_task, learner, tmp_path
):
    prompts = [[1, 2, 3, 4 + i] for i in range(10)]
    pool = make_pool(tmp_path, embedded_task.model, "vllm", {0: FakeWorkerDyingInGreedy}, sync_timeout_s=SYNC_TIMEOUT_S)
    try:
        pool.sync_weights(learner, version=2)
        answers = pool.generate_greedy(prompts, max_new_tokens=16)  # worker 0 dies halfway through its share
        assert pool.restarts == 1 and len(answers) == len(prompts)
        again = pool.generate_greedy(prompts, max_new_tokens=16)  # every worker real now: same weights, same answers
        assert pool.restarts == 1 and [c.token_ids for c in again] == [c.token_ids for c in answers]
    finally:
        pool.shutdown()


@pytest.mark.slow
def test_fake_hung_workers_in_a_weight_sync_and_in_generation_are_replaced_once_each(embedded_task, learner, tmp_path):
    start = time.monotonic()
    fakes = {0: FakeWorkerHungInSync, 1: FakeWorkerHungInGeneration}
    pool = make_pool(tmp_path, embedded_task.model, "hf", fakes, sync_timeout_s=8.0, timeout_s=30.0)
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


@pytest.mark.slow
@pytest.mark.parametrize("fake", [FakeWorkerDyingInJoin, FakeWorkerHungInJoin], ids=["dying", "hung"])
def test_a_worker_lost_while_the_weight_groups_form_is_replaced_not_fatal(
    fake, embedded_task, learner, perturbed_policy, tmp_path
):
    """The learner ranks waiting in their joins for the lost worker time out and report it (no learner error):
    the pool replaces the worker, builds the groups again and every worker gets the version."""
    pool = make_pool(tmp_path, embedded_task.model, "hf", {1: fake}, sync_timeout_s=8.0)
    try:
        pool.set_temperature(TemperatureUpdate(0.9, step=0))
        pool.sync_weights(learner, version=4)
        assert pool.restarts == 1
        infos = pool.info()
        assert [(i["weights_version"], i["weights_intact"], i["temperature"]) for i in infos] == [(4, True, 0.9)] * 2
        _, model, base_model = perturbed_policy
        assert_generated_with(pool.generate(requests([4, 4])), model, base_model, 0.9)
        pool.sync_weights(learner, version=5)  # the rebuilt groups carry the next sync
        assert [i["weights_version"] for i in pool.info()] == [5, 5] and pool.restarts == 1
    finally:
        pool.shutdown()


@pytest.mark.slow
def test_a_worker_lost_generating_ahead_is_replaced_with_the_learners_newest_weights_stamped_as_such(
    embedded_task, learner, perturbed_policy, tmp_path
):
    """Ahead of training the learner has moved on while the workers generate with the version before, which the
    pool did not keep (no checkpoint needed it): the replacement samples with the learner's newest weights, and
    its rollouts carry that version, not the one its batch was issued with."""
    pool = make_pool(tmp_path, embedded_task.model, "hf", {0: FakeWorkerDyingInGeneration}, sync_timeout_s=8.0)
    try:
        pool.set_temperature(TemperatureUpdate(0.9, step=0))
        pool.sync_weights(learner, version=3)
        pending = pool.submit(requests([4, 4, 4, 4], step=3))  # issued with version 3; worker 0 dies in it
        pool.track_source(learner, 4)  # the learner trained meanwhile
        rollouts = pool.collect(pending)
        assert pool.restarts == 1 and [len(r.completions) for r in rollouts] == [4] * 4
        assert {(r.worker, r.weights_version) for r in rollouts} == {("rollout-0", 4), ("rollout-1", 3)}
        _, model, base_model = perturbed_policy
        assert_generated_with(rollouts, model, base_model, 0.9)
        pool.sync_weights(learner, version=4)
        assert [i["weights_version"] for i in pool.info()] == [4, 4]
    finally:
        pool.shutdown()


@pytest.mark.slow
def test_a_stale_copy_of_the_pool_still_shuts_down_the_replacement_of_its_worker(embedded_task, tmp_path):
    """The driver's pool is a copy of the scheduler's, taken before the scheduler replaced a worker: shutting
    the copy down stops the replacement too (found by name), so that none outlives the run."""
    pool = make_pool(tmp_path, embedded_task.model, "hf", sync_timeout_s=8.0)
    driver_copy = copy.copy(pool)
    driver_copy.workers = list(pool.workers)
    try:
        kill_worker(pool, 0)
        pool.set_temperature(TemperatureUpdate(0.9, step=0))  # the scheduler's copy replaces worker 0
        assert pool.restarts == 1 and pool.workers[0] is not driver_copy.workers[0]
    finally:
        driver_copy.shutdown()
    for index in range(2):
        with pytest.raises(ValueError):
            ray.get_actor(ROLLOUT_NAME.format(index=index))
