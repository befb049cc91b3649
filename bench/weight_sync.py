"""Weight sync, collective against object store: seconds per sync and peak host memory added on learner rank 0.

`python -m bench.weight_sync` builds random Qwen2 policies of about 1M, 9M, 50M and 150M parameters locally (the
embedded policy's tokenizer, wider and deeper; nothing is downloaded), starts a real FSDP2 learner group (two
gloo ranks) and a pool of one, then two vLLM rollout workers on a local Ray cluster (loopback only), and times
`RolloutPool.sync_weights` (the scheduler's call) over each transport: one warm-up each, then `--repeats` rounds of
one sync per transport, taking turns (so that a slow spell of the shared machine hits both alike), and the median
of each. While each sync runs, a thread samples the resident set size of learner rank 0's process every
millisecond (/proc/<pid>/statm); the peak minus the value just before the sync is the peak added host memory.
The learner ranks set glibc's mmap threshold to 64 KiB (`mallopt`, as `MALLOC_MMAP_THRESHOLD_=65536` would), so
that freed tensors go back to the OS at once and every sync starts from an honest baseline (glibc would otherwise
keep them for reuse). The rollout workers keep glibc's defaults, as in a run: with the threshold set, every
tensor their engine allocates is fresh pages, faulted in one by one (a copy into fresh memory runs at 2.8 GB/s on
this VM against 13 GB/s into memory already used), which slowed both transports' engine reload alike. The object
store's serialised copy lives in shared memory that rank 0 writes, so it counts in rank 0's RSS.

Writes `bench/results/weight_sync.json` and `.md` (the reading, with the paper-scale arithmetic).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from bench.machine import machine_line
from bench.output import write_results
from bench.random_policy import PolicyShape, save_random_policy

if TYPE_CHECKING:
    from actors.weight_transport import BucketLayout

RESULTS = Path(__file__).resolve().parent / "results"
SIZES = {"1M": (128, 512, 4), "9M": (384, 1536, 4), "50M": (768, 3072, 6), "150M": (1024, 4096, 10)}
"""Label -> (hidden size, MLP size, decoder layers); head size 32, two query heads per key/value head."""
TRANSPORTS = ("collective", "object_store")
RAY_CPUS = 4
PAGE = os.sysconf("SC_PAGE_SIZE")
M_MMAP_THRESHOLD = -3
"""glibc's mallopt parameter for the size from which allocations get a mapping of their own (malloc.h)."""


@dataclass
class Row:
    """One (transport, model, worker count): median seconds per sync and the largest peak added RSS."""

    transport: str
    params: int
    workers: int
    seconds: float
    samples_s: list[float]
    """Every timed sync's seconds, by round (a round times each transport once, in turn)."""
    peak_host_bytes: int
    bytes_per_worker: int
    bound_bytes: int
    """Collective target: two of learner rank 0's bucket parts (its rows of two buckets: the two largest, in the
    publish dtype); nothing is gathered."""


def build_policy(base: Path, out: Path, hidden: int, mlp: int, layers: int, seed: int = 0) -> int:
    """Save a random Qwen2 policy of this shape (head size 32), with `base`'s tokenizer, to `out`; returns its
    parameter count."""
    shape = PolicyShape.of(
        base, hidden_size=hidden, intermediate_size=mlp, num_layers=layers, num_heads=hidden // 32,
        num_kv_heads=hidden // 64, head_dim=32, seed=seed,
    )  # fmt: skip
    return save_random_policy(out, shape, base)


class RssSampler:
    """Samples a process's resident set size every `interval_s` in a thread; `peak_added()` after `stop()`."""

    def __init__(self, pid: int, interval_s: float = 0.001) -> None:
        self._path = f"/proc/{pid}/statm"
        self._interval_s = interval_s
        self.baseline = self._rss()
        self.peak = self.baseline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _rss(self) -> int:
        with open(self._path, encoding="ascii") as handle:
            return int(handle.read().split()[1]) * PAGE

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            time.sleep(self._interval_s)

    def stop(self) -> int:
        """Stop sampling; returns the peak minus the baseline, in bytes."""
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())
        return self.peak - self.baseline


