"""The colocated weight handover against the collective transport, and against the engine's own load.

`python -m bench.handover` builds the 157.6M-parameter random Qwen2 policy of `bench.weight_sync` (size 150M,
locally, nothing downloaded) and times, on a local Ray cluster (loopback only), one learner rank and one engine:
- `colocated`: `ColocatedPool.sync_weights`, the scheduler's call: the rank streams its parameters into the engine
  it holds (`rollout.placement=colocated`, actors/colocated.py);
- `collective`: `RolloutPool.sync_weights` from a learner rank to a rollout worker of its own over the collective
  transport (gloo), the split placement's default;
- `engine_load`: inside the colocated rank, the engine loading the same weights from tensors already in the
  process (`Engine.load_weights`): the floor any handover pays.
The colocated and split clusters cannot be up at once (the learner ranks' names are fixed), so the benchmark runs
them in turn, `--cycles` times each (colocated, split, colocated, ...), each time a warm-up and `--repeats` syncs;
the engine's own load is timed after each colocated sync. Medians over all timed syncs, and the ratios.

Writes `bench/results/handover.json` (`colocated_s`, `collective_s`, `engine_load_s`, `colocated_over_collective`,
`colocated_over_engine_load`, the samples, `machine`, `command`) and `.md`.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from bench.machine import machine_line
from bench.output import write_results
from bench.weight_sync import RAY_CPUS, SIZES, build_policy

RESULTS = Path(__file__).resolve().parent / "results"


def _engine_load_seconds(rank) -> float:
    """Run inside a colocated rank (`__ray_call__`): the seconds its engine takes to load the rank's current
    weights from tensors already gathered in this process."""
    import torch

    with torch.no_grad():
        state = dict(rank.gathered_parameters())
    start = time.perf_counter()
    rank.worker.engine.load_weights(state)
    return time.perf_counter() - start


def _config(model: Path, engine: str, placement: str):
    import launch

    return launch.compose_run_config(
        [
            f"model.path={model}",
            f"rollout.engine={engine}",
            f"rollout.placement={placement}",
            "train.max_staleness=0",
            "rollout.num_workers=1",
            "learner.num_ranks=1",
            f"ray.num_cpus={RAY_CPUS}",
        ]
    )


def time_colocated(model: Path, args: argparse.Namespace, version: int) -> tuple[list[float], list[float], int]:
    """One colocated cycle: (handover seconds, engine-load seconds, the last version synced)."""
    import ray

    from actors.colocated import ColocatedRank
    from cluster.build import max_model_len
    from cluster.colocated import ColocatedPool
    from cluster.learner_group import LearnerGroup

    cfg = _config(model, args.engine, "colocated")
    handover, engine_load = [], []
    with contextlib.ExitStack() as stack:
        group = LearnerGroup(
            str(model), cfg.learner, cfg.model.dtype, cfg.train.seed, rank_class=ColocatedRank,
            rank_options={"rollout": cfg.rollout, "max_model_len": max_model_len(cfg)},
        )  # fmt: skip
        stack.callback(group.shutdown)
        pool = ColocatedPool(group, cfg.rollout)
        for repeat in range(args.repeats + 1):  # round 0 warms up
            version += 1
            start = time.perf_counter()
            pool.sync_weights(group, version)
            elapsed = time.perf_counter() - start
            load = ray.get(group.actors[0].__ray_call__.remote(_engine_load_seconds))
            assert [i["weights_version"] for i in pool.info()] == [version]
            if repeat:
                handover.append(round(elapsed, 4))
                engine_load.append(round(load, 4))
    return handover, engine_load, version


def time_collective(model: Path, args: argparse.Namespace, version: int) -> tuple[list[float], int]:
    """One split cycle over the collective transport: (sync seconds, the last version synced)."""
    from cluster.build import build_rollout_pool
    from cluster.learner_group import LearnerGroup

    cfg = _config(model, args.engine, "split")
    seconds = []
    with contextlib.ExitStack() as stack:
        group = LearnerGroup(str(model), cfg.learner, cfg.model.dtype, cfg.train.seed)
        stack.callback(group.shutdown)
        pool = build_rollout_pool(cfg, model)
        stack.callback(pool.shutdown)
        for repeat in range(args.repeats + 1):
            version += 1
            start = time.perf_counter()
            pool.sync_weights(group, version)
            elapsed = time.perf_counter() - start
            assert pool.restarts == 0 and [i["weights_version"] for i in pool.info()] == [version]
            if repeat:
                seconds.append(round(elapsed, 4))
    return seconds, version


def run(args: argparse.Namespace) -> dict:
    """Build the policy, run the cycles; returns the JSON document."""
    from cluster.environment import keep_ray_on_loopback, worker_env

    keep_ray_on_loopback()  # before Ray is imported
    import ray

    from core.config import RunConfig
    from tasks.registry import prepare_task

    base = prepare_task(RunConfig()).model
    started = time.time()
    ray.init(
        address="local",
        num_cpus=RAY_CPUS,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        runtime_env={"env_vars": worker_env()},
        logging_level="WARNING",
    )
    colocated: list[float] = []
    engine_load: list[float] = []
    collective: list[float] = []
    try:
        with tempfile.TemporaryDirectory(prefix="e3-handover-") as tmp:
            model = Path(tmp) / args.size
            params = build_policy(base, model, *SIZES[args.size])
            version = 0
            for _ in range(args.cycles):
                handover, load, version = time_colocated(model, args, version)
                colocated += handover
                engine_load += load
                seconds, version = time_collective(model, args, version)
                collective += seconds
    finally:
        ray.shutdown()
    medians = {name: statistics.median(v) for name, v in (("c", colocated), ("n", collective), ("e", engine_load))}
    return {
        "command": " ".join(["python -m bench.handover", *args.argv]),
        "machine": machine_line(),
        "engine": args.engine,
        "params": params,
        "dtype": "float32",
        "learner_ranks": 1,
        "cycles": args.cycles,
        "repeats": args.repeats,
        "wall_s": round(time.time() - started, 1),
        "colocated_s": medians["c"],
        "collective_s": medians["n"],
        "engine_load_s": medians["e"],
        "colocated_over_collective": round(medians["c"] / medians["n"], 3),
        "colocated_over_engine_load": round(medians["c"] / medians["e"], 3),
        "samples": {"colocated_s": colocated, "collective_s": collective, "engine_load_s": engine_load},
    }


def markdown(doc: dict) -> str:
    """The result table (the reading is added by hand below it)."""
    return "\n".join(
        [
            "# Weight handover: colocated against the collective transport",
            "",
            f"Command: `{doc['command']}`. Machine: {doc['machine']}. Wall time {doc['wall_s']:.0f} s.",
            "",
            f"{doc['params'] / 1e6:.1f}M parameters, {doc['dtype']}, engine `{doc['engine']}`, one learner rank; "
            f"{doc['cycles']} cycles of each placement in turn, each a warm-up and {doc['repeats']} timed syncs; "
            "medians over all timed syncs.",
            "",
            "| | median s | samples s |",
            "|---|---:|---|",
            f"| colocated handover (`ColocatedPool.sync_weights`) | {doc['colocated_s']:.3f} | "
            f"{', '.join(f'{s:.3f}' for s in doc['samples']['colocated_s'])} |",
            f"| collective transport (`RolloutPool.sync_weights`, split) | {doc['collective_s']:.3f} | "
            f"{', '.join(f'{s:.3f}' for s in doc['samples']['collective_s'])} |",
            f"| the engine's own load of in-process tensors | {doc['engine_load_s']:.3f} | "
            f"{', '.join(f'{s:.3f}' for s in doc['samples']['engine_load_s'])} |",
            "",
            f"Colocated over collective: **{doc['colocated_over_collective']:.2f}x**; colocated over the engine's own "
            f"load: **{doc['colocated_over_engine_load']:.2f}x**.",
            "",
        ]
    )


def main(argv: Sequence[str] | None = None) -> dict:
    """Run the benchmark and write bench/results/handover.json and .md."""
    parser = argparse.ArgumentParser(prog="python -m bench.handover", description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="150M", choices=list(SIZES))
    parser.add_argument("--engine", default="vllm", choices=["vllm", "hf"])
    parser.add_argument("--cycles", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    args.argv = list(argv) if argv is not None else sys.argv[1:]
    doc = run(args)
    write_results(args.out, "handover", doc, markdown(doc))
    return doc


if __name__ == "__main__":
    main()
