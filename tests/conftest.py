"""Test-wide settings, applied before any test module imports Ray or W&B."""

import os

from cluster.environment import OFFLINE_ENV, keep_ray_on_loopback

keep_ray_on_loopback()  # every cluster a test starts is local: its ports stay on 127.0.0.1
os.environ.setdefault("WANDB_MODE", "offline")  # W&B never reaches for the network from a test
for name, value in OFFLINE_ENV.items():
    os.environ.setdefault(name, value)


def pytest_configure(config) -> None:
    """Register the marks that are not in pyproject.toml: `cluster`, the multi-node tier (tests/cluster/)."""
    config.addinivalue_line("markers", "cluster: a Ray cluster of several nodes on 127.0.0.1 (make test-cluster)")
