"""How the learner's weights reach the rollout workers: two transports behind one `push`.

- `collective` (the default): every learner rank broadcasts its own FSDP2 shards of the weights, in buckets of
  `rollout.weight_bucket_mb` (over whole tensors, so a rank's part is about 1/R of that), in the publish dtype,
  over a process group of its own with every rollout worker (gloo on CPU, NCCL on GPU;
  `actors/weight_transport.py`); nothing is gathered. Each worker is a member of every rank's group, joins each
  tensor's rows as the parts arrive and streams the tensors into its engine. Nothing goes through Ray's object
  store but the bucket layout.
- `object_store`: rank 0 gathers the full state dict and puts it in Ray's object store; every worker fetches
  and deserialises its own copy (kept as the fallback, and for tests).

Bytes per sync at the paper's scale (bf16): the 1.5B policy (1.78B parameters, untied head) is 3.55 GB to each
worker, the 7B (7.62B) 15.2 GB. The object store also holds one serialised copy on rank 0's node, after a full
float32 gather on rank 0's host (7.1 GB / 30.5 GB); the collective sends from each learner rank's device 1/R of
the bytes, with at most two of its bucket parts there at a time (arithmetic in `actors/weight_transport.py`).

`push` never raises for a lost worker: it returns, per worker, the error that kept it from loading the version,
and the pool (`cluster/rollout_pool.py`) replaces the workers that are dead, hung or left broken, then pushes
again to the ones still missing the version.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Protocol

import ray
from ray.exceptions import GetTimeoutError, RayActorError

from actors.weight_transport import BucketLayout

log = logging.getLogger(__name__)

TRANSPORTS = ("collective", "object_store")


class WeightSource(Protocol):
    """What a transport needs of the learner group (`cluster/learner_group.LearnerGroup`)."""

    def state_dict_ref(self) -> ray.ObjectRef: ...
    def weight_layout(self, bucket_bytes: int) -> BucketLayout: ...
    def weight_group_addresses(self, loopback: bool) -> list[tuple[str, int]]: ...
    def node_ids(self) -> list[str]: ...
    def join_weight_group(
        self, addresses: list[tuple[str, int]], world_size: int, timeout_s: float, name: str
    ) -> list[ray.ObjectRef]: ...
    def broadcast_weights(self, layout: BucketLayout, version: int) -> list[ray.ObjectRef]: ...


def wait_all(refs: dict[Any, ray.ObjectRef], timeout_s: float) -> tuple[dict[Any, Any], dict[Any, Exception]]:
    """Wait for every ref under one deadline of `timeout_s`; returns (values, errors) by key. A ref not done by
    then has a `GetTimeoutError` as its error; a failed one its exception (a dead actor's: `RayActorError`)."""
    pending = list(refs.values())
    ready, _ = ray.wait(pending, num_returns=len(pending), timeout=timeout_s) if pending else ([], [])
    done = set(ready)
    values: dict[Any, Any] = {}
    errors: dict[Any, Exception] = {}
    for key, ref in refs.items():
        if ref not in done:
            errors[key] = GetTimeoutError(f"no answer within {timeout_s} s")
            continue
        try:
            values[key] = ray.get(ref)
        except Exception as error:  # noqa: BLE001 - the caller decides which errors are a lost worker
            errors[key] = error
    return values, errors


class ObjectStoreTransport:
    """The full state dict through Ray's object store: one `state_dict_ref()`, one `load_weights` per worker."""

    name = "object_store"

    def push(
        self, source: WeightSource, workers: dict[int, Any], version: int, timeout_s: float
    ) -> dict[int, Exception]:
        """Load `version` from `source` into `workers` (index -> actor handle) under one deadline; returns the
        error of each worker that did not load it (none: every worker did)."""
        ref = source.state_dict_ref()
        refs = {i: worker.load_weights.remote(ref, version) for i, worker in workers.items()}
        values, errors = wait_all(refs, timeout_s)
        errors.update({i: RuntimeError(f"loaded version {v}") for i, v in values.items() if v != version})
        return errors

    def close(self, workers: Sequence[Any]) -> None:
        """Nothing to release."""


class CollectiveTransport:
    """Bucketed broadcasts from every learner rank, each over a process group of its own with every worker (see
    the module docstring).

    The groups are built for the set of workers a push addresses, and rebuilt whenever that set changes (a
    worker replaced, or a push to the replacement alone) or a push failed.
    """

    name = "collective"

    def __init__(self, bucket_bytes: int, timeout_s: float) -> None:
        """Buckets of `bucket_bytes`; `timeout_s` is the deadline of a group's set-up. Each operation in the
        group times out after half of it: members waiting on a hung one then give up and report (their engines
        untouched) before the pool's deadline, at which only the hung one is still busy, and killed."""
        self.bucket_bytes = bucket_bytes
        self.timeout_s = timeout_s
        self.group_timeout_s = timeout_s / 2
        self._members: tuple | None = None  # the (index, actor id) of the current group's workers
        self._generation = 0
        self._layout: BucketLayout | None = None

    def push(
        self, source: WeightSource, workers: dict[int, Any], version: int, timeout_s: float
    ) -> dict[int, Exception]:
        """Broadcast `version` from `source` to `workers` (index -> actor handle) under one deadline of
        `timeout_s`; returns the error of each worker that did not load it. A worker that has not answered by
        the deadline is killed (so that the others stop waiting on it) and reported with a `GetTimeoutError`."""
        members = tuple((i, worker._actor_id.hex()) for i, worker in sorted(workers.items()))
        if members != self._members:
            errors = self._build(source, workers)
            if errors:
                return errors
            self._members = members
        if self._layout is None:
            self._layout = source.weight_layout(self.bucket_bytes)
        learner_refs = source.broadcast_weights(self._layout, version)
        worker_refs = {i: worker.receive_weights.remote(self._layout, version) for i, worker in workers.items()}
        values, errors, _ = self._wait(workers, worker_refs, learner_refs, timeout_s)
        errors.update({i: RuntimeError(f"loaded version {v}") for i, v in values.items() if v != version})
        if errors:
            self._members = None
        return errors

    def close(self, workers: Sequence[Any]) -> None:
        """Forget the group (its members leave it when they join the next, or die)."""
        self._members = None

    def _build(self, source: WeightSource, workers: dict[int, Any]) -> dict[int, Exception]:
        """(Re)build the groups, one per learner rank, each of that rank and `workers` (ranks 1.. in index
        order); the errors of the workers that could not join (none: the groups are up). The groups meet on
        127.0.0.1 when every learner rank and every worker sits on one node, else at each rank's node address. A
        worker that dies or hangs while the groups form is reported like one lost in a broadcast (the pool
        replaces it and builds again); the learner ranks waiting for it report their transport errors."""
        worker_nodes, errors = wait_all(
            {i: w.__ray_call__.remote(_node_id) for i, w in workers.items()}, self.timeout_s
        )
        if errors:
            return errors
        nodes = set(source.node_ids()) | set(worker_nodes.values())
        addresses = source.weight_group_addresses(loopback=len(nodes) == 1)
        self._generation += 1
        name = f"e3-weights-{self._generation}"
        world_size = 1 + len(workers)
        learner_refs = source.join_weight_group(addresses, world_size, self.group_timeout_s, name)
        worker_refs = {
            i: worker.join_weight_group.remote(addresses, rank, world_size, self.group_timeout_s, name)
            for rank, (i, worker) in enumerate(sorted(workers.items()), start=1)
        }
        log.info("weight transport: groups %s-r* of %d members each at %s", name, world_size, addresses)
        _, errors, learner_failures = self._wait(workers, worker_refs, learner_refs, self.timeout_s)
        if learner_failures and not errors:  # a learner rank could not join although every worker did
            errors = {
                i: RuntimeError(f"weight transport: learner ranks could not join: {learner_failures}") for i in workers
            }
        return errors

    def _wait(
        self,
        workers: dict[int, Any],
        worker_refs: dict[int, ray.ObjectRef],
        learner_refs: list[ray.ObjectRef],
        timeout_s: float,
    ) -> tuple[dict[int, Any], dict[int, Exception], dict[int, str]]:
        """One deadline for the workers' and the learner's refs (of a join or of a broadcast); workers still busy
        then are killed, which frees the others (their connections close), and the learner is then waited for. A
        learner rank that reports a transport error (it could not form its group, or left it: a worker died or
        hung meanwhile) is logged and the groups are rebuilt on the next push; a learner rank that raises or is
        lost is not a worker's fault: that raises, a lost one as a `RayActorError` (which the run heals from).
        Returns the workers' values and errors, and the learner ranks' transport errors, by rank."""
        keyed: dict[Any, ray.ObjectRef] = {("worker", i): ref for i, ref in worker_refs.items()}
        keyed.update({("learner", r): ref for r, ref in enumerate(learner_refs)})
        values, errors = wait_all(keyed, timeout_s)
        hung = [key[1] for key, error in errors.items() if key[0] == "worker" and isinstance(error, GetTimeoutError)]
        for i in hung:
            log.warning("weight transport: rollout worker %d did not answer within %.0f s; killing it", i, timeout_s)
            ray.kill(workers[i], no_restart=True)
        late = {key: keyed[key] for key, error in errors.items() if key[0] == "learner"}
        if late:  # a learner rank was sending to a worker just killed: it is free now
            late_values, late_errors = wait_all(late, self.timeout_s)
            values.update(late_values)
            errors = {key: error for key, error in errors.items() if key[0] == "worker"} | late_errors
        learner_errors = {key: error for key, error in errors.items() if key[0] == "learner"}
        lost = {key[1]: error for key, error in learner_errors.items() if isinstance(error, RayActorError)}
        if lost:  # as a lost actor, so that the run heals (cluster.recovery): an exception's cause is not pickled
            raise RayActorError(error_msg=f"weight transport: learner ranks {sorted(lost)} lost: {lost}")
        if learner_errors:
            raise RuntimeError(f"weight transport: the learner failed: {learner_errors}") from next(
                iter(learner_errors.values())
            )
        learner_failures = {key[1]: v for key, v in values.items() if key[0] == "learner" and v is not None}
        for rank, failure in learner_failures.items():
            log.warning("weight transport: learner rank %d failed in its group: %s", rank, failure)
            self._members = None
        worker_values = {key[1]: v for key, v in values.items() if key[0] == "worker"}
        worker_errors = {key[1]: e for key, e in errors.items() if key[0] == "worker"}
        return worker_values, worker_errors, learner_failures


def make_transport(name: str, bucket_mb: float, timeout_s: float) -> ObjectStoreTransport | CollectiveTransport:
    """The transport `rollout.weight_transport` names."""
    if name == "collective":
        return CollectiveTransport(int(bucket_mb * 2**20), timeout_s)
    if name == "object_store":
        return ObjectStoreTransport()
    raise ValueError(f"rollout.weight_transport={name!r}: expected one of {', '.join(TRANSPORTS)}")


def _node_id(actor: Any) -> str:
    """Run inside an actor (`__ray_call__`): the Ray node id it runs on."""
    return ray.get_runtime_context().get_node_id()
