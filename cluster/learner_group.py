"""The policy learner as one object: `num_ranks` FSDP2 `Learner` actors in a placement group, driven together.

Every call fans out to all ranks at once (each learner method is a collective) and waits for all of them; the
first rank to fail raises at once instead of leaving the others blocked in a collective unnoticed.

Rendezvous: rank 0's node picks a free port. When every rank sits on one node (always on a single machine,
and the PACK strategy prefers it elsewhere) the ranks meet on 127.0.0.1, so the process group never leaves the
loopback interface; only when Ray had to spread the ranks over nodes do they meet at rank 0's node address.
(Another process could take the port between the probe and rank 0's bind; set-up then fails, naming it.)
"""

from __future__ import annotations

import contextlib
import math
import socket
from typing import Any

import ray
from ray.util.placement_group import placement_group, placement_group_table, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from actors.learner import Learner
from actors.weight_transport import BucketLayout
from core.config import LearnerConfig
from core.messages import LearnerResult, TrainBatch

ACTOR_NAME = "e3/learner-{rank}"


@ray.remote(num_cpus=0)
def _rendezvous_addresses(loopback: bool, count: int = 1) -> list[tuple[str, int]]:
    """A host address of this node (127.0.0.1 when `loopback`) with each of `count` distinct TCP ports that are
    free on it right now (held open together while probed, so that no two are the same)."""
    host = "127.0.0.1" if loopback else ray.util.get_node_ip_address()
    with contextlib.ExitStack() as stack:
        probes = [stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) for _ in range(count)]
        for probe in probes:
            probe.bind((host, 0))
        return [(host, int(probe.getsockname()[1])) for probe in probes]


def _wait_all(refs: list[ray.ObjectRef], fetch: bool = True) -> list[Any]:
    """Wait for every ref and return their values (if `fetch`); raise the first failure as it lands."""
    pending = list(refs)
    while pending:
        done, pending = ray.wait(pending, num_returns=1, fetch_local=fetch)
        if fetch:
            ray.get(done)
    return ray.get(refs) if fetch else []


