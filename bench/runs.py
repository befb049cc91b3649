"""Training runs for the benchmarks that train (bench.ab, bench.ablation, bench.pipeline): one named run at one
seed. Call `train_run` inside `cluster.build.ray_session`, so that every run of a benchmark shares one local Ray
cluster. Their results name the machine with `bench.machine.machine_line`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

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