def measure(model: Path, params: int, workers: int, args: argparse.Namespace) -> list[Row]:
    """Both transports on one model and worker count: a learner group, a pool, warm-up, then timed syncs."""
    import ray

    import launch
    from cluster.build import build_rollout_pool
    from cluster.learner_group import LearnerGroup
    from cluster.weight_sync import make_transport

    cfg = launch.compose_run_config(
        [
            f"model.path={model}",
            f"rollout.engine={args.engine}",
            f"rollout.num_workers={workers}",
            f"learner.num_ranks={args.learner_ranks}",
            f"rollout.weight_bucket_mb={args.bucket_mb}",
            f"ray.num_cpus={RAY_CPUS}",
        ]
    )
    rows = []
    bucket_bytes = int(args.bucket_mb * 2**20)
    with contextlib.ExitStack() as stack:
        learner = LearnerGroup(str(model), cfg.learner, cfg.model.dtype, cfg.train.seed)
        stack.callback(learner.shutdown)
        pool = build_rollout_pool(cfg, model)
        stack.callback(pool.shutdown)
        pid = _pid(learner.actors[0])
        # The measured processes only: the workers keep glibc's defaults, unless asked (`--mmap-everywhere`).
        for actor in learner.actors + (pool.workers if args.mmap_everywhere else []):
            ray.get(actor.__ray_call__.remote(_return_freed_memory_at_once))
        layout = learner.weight_layout(bucket_bytes)
        transports = {name: make_transport(name, args.bucket_mb, cfg.rollout.sync_timeout_s) for name in TRANSPORTS}
        seconds: dict[str, list[float]] = {name: [] for name in TRANSPORTS}
        peaks: dict[str, list[int]] = {name: [] for name in TRANSPORTS}
        version = 0
        for repeat in range(args.repeats + 1):  # round 0 is the warm-up (group set-up, first allocations)
            for name, transport in transports.items():
                pool.transport = transport
                version += 1
                sampler = RssSampler(pid)
                start = time.perf_counter()
                pool.sync_weights(learner, version)
                elapsed = time.perf_counter() - start
                peak = sampler.stop()
                assert pool.restarts == 0 and {i["weights_version"] for i in pool.info()} == {version}
                if repeat:
                    seconds[name].append(round(elapsed, 4))
                    peaks[name].append(peak)
        for name in TRANSPORTS:
            row = Row(
                transport=name,
                params=params,
                workers=workers,
                seconds=statistics.median(seconds[name]),
                samples_s=seconds[name],
                peak_host_bytes=max(peaks[name]),
                bytes_per_worker=layout.nbytes,
                bound_bytes=rank0_bound(layout),
            )
            print(json.dumps(asdict(row)), flush=True)
            rows.append(row)
    return rows


def rank0_bound(layout: BucketLayout) -> int:
    """Bytes learner rank 0 may hold during a collective sync beside its shards: its parts of the two largest
    buckets (one in flight, one filling), in the publish dtype."""
    parts = sorted(layout.part_numel(k, 0) for k in range(len(layout.buckets)))
    return sum(parts[-2:]) * layout.torch_dtype.itemsize


def _return_freed_memory_at_once(_actor) -> None:
    """Run inside an actor: glibc serves every allocation of 64 KiB or more with its own mapping from now on, so
    that freed tensors leave the resident set size at once (what `MALLOC_MMAP_THRESHOLD_=65536` does at start)."""
    import ctypes

    if ctypes.CDLL(None).mallopt(M_MMAP_THRESHOLD, 65536) != 1:
        raise RuntimeError("mallopt(M_MMAP_THRESHOLD) refused")


def _pid(actor) -> int:
    import ray

    return ray.get(actor.__ray_call__.remote(lambda self: os.getpid()))


