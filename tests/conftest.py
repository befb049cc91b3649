"""Test-wide settings, applied before any test module imports Ray or W&B, the marks given by folder and fixture,
and the fixtures the tiers share: tiny random policies (built once per shape), the embedded base policy (built
once, cached under .cache/ like the demo's), one local Ray cluster on loopback for the whole session, and the
multi-node tier's cluster (tests/support/two_node.py). Helpers and fakes are in tests/support/; no test module
imports this file."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cluster.environment import OFFLINE_ENV, keep_ray_on_loopback

keep_ray_on_loopback()  # every cluster a test starts is local: its ports stay on 127.0.0.1
os.environ.setdefault("WANDB_MODE", "offline")  # W&B never reaches for the network from a test
for name, value in OFFLINE_ENV.items():
    os.environ.setdefault(name, value)

CLUSTER_TIER = Path(__file__).parent / "cluster"
"""The multi-node tier (`pytest -m cluster`, `make test-cluster`): every test under it is marked `cluster` and
`slow`."""
SLOW_FIXTURES = frozenset({"embedded_task", "ray_cluster"})
"""`slow` (left out by `make test-fast`): a test that builds the base policy, starts Ray, runs an engine or the
learner end to end, or waits out process time limits. One that uses one of these fixtures (directly or through
another fixture) is marked here; the others carry the mark themselves."""


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marks
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark `cluster` and `slow` every test of the multi-node tier, and `slow` every test whose fixtures include
    one of `SLOW_FIXTURES`."""
    for item in items:
        if CLUSTER_TIER in Path(item.path).parents:
            item.add_marker(pytest.mark.cluster)
            item.add_marker(pytest.mark.slow)
        elif SLOW_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def tiny_policy(tmp_path_factory: pytest.TempPathFactory) -> Callable:
    """`tiny_policy(shape)`: the folder of a tiny random Qwen2 of that `PolicyShape` with the project's tokenizer
    (tests/support/tiny_policy.py), built on the first call for each shape and shared by the session after."""
    from tests.support.tiny_policy import save_tiny_policy

    built: dict = {}

    def get(shape) -> Path:
        if shape not in built:
            built[shape] = save_tiny_policy(tmp_path_factory.mktemp("tiny-policy"), shape)
        return built[shape]

    return get


@pytest.fixture(scope="session")
def embedded_task():
    """The embedded default's data and base policy (built on first use; minutes on 2 cores, then cached)."""
    from core.config import RunConfig
    from tasks.registry import prepare_task

    return prepare_task(RunConfig())


@pytest.fixture(scope="session")
def ray_cluster():
    """A local Ray cluster on 127.0.0.1 shared by every test of the session, stopped at the end."""
    import ray

    from cluster.build import start_ray
    from core.config import RayConfig

    start_ray(RayConfig(num_cpus=4), needed_cpus=4)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def two_node_cluster(embedded_task) -> Iterator:
    """A head (1 CPU: the job's driver, the scheduler, the reward scorer), a rollout node and a learner node
    (1 CPU each), on 127.0.0.1; every process stopped by its id at the end, none left behind."""
    from tests.support.nodes import start_head, survivors, wait_for_nodes
    from tests.support.two_node import ROLLOUT_NODE, TwoNodeCluster, private_mount_wrapper

    node_local = Path(tempfile.mkdtemp(prefix="e3-node-local-", dir="/tmp"))
    nodes = start_head(num_cpus=1)
    try:
        nodes.add_node(num_cpus=1, resources={ROLLOUT_NODE: 1})
        wait_for_nodes(nodes, 2)  # one at a time: two raylets registering at once on 2 busy cores can time out
        cluster = TwoNodeCluster(nodes, node_local, private_folder=bool(private_mount_wrapper(node_local)))
        cluster.add_learner_node()
        wait_for_nodes(nodes, 3)
        yield cluster
    finally:
        seen = dict(nodes.seen)
        nodes.stop()
        shutil.rmtree(node_local, ignore_errors=True)
        alive = survivors(seen, grace_s=0)
        assert not alive, f"processes of the cluster outlived it: {alive}"
