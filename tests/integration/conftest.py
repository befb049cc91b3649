"""Shared fixtures of the integration tests: tiny random policies (built once per shape), the embedded base
policy (built once, cached under .cache/ like the demo's) and one local Ray cluster on loopback for the whole
session."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

import launch
from core.config import RayConfig, RunConfig
from tests.tiny_policy import TinyPolicy, save_tiny_policy

# `slow` (left out by `make test-fast`): a test that builds the base policy, starts Ray, runs an engine or the
# learner end to end, or waits out process time limits. One that uses one of these fixtures (directly or through
# another fixture) is marked here; the others carry the mark themselves.
SLOW_FIXTURES = frozenset({"embedded_task", "ray_cluster"})


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marks
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark `slow` every test whose fixtures include one of `SLOW_FIXTURES`."""
    for item in items:
        if SLOW_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def tiny_policy(tmp_path_factory: pytest.TempPathFactory) -> Callable[[TinyPolicy], Path]:
    """`tiny_policy(shape)`: the folder of a tiny random Qwen2 of that shape with the project's tokenizer
    (tests/tiny_policy.py), built on the first call for each shape and shared by the session after."""
    built: dict[TinyPolicy, Path] = {}

    def get(shape: TinyPolicy) -> Path:
        if shape not in built:
            built[shape] = save_tiny_policy(tmp_path_factory.mktemp("tiny-policy"), shape)
        return built[shape]

    return get


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
    return launch.compose_run_config(["+experiment=smoke", f"output_dir={tmp_path}", "wandb.mode=offline", *overrides])