def run(args: argparse.Namespace) -> dict:
    """Every size and worker count; returns the JSON document written."""
    from cluster.environment import keep_ray_on_loopback, worker_env

    keep_ray_on_loopback()  # before Ray is imported
    import ray

    from core.config import RunConfig
    from tasks.registry import prepare_task

    base = prepare_task(RunConfig()).model
    ray.init(
        address="local",
        num_cpus=RAY_CPUS,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        runtime_env={"env_vars": worker_env()},
        logging_level="WARNING",
    )
    started = time.time()
    rows: list[Row] = []
    try:
        with tempfile.TemporaryDirectory(prefix="e3-weight-sync-") as tmp:
            for label in args.sizes:
                hidden, mlp, layers = SIZES[label]
                model = Path(tmp) / label
                params = build_policy(base, model, hidden, mlp, layers)
                for workers in args.workers:
                    rows.extend(measure(model, params, workers, args))
    finally:
        ray.shutdown()
    return {
        "command": " ".join(["python -m bench.weight_sync", *args.argv]),
        "machine": machine_line(),
        "learner_ranks": args.learner_ranks,
        "bucket_mb": args.bucket_mb,
        "dtype": "float32",
        "engine": args.engine,
        "repeats": args.repeats,
        "workers_mmap_threshold": 65536 if args.mmap_everywhere else "glibc default",
        "wall_s": round(time.time() - started, 1),
        "rows": [asdict(r) for r in rows],
    }


def markdown(doc: dict) -> str:
    """The result tables and the reading."""
    rows = doc["rows"]
    key = {(r["transport"], r["params"], r["workers"]): r for r in rows}
    lines = [
        "# Weight sync: collective broadcast against the Ray object store",
        "",
        f"Command: `{doc['command']}`. Machine: {doc['machine']}. Wall time {doc['wall_s']:.0f} s.",
        "",
        f"`RolloutPool.sync_weights` from a real FSDP2 learner group ({doc['learner_ranks']} gloo ranks) to "
        f"real rollout workers (engine `{doc['engine']}`), {doc['dtype']} publish dtype, buckets of "
        f"{doc['bucket_mb']} MiB; one warm-up each, then {doc['repeats']} rounds of one sync per transport in turn, "
        "median of each (the paired column: each round's object store time over its collective time, lowest to "
        "highest). Peak added "
        "host memory: the resident set size of learner rank 0's process sampled every millisecond by a thread "
        "during each sync, peak minus the value just before it, the largest over the timed syncs (the learner ranks "
        "set glibc's mmap threshold to 64 KiB so that freed tensors leave the RSS at once; the rollout workers' "
        f"threshold: {doc['workers_mmap_threshold']}). Random Qwen2 "
        "weights built locally; loopback only.",
        "",
        "| params | workers | MB per worker | object store s | collective s | speed-up | paired speed-ups "
        "| object store peak MB | collective peak MB | collective bound MB (2 of rank 0's bucket parts) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for params, workers in sorted({(r["params"], r["workers"]) for r in rows}):
        store, coll = key[("object_store", params, workers)], key[("collective", params, workers)]
        lines.append(
            f"| {params / 1e6:.1f}M | {workers} | {coll['bytes_per_worker'] / 1e6:.1f} | {store['seconds']:.3f} | "
            f"{coll['seconds']:.3f} | {store['seconds'] / coll['seconds']:.2f}x | {paired_speedups(store, coll)} | "
            f"{store['peak_host_bytes'] / 1e6:.1f} | {coll['peak_host_bytes'] / 1e6:.1f} | "
            f"{coll['bound_bytes'] / 1e6:.1f} |"
        )
    return "\n".join(lines) + "\n"


def paired_speedups(store: dict, collective: dict) -> str:
    """Each round's object-store seconds over its collective seconds, lowest and highest: "2.9-3.3x"."""
    ratios = [a / b for a, b in zip(store["samples_s"], collective["samples_s"], strict=True)]
    return f"{min(ratios):.2f}-{max(ratios):.2f}x"


def main(argv: Sequence[str] | None = None) -> dict:
    """Run the benchmark and write bench/results/weight_sync.json and .md (the reading is added by hand)."""
    parser = argparse.ArgumentParser(prog="python -m bench.weight_sync", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--workers", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--learner-ranks", type=int, default=2)
    parser.add_argument("--bucket-mb", type=float, default=32.0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--engine", default="vllm", choices=["vllm", "hf"])
    parser.add_argument(
        "--mmap-everywhere",
        action="store_true",
        help="the rollout workers too allocate every tensor as fresh pages (the learner ranks always do)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    args.argv = list(argv) if argv is not None else __import__("sys").argv[1:]
    doc = run(args)
    write_results(args.out, "weight_sync", doc, markdown(doc))
    return doc


if __name__ == "__main__":
    main()
