"""Shared fixtures of the integration tests: the embedded base policy (built once, cached under .cache/ like
the demo's) and one local Ray cluster on loopback for the whole session."""

from __future__ import annotations

import pytest
from hydra import compose, initialize

import launch
from core.config import RayConfig, RunConfig


@pytest.fixture(scope="session")
def embedded_task():
    """The embedded default's data and base policy (built on first use; minutes on 2 cores, then cached)."""
    from tasks.registry import prepare_task

    return prepare_task(RunConfig())


@pytest.fixture(scope="session")
def ray_cluster():
    """A local Ray cluster on 127.0.0.1 shared by every test of the session, stopped at the end."""
    import ray

    from cluster.build import start_ray

    start_ray(RayConfig(num_cpus=4), needed_cpus=4)
    yield ray
    ray.shutdown()


def run_config(tmp_path, *overrides: str) -> RunConfig:
    """The smoke experiment, writing under `tmp_path`, with `overrides` on top (as on the command line)."""
    with initialize(version_base="1.3", config_path="../../conf"):
        raw = compose(
            "config",
            overrides=["+experiment=smoke", f"output_dir={tmp_path}", "wandb.mode=offline", *overrides],
        )
    return launch.to_run_config(raw)
