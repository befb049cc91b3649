"""Training runs for the benchmarks that train (bench.ab, bench.ablation, bench.countdown, bench.pipeline): one
named run at one seed (`train_run`, called inside `cluster.build.ray_session`, so that every run of a benchmark
shares one local Ray cluster), and a grid of variants x seeds with its command line (`grid_arguments`,
`train_grid`). Their results name the machine with `bench.machine.machine_line`."""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Mapping, Sequence
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
"""Where a benchmark writes its committed results (`bench/results/`) unless told `--out`."""

SYNCHRONOUS = ("train.max_staleness=0", "learner.off_policy_correction=none")
"""The synchronous loop. The demo runs one step ahead; a benchmark whose committed results ran synchronously
pins it, so that rerunning its command reproduces them."""


def train_run(runs: Path, name: str, seed: int, overrides: Sequence[str], reuse: bool = False) -> Path:
    """Train the run `name` at `seed` into `runs/name` with W&B off and `overrides` on top (they win); returns
    that folder. With `reuse`, a finished run already there (one with a `summary.json`) is kept, not retrained."""
    import launch

    folder = runs / name
    if not (reuse and (folder / "summary.json").is_file()):
        identity = [f"train.seed={seed}", f"run_name={name}", f"output_dir={runs}", "wandb.mode=disabled"]
        launch.train(launch.compose_run_config([*identity, *overrides]))
    return folder


def grid_arguments(parser: argparse.ArgumentParser, variants: Sequence[str], runs: Path) -> None:
    """Add a variants x seeds benchmark's options to `parser`: `--seeds` (0 1 2), `--variants` (all of
    `variants`), `--out` (`RESULTS`), `--runs` (`runs`), `--reuse`, and the config overrides for every variant
    after `--`."""
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", choices=list(variants), default=list(variants))
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--runs", type=Path, default=runs)
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="keep finished runs (with a summary.json) found in --runs; when all are, only summarize them (no Ray)",
    )
    parser.add_argument("overrides", nargs="*", help="config overrides for every variant (after --)")


def train_grid(
    runs: Path,
    seeds: Sequence[int],
    variants: Mapping[str, Sequence[str]],
    reuse: bool = False,
    first_only: Sequence[str] = (),
) -> dict[str, list[Path]]:
    """Train every variant (name: its overrides) at every seed, seed by seed, as runs `<name>-seed<seed>` under
    `runs`, in one local Ray session; return each variant's run folders in the order of `seeds`. `first_only`
    overrides go to the first run alone (a measurement wanted once). With `reuse`, finished runs are kept, and when
    every run is finished no Ray cluster is started. Call `cluster.environment.keep_ray_on_loopback` first."""
    from cluster.build import ray_session
    from core.config import RayConfig

    names = [(name, seed, f"{name}-seed{seed}") for seed in seeds for name in variants]
    finished = all((runs / run / "summary.json").is_file() for _, _, run in names)
    run_dirs: dict[str, list[Path]] = {name: [] for name in variants}
    with contextlib.nullcontext() if reuse and finished else ray_session(RayConfig(), needed_cpus=4):
        for index, (name, seed, run) in enumerate(names):
            overrides = [*variants[name], *(first_only if index == 0 else ())]
            run_dirs[name].append(train_run(runs, run, seed, overrides, reuse=reuse))
    return run_dirs
