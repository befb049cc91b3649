"""The collective weight transport as one of vLLM's weight-transfer engines, so that a vLLM rollout engine takes
new weights through vLLM's own calls: `init_weight_transfer_engine`, `start_weight_update`, `update_weights`,
`finish_weight_update` (with the weights version), `shutdown_weight_transfer_engine`.

Why an engine of ours: vLLM 0.32's built-in engines are CUDA-only (`nccl` and `nccl_m2n` on NCCL, `ipc` on CUDA
IPC handles), and none gives what `actors/weight_transport.py` does: one group per learner rank, each rank
sending its own shards, a header that every member confirms before any tensor moves (a dead or hung member fails
the sync before an engine is touched), and every collective under a deadline. Registered under `BACKEND` in
vLLM's `WeightTransferEngineFactory`, it runs that transport (gloo on CPU, NCCL on CUDA) inside vLLM's worker,
loading what arrives with vLLM's layerwise reload (the sequence `reload_weights` runs).

Where it runs: the engine is in-process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`, the uni-process executor), so
registering the class in the rollout actor before `LLM(...)` makes it visible to the worker, and the update's
layout travels as a Python object. A multi-process executor would need a `vllm.general_plugins` entry point and a
plain encoding of the layout.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vllm.distributed.weight_transfer.base import WeightTransferEngine, WeightTransferInitInfo, WeightTransferUpdateInfo
from vllm.distributed.weight_transfer.factory import WeightTransferEngineFactory

from actors.weight_transport import BucketLayout, SyncNotStarted, WeightGroup, receive_weights

BACKEND = "e3_weight_groups"
"""The name the transport is registered under (`weight_transfer_config={"backend": BACKEND}`)."""


@dataclass
class GroupsInitInfo(WeightTransferInitInfo):
    """Where the learner ranks serve their groups (`addresses[r]` for rank r), this worker's rank in each, the
    groups' size, their deadline and the generation `name` they are named after."""

    addresses: list[tuple[str, int]]
    rank: int
    world_size: int
    timeout_s: float
    name: str


@dataclass
class GroupsUpdateInfo(WeightTransferUpdateInfo):
    """One whole sync: the buckets the ranks send, the weights version, and whether the tied output head is to be
    loaded from the input embedding (`add_head`, see `vllm_engine.with_tied_head`)."""

    layout: BucketLayout
    version: int
    add_head: bool = False


class WeightGroupsEngine(WeightTransferEngine[GroupsInitInfo, GroupsUpdateInfo]):
    """vLLM's worker side of the collective weight transport (module docstring)."""

    init_info_cls = GroupsInitInfo
    update_info_cls = GroupsUpdateInfo

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.groups: list[WeightGroup] = []
        self.reloading = False

    def init_transfer_engine(self, init_info: GroupsInitInfo) -> None:
        """Join every learner rank's group (leaving earlier ones); raises having left them on a failure."""
        from actors.engines.base import join_weight_groups

        self.shutdown()
        info = init_info
        self.groups = join_weight_groups(info.addresses, info.rank, info.world_size, info.timeout_s, info.name)

    def start_weight_update(self) -> None:
        """Nothing yet: the layers go to vLLM's layerwise reload only once the sync's header has been confirmed
        (`receive_weights`), so that a sync that fails at its start leaves the model as it was."""
        self.reloading = False

    def receive_weights(self, update_info: GroupsUpdateInfo) -> None:
        """Check every group's header (`SyncNotStarted` on a failure: the model untouched), then stream the
        buckets into the model under vLLM's layerwise reload; a failure midway leaves it undefined."""
        from vllm.model_executor.model_loader.reload import initialize_layerwise_reload

        from actors.engines.vllm_engine import with_tied_head

        if not self.groups:
            raise SyncNotStarted("update_weights: not in a weight-transport group (init_weight_transfer_engine)")
        stream = receive_weights(self.groups, update_info.layout, update_info.version)
        initialize_layerwise_reload(self.model)
        self.reloading = True
        self.model.load_weights(with_tied_head(stream, update_info.add_head))

    def finish_weight_update(self) -> None:
        """Finish vLLM's layerwise reload (each layer's weights processed into the kernels' format)."""
        from vllm.model_executor.model_loader.reload import finalize_layerwise_reload

        if self.reloading:
            finalize_layerwise_reload(self.model, self.model_config)
        self.reloading = False

    def shutdown(self) -> None:
        """Leave every group."""
        groups, self.groups = self.groups, []
        for group in groups:
            group.close()


def register() -> None:
    """Register `WeightGroupsEngine` as `BACKEND` in vLLM's factory, once per process."""
    if BACKEND not in WeightTransferEngineFactory._registry:  # register_engine refuses a second registration
        WeightTransferEngineFactory.register_engine(BACKEND, WeightGroupsEngine)
