"""The collective weight transport, as each process sees it: one process group per learner rank, between that
rank (rank 0 of its group, the sender) and every rollout worker (ranks 1..W), and the bucketed broadcast of that
rank's shards of the policy's weights over it.

Why groups of their own: the learner's ranks already share torch's default group (FSDP2), and vLLM builds one
for itself inside each rollout worker; each weight group is a standalone `ProcessGroupGloo` (CPU) or
`ProcessGroupNCCL` (GPU) on its own `TCPStore`, registered nowhere, so neither of the others sees it. Gloo and
NCCL share every line here but the constructor and the device of the tensors. Why one group per learner rank:
nothing is gathered. FSDP2 splits every parameter along dim 0 over the R learner ranks (`chunk_rows`); each rank
broadcasts its own rows to the workers, and a worker joins the R parts of each tensor. In one group holding every
learner rank a broadcast would also send each rank's shards to the other learner ranks.

One sync, in each of the R groups at once: a header every member checks and confirms (`_header`), then the
buckets of a `BucketLayout` (`plan_buckets`; large tensors travel alone, `DIRECT_BYTES`), sent by `send_weights`
and received by `receive_weights`. On any error a member drops its groups (`WeightGroup.close`), so the others
fail at once, and `cluster/weight_sync.py` rebuilds them. Sizes at the paper's scale: `BucketLayout`; the whole
design: docs/weights.md.
"""

from __future__ import annotations

import contextlib
import datetime
import itertools
import math
import os
import socket
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist

BACKENDS = ("gloo", "nccl")
DIRECT_BYTES = 1 << 20
"""Tensors of at least this many bytes (in the publish dtype) travel in broadcasts of their own, straight into
the workers' full tensors; smaller ones are packed by bucket.

A large tensor travels in broadcasts of its own, one per learner rank, each received straight into that rank's
rows of the worker's full tensor: the sender sends its shard as it is (when already in the publish dtype, else
its cast), the worker joins nothing. The smaller tensors of a bucket travel packed together, one broadcast per
rank, cast on the way, and a worker joins their rows.

Why large tensors travel alone: joining a tensor's R row ranges is one more copy of every byte on every worker,
into fresh memory, and packing them one more on every sender. On two CPU cores that join was 30% of a worker's
time in a sync (py-spy, 157.6M parameters, two workers: `bench/results/weight_sync.md`). Straight into the full
tensor, the bytes are written once, by the receive. The price is one broadcast per large tensor and rank instead
of one per bucket and rank (at 7B, 28 layers x 7 matrices + embedding and head: about 200 per rank and sync;
NCCL launches one in tens of microseconds); tensors under `direct_bytes` (norms, biases) stay packed, where a
broadcast of their own would cost more than the copy."""