class LearnerGroup:
    """`config.num_ranks` Learner actors (named `e3/learner-<rank>`) that train one policy with FSDP2.

    Construction reserves one placement-group bundle per rank (`config.num_cpus` CPUs, `config.num_gpus`
    GPUs, and `node_resource_share` of the custom node resource `node_resource` when one is named, which keeps
    the ranks on nodes that have it; PACK strategy), starts the actors and sets them up; it raises if the cluster
    cannot hold the bundles within `ready_timeout_s` seconds. Each rank is a `rank_class` (a `Learner`, or a
    `ColocatedRank` that also holds a rollout engine), given `rank_options` as keyword arguments beside the
    learner's own.
    """

    def __init__(
        self,
        model_path: str,
        config: LearnerConfig,
        dtype: str,
        seed: int,
        ready_timeout_s: float = 120.0,
        node_resource: str = "",
        node_resource_share: float = 0.01,
        rank_class: type[Learner] = Learner,
        rank_options: dict[str, Any] | None = None,
    ) -> None:
        bundle = {name: amount for name, amount in (("CPU", config.num_cpus), ("GPU", config.num_gpus)) if amount}
        if not bundle:
            raise ValueError("LearnerGroup: learner.num_cpus and learner.num_gpus are both 0; a rank needs resources")
        if node_resource:
            bundle[node_resource] = node_resource_share
        self.num_ranks = config.num_ranks
        self.actors: list[Any] = []
        self._rank_class, self._rank_options = rank_class, dict(rank_options or {})
        self._placement = placement_group([dict(bundle) for _ in range(self.num_ranks)], strategy="PACK")
        try:
            self._start(model_path, config, dtype, seed, ready_timeout_s)
        except BaseException:
            self.shutdown()
            raise

    def _start(self, model_path: str, config: LearnerConfig, dtype: str, seed: int, ready_timeout_s: float) -> None:
        """Wait for the placement group, start one named actor per bundle and set them all up."""
        try:
            ray.get(self._placement.ready(), timeout=ready_timeout_s)
        except ray.exceptions.GetTimeoutError as error:
            raise RuntimeError(
                f"LearnerGroup: the cluster cannot place {self.num_ranks} learner ranks of "
                f"{self._placement.bundle_specs[0]} each within {ready_timeout_s} s "
                f"(cluster resources: {ray.cluster_resources()})"
            ) from error
        [(master_addr, master_port)] = ray.get(
            _rendezvous_addresses.options(scheduling_strategy=self._in_bundle(0)).remote(self._on_one_node())
        )
        actor_class = ray.remote(num_cpus=config.num_cpus, num_gpus=config.num_gpus)(self._rank_class)
        self.actors = [
            actor_class.options(name=ACTOR_NAME.format(rank=rank), scheduling_strategy=self._in_bundle(rank)).remote(
                model_path, config, dtype, seed, rank, self.num_ranks, master_addr, master_port, **self._rank_options
            )
            for rank in range(self.num_ranks)
        ]
        _wait_all([actor.setup.remote() for actor in self.actors])

    def train(self, batch: TrainBatch, weights_version: int) -> LearnerResult:
        """One optimizer step on `batch`, split over the ranks by response tokens; the policy that was
        `weights_version` becomes `weights_version + 1`.

        The result's entropy and metrics are global (see `Learner.train_step`); the ranks compute them with an
        all-reduce, and this checks that they agree.
        """
        shards = batch.shard(self.num_ranks)
        global_tokens = batch.num_response_tokens
        per_rank = _wait_all(
            [actor.train_step.remote(s, global_tokens) for actor, s in zip(self.actors, shards, strict=True)]
        )
        metrics = per_rank[0]
        disagreeing = [rank for rank, m in enumerate(per_rank) if not math.isclose(m["entropy"], metrics["entropy"])]
        if disagreeing:
            entropies = [m["entropy"] for m in per_rank]
            raise RuntimeError(f"LearnerGroup.train: ranks {disagreeing} report other entropies: {entropies}")
        return LearnerResult(weights_version=weights_version + 1, entropy=metrics["entropy"], metrics=dict(metrics))

    def state_dict_ref(self) -> ray.ObjectRef:
        """An object reference to the policy's full state dict (Hugging Face names, model dtype, CPU tensors).

        Every rank takes part in gathering it; the dict itself stays in the object store (it is not fetched
        here), so rollout workers can pull it directly.
        """
        refs = [actor.full_state_dict.remote() for actor in self.actors]
        _wait_all(refs, fetch=False)
        _wait_all(refs[1:])  # the other ranks return {}: fetching them surfaces their errors cheaply
        return refs[0]

    # ------------------------------------------------ the collective weight transport (cluster/weight_sync.py)

    def weight_layout(self, bucket_bytes: int) -> BucketLayout:
        """The buckets a collective weight sync sends (`Learner.weight_layout`, asked of rank 0: every rank's
        answer is the same)."""
        return ray.get(self.actors[0].weight_layout.remote(bucket_bytes))

    def weight_group_addresses(self, loopback: bool) -> list[tuple[str, int]]:
        """Where each rank can serve its weight-transport group, by rank: 127.0.0.1 when `loopback` (every member
        of every group on one node), else the rank's node address; and a port free there now, distinct from the
        other ranks' on the same node."""
        ranks_on: dict[str, list[int]] = {}
        for rank, node in enumerate(self.node_ids()):
            ranks_on.setdefault(node, []).append(rank)
        probes = {
            node: _rendezvous_addresses.options(scheduling_strategy=self._in_bundle(ranks[0])).remote(
                loopback, len(ranks)
            )
            for node, ranks in ranks_on.items()
        }
        addresses: dict[int, tuple[str, int]] = {}
        for node, ranks in ranks_on.items():
            addresses.update(zip(ranks, ray.get(probes[node]), strict=True))
        return [addresses[rank] for rank in range(self.num_ranks)]

    def join_weight_group(
        self, addresses: list[tuple[str, int]], world_size: int, timeout_s: float, name: str
    ) -> list[ray.ObjectRef]:
        """Start every rank joining its own weight-transport group of the generation `name`, served at its
        entry of `addresses` (`Learner.join_weight_group`); the refs to wait on, together with the workers'
        joins."""
        return [
            actor.join_weight_group.remote(address, port, world_size, timeout_s, name)
            for actor, (address, port) in zip(self.actors, addresses, strict=True)
        ]

    def broadcast_weights(self, layout: BucketLayout, version: int) -> list[ray.ObjectRef]:
        """Start a collective weight sync of `version` on every rank (`Learner.broadcast_weights`: each sends its
        own shards); the refs to wait on, together with the workers' receives. Each holds None or that rank's
        transport error."""
        return [actor.broadcast_weights.remote(layout, version) for actor in self.actors]

    def save(self, path: str) -> None:
        """Write the policy and optimizer state to the folder `path` (on rank 0's node)."""
        _wait_all([actor.save.remote(path) for actor in self.actors])

    def load(self, path: str) -> None:
        """Restore the policy and optimizer state that `save` wrote to `path` (any number of ranks)."""
        _wait_all([actor.load.remote(path) for actor in self.actors])

    def shutdown(self, timeout_s: float = 30.0) -> None:
        """Leave the process group on every rank (waiting at most `timeout_s`), kill the actors and release
        the placement group. Safe to call twice and after a rank has died."""
        actors, self.actors = self.actors, []
        if actors:
            refs = [actor.shutdown.remote() for actor in actors]
            ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
        for actor in actors:
            ray.kill(actor, no_restart=True)
        if self._placement is not None:
            remove_placement_group(self._placement)
            self._placement = None

    def node_ids(self) -> list[str]:
        """The id of the Ray node that holds each rank's bundle, by rank."""
        nodes = placement_group_table(self._placement)["bundles_to_node_id"]
        return [nodes[rank] for rank in range(self.num_ranks)]

    def _in_bundle(self, rank: int) -> PlacementGroupSchedulingStrategy:
        return PlacementGroupSchedulingStrategy(placement_group=self._placement, placement_group_bundle_index=rank)

    def _on_one_node(self) -> bool:
        """Whether Ray placed every bundle on the same node."""
        return len(set(self.node_ids())) == 1
