"""The collective weight transport, as each process sees it: a process group of its own between learner rank 0
(rank 0 here) and every rollout worker (ranks 1..N), and the bucketed broadcast of the policy's weights over it.

Why a group of its own: the learner's ranks already share torch's default group (FSDP2), and vLLM builds one for
itself inside each rollout worker; this group is a standalone `ProcessGroupGloo` (CPU) or `ProcessGroupNCCL`
(GPU) on its own `TCPStore`, registered nowhere, so neither of the others sees it. Gloo and NCCL share every line
here but the constructor and the device of the tensors.

One sync, in order:
1. rank 0 broadcasts a header `[version, buckets, elements]`, and an all-reduce confirms that every member
   holds it. A member that is dead or hung fails this step, before any worker has touched its engine;
2. rank 0 broadcasts the weights in the order of the `BucketLayout` every member was given: tensors are packed
   into flat buckets of about `bucket_bytes` in the publish dtype (one tensor larger than a bucket is sent by
   itself, without a copy). Rank 0 keeps at most one bucket in flight while it fills the next; each worker
   posts the receive of the next bucket while its engine consumes the current one;
3. on any error a member drops the group, which closes its connections, so the other members fail at once
   instead of waiting for the timeout; the group is then rebuilt (`cluster/weight_sync.py`).

Sizes at the paper's scale (bf16 publish dtype, `rollout.weight_bucket_mb=512`): DeepSeek-R1-Distill-Qwen-1.5B
(1.78B parameters, untied head) is 3.55 GB per worker per sync, about 7 buckets; the 7B (7.62B) is 15.2 GB, about
29 buckets. Rank 0 holds two buckets (1.07 GB) and the module being gathered: the largest is the root, embedding
plus output head (0.93 GB at 1.5B, 2.18 GB at 7B; a decoder layer is 0.47 GB at 7B). With NCCL all of it is
device memory; on CPU (gloo) it is host memory. The object store instead puts the whole gathered float32 model
(7.1 GB / 30.5 GB) and its bf16 copy on rank 0's host.
"""

from __future__ import annotations

import datetime
import math
import socket
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist

BACKENDS = ("gloo", "nccl")


@dataclass(frozen=True)
class TensorSpec:
    """One weight: its Hugging Face name and shape (its dtype is the layout's)."""

    name: str
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        """Number of elements."""
        return math.prod(self.shape)


@dataclass(frozen=True)
class BucketLayout:
    """How one sync's weights are cut into buckets: `buckets[k]` lists the tensors of bucket k, in order.

    Every member of the group holds the same layout (rank 0 builds it, the pool hands it to the workers), so a
    bucket's bytes need no names on the wire.
    """

    dtype: str
    buckets: tuple[tuple[TensorSpec, ...], ...]

    @property
    def torch_dtype(self) -> torch.dtype:
        """The publish dtype as a torch dtype."""
        return getattr(torch, self.dtype)

    @property
    def names(self) -> list[str]:
        """Every tensor's name, in sending order."""
        return [spec.name for bucket in self.buckets for spec in bucket]

    @property
    def numel(self) -> int:
        """Elements sent per sync."""
        return sum(spec.numel for bucket in self.buckets for spec in bucket)

    @property
    def nbytes(self) -> int:
        """Bytes sent per sync (to each worker)."""
        return self.numel * self.torch_dtype.itemsize