def chunk_rows(length: int, ranks: int) -> tuple[int, ...]:
    """How FSDP2's `Shard(0)` splits `length` rows over `ranks` ranks (`torch.chunk`'s rule): chunks of
    ceil(length / ranks) rows, the last ones shorter or empty."""
    if ranks < 1:
        raise ValueError(f"chunk_rows: ranks={ranks} < 1")
    size = -(-length // ranks)
    return tuple(max(0, min(size, length - rank * size)) for rank in range(ranks))


NCCL_FAILURE_SEMANTICS = {"TORCH_NCCL_BLOCKING_WAIT": "1", "TORCH_NCCL_ASYNC_ERROR_HANDLING": "2"}
"""How an NCCL weight group fails: as a gloo one. By default NCCL's `wait()` neither blocks the host nor raises,
and its watchdog tears the whole process down when an operation outlives the group's timeout, so a receiver
SIGKILLed mid-broadcast would take a learner rank with it (and the run would restart from a checkpoint). With a
blocking wait, `wait()` blocks the host and raises once the group's timeout passes, and error handling mode 2
(CleanUpOnly) aborts the group's communicator without killing the process: the sender reports the transport
error and the pool replaces the lost worker, as on gloo. Both are read when a `ProcessGroupNCCL` is built, so
they are set for the weight groups alone; the learner's FSDP2 group keeps torch's defaults."""


def group_name(name: str, rank: int) -> str:
    """The name of learner rank `rank`'s weight group in the generation of groups called `name`."""
    return f"{name}-r{rank}"


@dataclass(frozen=True)
class TensorSpec:
    """One weight: its Hugging Face name, its full shape and how its dim 0 is split over the learner ranks
    (`rows[r]` rows on rank r, in rank order; they sum to `shape[0]`). Its dtype is the layout's."""

    name: str
    shape: tuple[int, ...]
    rows: tuple[int, ...]

    def __post_init__(self) -> None:
        if not self.shape or not self.rows or sum(self.rows) != self.shape[0] or min(self.rows) < 0:
            raise ValueError(f"TensorSpec {self.name}: rows={self.rows} do not split dim 0 of shape {self.shape}")

    @property
    def numel(self) -> int:
        """Number of elements."""
        return math.prod(self.shape)

    def part_shape(self, rank: int) -> tuple[int, ...]:
        """The shape of learner rank `rank`'s rows."""
        return (self.rows[rank], *self.shape[1:])

    def part_numel(self, rank: int) -> int:
        """Number of elements on learner rank `rank`."""
        return math.prod(self.part_shape(rank))


@dataclass(frozen=True)
class BucketLayout:
    """How one sync's weights are cut into buckets: `buckets[k]` lists the tensors of bucket k, in order.

    Every member of every group holds the same layout (the learner builds it, the pool hands it to the workers),
    so no bytes on the wire need names. Every tensor is split over the same number of learner ranks.

    Sizes at the paper's scale (bf16 publish dtype, `rollout.weight_bucket_mb=512`): DeepSeek-R1-Distill-Qwen-1.5B
    (1.78B parameters, untied head) is 3.55 GB per worker per sync, about 7 buckets; the 7B (7.62B) is 15.2 GB,
    about 29 buckets. Each learner rank sends 1/R of that (3.55 GB / R and 15.2 GB / R), and holds at most two of
    its bucket parts beside its shards, nothing gathered: 2 x 537 MB / R = 1.07 GB / R at 1.5B (its embedding and
    head, 0.47 GB each, fit in a bucket). At 7B the embedding and the head (1.09 GB each) are larger than a
    bucket, so each is a bucket of its own: the head's part and the next bucket's make 1.63 GB / R at most. With
    NCCL all of it is device memory; on CPU (gloo) it is host memory. The object store instead puts the whole
    gathered float32 model (7.1 GB / 30.5 GB) and its bf16 copy on rank 0's host.
    """

    dtype: str
    buckets: tuple[tuple[TensorSpec, ...], ...]
    direct_bytes: int = DIRECT_BYTES
    """A tensor of at least this many bytes travels alone (`direct`); smaller ones packed with their bucket's."""

    def __post_init__(self) -> None:
        counts = {len(spec.rows) for bucket in self.buckets for spec in bucket}
        if len(counts) > 1:
            raise ValueError(f"BucketLayout: tensors split over different numbers of ranks {sorted(counts)}")

    @property
    def torch_dtype(self) -> torch.dtype:
        """The publish dtype as a torch dtype."""
        return getattr(torch, self.dtype)

    @property
    def ranks(self) -> int:
        """The number of learner ranks the tensors are split over (1 for an empty layout)."""
        return next((len(spec.rows) for bucket in self.buckets for spec in bucket), 1)

    @property
    def names(self) -> list[str]:
        """Every tensor's name, in sending order."""
        return [spec.name for bucket in self.buckets for spec in bucket]

    @property
    def numel(self) -> int:
        """Elements sent per sync (to each worker, by all learner ranks together)."""
        return sum(spec.numel for bucket in self.buckets for spec in bucket)

    @property
    def nbytes(self) -> int:
        """Bytes sent per sync (to each worker, by all learner ranks together)."""
        return self.numel * self.torch_dtype.itemsize

    def direct(self, spec: TensorSpec) -> bool:
        """Whether `spec` travels in broadcasts of its own (one per learner rank holding rows of it), not packed."""
        return spec.numel * self.torch_dtype.itemsize >= self.direct_bytes

    def packed_numel(self, bucket: int, rank: int) -> int:
        """Elements of learner rank `rank`'s packed part of bucket `bucket` (its rows of the tensors not `direct`)."""
        return sum(spec.part_numel(rank) for spec in self.buckets[bucket] if not self.direct(spec))

    def part_numel(self, bucket: int, rank: int) -> int:
        """Elements of learner rank `rank`'s part of bucket `bucket`."""
        return sum(spec.part_numel(rank) for spec in self.buckets[bucket])

    def rank_numel(self, rank: int) -> int:
        """Elements learner rank `rank` sends per sync (to each worker)."""
        return sum(self.part_numel(k, rank) for k in range(len(self.buckets)))


def plan_buckets(
    specs: Iterable[TensorSpec], dtype: torch.dtype, bucket_bytes: int, direct_bytes: int = DIRECT_BYTES
) -> BucketLayout:
    """Pack `specs`, in order, into buckets of at most `bucket_bytes` (in the publish dtype `dtype`) of whole
    tensors (so each learner rank's part of a bucket, its rows of those tensors, is about `bucket_bytes / R`); a
    tensor larger than that gets a bucket of its own. The order is kept, so that tensors arrive in the order the
    senders produce them. Tensors of at least `direct_bytes` travel alone within their bucket (`DIRECT_BYTES`)."""
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
    return BucketLayout(
        dtype=str(dtype).removeprefix("torch."), buckets=tuple(tuple(b) for b in buckets), direct_bytes=direct_bytes
    )


class WeightGroup:
    """This process's membership of one weight-transport group (rank 0: the learner rank whose group it is, the
    sender; ranks 1..W: the rollout workers)."""

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
            options._devices = [dist.ProcessGroupGloo.create_device(hostname=gloo_bind_address(address, rank))]
            options._timeout = timeout
            self._group = dist.ProcessGroupGloo(self._store, rank, world_size, options)
        else:
            with _environment(NCCL_FAILURE_SEMANTICS):  # read by the constructor, for this group alone
                self._group = dist.ProcessGroupNCCL(self._store, rank, world_size, timeout)
        self._keep_store = store  # rank 0 serves the store for as long as the group lives
        # Posted operations by ticket: the group holds their only handles, so that `close` can drop them even
        # while an exception's traceback keeps a caller's frames alive (a handle keeps the connections open).
        self._posted: dict[int, dist.Work] = {}
        self._tickets = itertools.count()

    def broadcast(self, tensor: torch.Tensor) -> None:
        """Broadcast `tensor` from rank 0 in place (on every rank); returns when it is done."""
        self.wait(self.post(tensor))

    def post(self, tensor: torch.Tensor) -> int:
        """Start broadcasting `tensor` from rank 0 in place; returns the ticket to `wait` on."""
        ticket = next(self._tickets)
        self._posted[ticket] = self._group.broadcast([tensor], dist.BroadcastOptions())
        return ticket

    def wait(self, ticket: int) -> None:
        """Wait for the broadcast `post` started as `ticket` (raises if it failed)."""
        try:
            self._posted[ticket].wait()
        finally:
            self._posted.pop(ticket, None)

    def confirm(self) -> None:
        """All-reduce a one: returns only when every member reached this point (raises otherwise)."""
        ones = torch.ones(1, dtype=torch.int64, device=self.device)
        self._group.allreduce([ones]).wait()
        if int(ones.item()) != self.world_size:
            raise RuntimeError(f"WeightGroup: {int(ones.item())} of {self.world_size} members confirmed")

    def close(self) -> None:
        """Leave the group: drop its connections and the operations still posted on it (members still waiting
        on this one fail at once instead of waiting for the timeout).

        A member does this with every one of its groups on any error of a sync; the groups are then rebuilt
        (`cluster/weight_sync.py`).
        """
        group = self.__dict__.pop("_group", None)
        if group is not None and self.backend == "nccl":
            group.abort()
        del group
        self._posted.clear()
        self.__dict__.pop("_store", None)
        self.__dict__.pop("_keep_store", None)


def gloo_bind_address(store_address: str, rank: int) -> str:
    """The address a member of a gloo group served at `store_address` binds its device to: the store's own for
    rank 0 (its host serves it), else this host's address on the route to it (127.0.0.1 towards a loopback
    store). A worker on another host cannot bind the learner's address. Found by connecting a UDP socket, which
    sends nothing."""
    if rank == 0:
        return store_address
    family = socket.AF_INET6 if ":" in store_address else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        probe.connect((store_address, 9))  # any port: a UDP connect only picks the route
        return str(probe.getsockname()[0])


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """Set the environment variables `values` for the duration of the block, then restore what was there."""
    before = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def send_weights(
    group: WeightGroup, layout: BucketLayout, rank: int, version: int, shards: Iterator[tuple[str, torch.Tensor]]
) -> None:
    """Learner rank `rank`, rank 0 of its own `group`: broadcast its rows of every weight, bucket by bucket.

    `shards` yields (name, this rank's rows of the tensor) in the layout's order; a shard whose name or shape
    is not what the layout expects raises, naming it. Per bucket, the rows of the tensors too small to travel
    alone are packed flat and cast to the publish dtype; each `direct` tensor's rows are sent as they are (cast
    when not in the publish dtype); nothing empty is sent. Holds at most two buckets' messages at once (one in
    flight while it fills the next) besides what `shards` holds. Returns once every worker has received every
    part.
    """
    _header(group, layout, rank, version)
    in_flight: list[tuple[int, torch.Tensor]] = []  # the previous bucket's (broadcast's ticket, tensor it sends)
    for k in range(len(layout.buckets)):
        messages = _outgoing(layout, k, rank, shards, group.device)
        for ticket, _ in in_flight:
            group.wait(ticket)
        in_flight = [(group.post(message), message) for message in messages]  # the previous bucket is freed here
        del messages
    for ticket, _ in in_flight:
        group.wait(ticket)


def _outgoing(
    layout: BucketLayout, k: int, rank: int, shards: Iterator[tuple[str, torch.Tensor]], device: torch.device
) -> list[torch.Tensor]:
    """Learner rank `rank`'s messages for bucket `k`, in the order the workers post their receives: its packed
    part (if not empty), then its rows of each `direct` tensor (those not empty), from the next shards."""
    dtype = layout.torch_dtype
    packed = torch.empty(layout.packed_numel(k, rank), dtype=dtype, device=device)
    direct, offset = [], 0
    for spec in layout.buckets[k]:
        shard = _checked(next(shards), spec, rank)
        if layout.direct(spec):
            if spec.part_numel(rank):  # no copy when the shard is already contiguous in `dtype` on `device`
                direct.append(shard.to(device=device, dtype=dtype).contiguous())
            continue
        numel = spec.part_numel(rank)
        packed[offset : offset + numel].copy_(shard.reshape(-1))
        offset += numel
    return [packed, *direct] if packed.numel() else direct


def _checked(item: tuple[str, torch.Tensor], spec: TensorSpec, rank: int) -> torch.Tensor:
    """The shard of `item`, after checking that it is learner rank `rank`'s rows of the tensor the layout
    expects next."""
    name, shard = item
    if name != spec.name or tuple(shard.shape) != spec.part_shape(rank):
        raise RuntimeError(
            f"send_weights: learner rank {rank} got {name} of local shape {tuple(shard.shape)}, the layout expects "
            f"{spec.name} {spec.shape} with rows {spec.rows}: local shape {spec.part_shape(rank)}"
        )
    return shard


class SyncNotStarted(RuntimeError):
    """A sync that failed at its header (a member dead, hung or out of step): no tensor was received, so the
    receiving engine is as it was."""


def receive_weights(
    groups: Sequence[WeightGroup], layout: BucketLayout, version: int
) -> Iterator[tuple[str, torch.Tensor]]:
    """A worker (ranks 1..W of every group; `groups[r]` is learner rank r's): the weights the learner ranks send
    with `send_weights`, as (name, full tensor) in the layout's order.

    The header of every group is checked when this is called (before anything is yielded, so a failed start,
    `SyncNotStarted`, leaves the caller's engine untouched). The receives of bucket k+1 are posted before bucket
    k's tensors are yielded, so they arrive while the engine consumes bucket k. Every tensor is fresh memory, so
    the consumer may keep what it was given: a `direct` tensor received in place, a packed one joined from its R
    row ranges (a view of its packed part when one rank holds it all).
    """
    if len(groups) != layout.ranks:
        raise ValueError(f"receive_weights: {len(groups)} groups, the layout splits tensors over {layout.ranks} ranks")
    try:
        for rank, group in enumerate(groups):
            _header(group, layout, rank, version)
    except Exception as err:
        raise SyncNotStarted(f"the sync of weights version {version} did not start: {err}") from err
    return _bucket_stream(groups, layout)


def _bucket_stream(groups: Sequence[WeightGroup], layout: BucketLayout) -> Iterator[tuple[str, torch.Tensor]]:
    pending = _post_bucket(groups, layout, 0) if layout.buckets else None
    for k, bucket in enumerate(layout.buckets):
        tickets, packed, direct = pending
        for group, group_tickets in zip(groups, tickets, strict=True):
            for ticket in group_tickets:
                group.wait(ticket)
        pending = _post_bucket(groups, layout, k + 1) if k + 1 < len(layout.buckets) else None
        offsets = [0] * len(packed)
        for spec in bucket:
            if layout.direct(spec):
                yield spec.name, direct.pop(spec.name)
                continue
            pieces = []
            for rank, part in enumerate(packed):
                numel = spec.part_numel(rank)
                pieces.append(part[offsets[rank] : offsets[rank] + numel].view(spec.part_shape(rank)))
                offsets[rank] += numel
            yield spec.name, _joined(pieces)


def _post_bucket(
    groups: Sequence[WeightGroup], layout: BucketLayout, k: int
) -> tuple[list[list[int]], list[torch.Tensor], dict[str, torch.Tensor]]:
    """Post every receive of bucket k, in each group in the order its sender posts (`_outgoing`): the packed
    part, then the rows of each `direct` tensor, straight into that tensor's full memory (allocated here). Returns
    (tickets by group, packed parts by rank, direct tensors by name)."""
    dtype, device = layout.torch_dtype, groups[0].device
    bucket = layout.buckets[k]
    direct = {spec.name: torch.empty(spec.shape, dtype=dtype, device=device) for spec in bucket if layout.direct(spec)}
    tickets, packed = [], []
    for rank, group in enumerate(groups):
        part = torch.empty(layout.packed_numel(k, rank), dtype=dtype, device=device)
        messages = [part] if part.numel() else []
        for spec in bucket:
            if spec.name in direct and spec.part_numel(rank):
                start = sum(spec.rows[:rank])
                messages.append(direct[spec.name][start : start + spec.rows[rank]])
        tickets.append([group.post(message) for message in messages])
        packed.append(part)
    return tickets, packed, direct


def _joined(pieces: list[torch.Tensor]) -> torch.Tensor:
    """The full tensor from its row ranges: the one non-empty piece itself, else their concatenation."""
    held = [piece for piece in pieces if piece.numel()]
    return held[0] if len(held) == 1 else torch.cat(pieces)


def _header(group: WeightGroup, layout: BucketLayout, rank: int, version: int) -> None:
    """Learner rank `rank` sends `[version, buckets, ranks, its elements]` in its `group`; every member checks
    it against its own, then all confirm (an all-reduce: every member holds it).

    The first step of every sync. A worker checks the header of every group before it yields a single tensor, so
    a member that is dead or hung fails this step before any worker has touched its engine.
    """
    mine = [version, len(layout.buckets), layout.ranks, layout.rank_numel(rank)]
    header = torch.tensor(mine if group.rank == 0 else [0] * len(mine), dtype=torch.int64, device=group.device)
    group.broadcast(header)
    if header.tolist() != mine:
        raise RuntimeError(
            f"weight transport: learner rank {rank} sends [version, buckets, ranks, elements] {header.tolist()}, "
            f"this member expects {mine}"
        )
    group.confirm()