def plan_buckets(specs: Iterable[TensorSpec], dtype: torch.dtype, bucket_bytes: int) -> BucketLayout:
    """Pack `specs`, in order, into buckets of at most `bucket_bytes`; a tensor larger than that gets a bucket of
    its own. The order is kept, so that tensors arrive in the order the sender produces them."""
    if bucket_bytes < 1:
        raise ValueError(f"plan_buckets: bucket_bytes={bucket_bytes} < 1")
    capacity = max(1, bucket_bytes // dtype.itemsize)
    buckets: list[list[TensorSpec]] = []
    filled = capacity  # forces a new bucket for the first tensor
    for spec in specs:
        if spec.numel >= capacity or filled + spec.numel > capacity:
            buckets.append([])
            filled = 0
        buckets[-1].append(spec)
        filled += spec.numel
    return BucketLayout(dtype=str(dtype).removeprefix("torch."), buckets=tuple(tuple(b) for b in buckets))


class WeightGroup:
    """This process's membership of one weight-transport group (rank 0: learner rank 0, sender)."""

    def __init__(
        self, address: str, port: int, rank: int, world_size: int, backend: str, timeout_s: float, name: str
    ) -> None:
        """Join the group `name` served at `address:port` (rank 0 opens the store there, on that address only);
        returns once every member has joined, or raises after `timeout_s`. Operations time out after `timeout_s`.
        """
        if backend not in BACKENDS:
            raise ValueError(f"WeightGroup: backend={backend!r}, expected one of {BACKENDS}")
        if not 0 <= rank < world_size:
            raise ValueError(f"WeightGroup: rank={rank} not in [0, world_size={world_size})")
        timeout = datetime.timedelta(seconds=timeout_s)
        self.rank, self.world_size, self.backend = rank, world_size, backend
        self.device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
        listen_fd = None
        if rank == 0:  # listen on `address` only: left to itself, TCPStore listens on every interface
            family = socket.AF_INET6 if ":" in address else socket.AF_INET
            listen_fd = socket.create_server((address, port), family=family).detach()
        store = dist.TCPStore(
            address, port, world_size, is_master=rank == 0, timeout=timeout, master_listen_fd=listen_fd
        )
        self._store = dist.PrefixStore(name, store)
        if backend == "gloo":
            options = dist.ProcessGroupGloo._Options()
            options._devices = [dist.ProcessGroupGloo.create_device(hostname=address)]
            options._timeout = timeout
            self._group = dist.ProcessGroupGloo(self._store, rank, world_size, options)
        else:
            self._group = dist.ProcessGroupNCCL(self._store, rank, world_size, timeout)
        self._keep_store = store  # rank 0 serves the store for as long as the group lives

    def broadcast(self, tensor: torch.Tensor, wait: bool = True) -> dist.Work | None:
        """Broadcast `tensor` from rank 0 in place (on every rank); with `wait=False`, return the work handle."""
        work = self._group.broadcast([tensor], dist.BroadcastOptions())
        if wait:
            work.wait()
            return None
        return work

    def confirm(self) -> None:
        """All-reduce a one: returns only when every member reached this point (raises otherwise)."""
        ones = torch.ones(1, dtype=torch.int64, device=self.device)
        self._group.allreduce([ones]).wait()
        if int(ones.item()) != self.world_size:
            raise RuntimeError(f"WeightGroup: {int(ones.item())} of {self.world_size} members confirmed")

    def close(self) -> None:
        """Leave the group: drop its connections (members still waiting on this one fail at once)."""
        group = self.__dict__.pop("_group", None)
        if group is not None and self.backend == "nccl":
            group.abort()
        del group
        self.__dict__.pop("_store", None)
        self.__dict__.pop("_keep_store", None)


def send_weights(
    group: WeightGroup, layout: BucketLayout, version: int, weights: Iterator[tuple[str, torch.Tensor]]
) -> None:
    """Rank 0: broadcast `weights` (name, tensor), which must come in the layout's order, bucket by bucket.

    Each tensor is cast to the publish dtype while packed. Holds at most two buckets at once (one in flight,
    one filling) besides what `weights` holds. Each tensor is used before `weights` is advanced (copied into
    its bucket, or, alone in a bucket, sent as it is: no copy when it is in the publish dtype already), so the
    producer may free it as soon as the next one is asked for.
    """
    dtype = layout.torch_dtype
    _header(group, layout, version)
    in_flight: tuple[dist.Work, torch.Tensor] | None = None  # (the broadcast, the bucket it sends)
    for bucket in layout.buckets:
        if len(bucket) == 1:  # sent as it is, before the producer may free it
            tensor = _checked(next(weights), bucket[0])
            if in_flight is not None:
                in_flight[0].wait()
                in_flight = None
            group.broadcast(tensor.to(device=group.device, dtype=dtype).contiguous())
            del tensor
            continue
        flat = torch.empty(sum(spec.numel for spec in bucket), dtype=dtype, device=group.device)
        offset = 0
        for spec in bucket:  # copied (and cast) as it comes: the producer frees a module when it moves on
            flat[offset : offset + spec.numel].copy_(_checked(next(weights), spec).reshape(-1))
            offset += spec.numel
        if in_flight is not None:
            in_flight[0].wait()
        in_flight = (group.broadcast(flat, wait=False), flat)  # the previous bucket is freed here
        del flat
    if in_flight is not None:
        in_flight[0].wait()


def _checked(item: tuple[str, torch.Tensor], spec: TensorSpec) -> torch.Tensor:
    """The tensor of `item`, after checking that it is the one the layout expects next."""
    name, tensor = item
    if name != spec.name or tuple(tensor.shape) != spec.shape:
        raise RuntimeError(f"send_weights: got {name} {tuple(tensor.shape)}, the layout expects {spec}")
    return tensor


def receive_weights(group: WeightGroup, layout: BucketLayout, version: int) -> Iterator[tuple[str, torch.Tensor]]:
    """Ranks 1..N: the weights rank 0 sends with `send_weights`, as (name, tensor) in the layout's order.

    The header is checked when this is called (before anything is yielded, so a failed start leaves the
    caller's engine untouched); the receive of bucket k+1 is posted before bucket k's tensors are yielded.
    Each bucket is a fresh tensor, so the consumer may keep references to what it was given.
    """
    _header(group, layout, version)
    return _bucket_stream(group, layout)


def _bucket_stream(group: WeightGroup, layout: BucketLayout) -> Iterator[tuple[str, torch.Tensor]]:
    dtype = layout.torch_dtype

    def post(k: int) -> tuple[dist.Work, torch.Tensor]:
        flat = torch.empty(sum(s.numel for s in layout.buckets[k]), dtype=dtype, device=group.device)
        return group.broadcast(flat, wait=False), flat

    pending = post(0) if layout.buckets else None
    for k, bucket in enumerate(layout.buckets):
        work, flat = pending
        work.wait()
        pending = post(k + 1) if k + 1 < len(layout.buckets) else None
        offset = 0
        for spec in bucket:
            yield spec.name, flat[offset : offset + spec.numel].view(spec.shape)
            offset += spec.numel


def _header(group: WeightGroup, layout: BucketLayout, version: int) -> None:
    """Rank 0 sends `[version, buckets, elements]`; every rank checks it against its own, then all confirm."""
    mine = [version, len(layout.buckets), layout.numel]
    header = torch.tensor(mine if group.rank == 0 else [0, 0, 0], dtype=torch.int64, device=group.device)
    group.broadcast(header)
    if header.tolist() != mine:
        raise RuntimeError(
            f"weight transport: rank 0 sends [version, buckets, elements] {header.tolist()}, this rank expects {mine}"
        )
    group.confirm()
