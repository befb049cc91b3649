"""The multi-node tier's cluster (tests/cluster/): a Ray head and two worker nodes on 127.0.0.1, each its own
process with its own raylet and resources, and the smoke experiment submitted to it through Ray's job API. The
rollout workers go to the node with `ROLLOUT_NODE`, the learner ranks to the node with `LEARNER_NODE`; that node
runs in a private mount namespace where `node_local` is a folder of its own (a tmpfs), which is how a folder that is
not shared between nodes looks on one host. The fixture `two_node_cluster` (tests/conftest.py) starts one."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from cluster.environment import REPO_ROOT
from tests.support.nodes import RayNodes

ROLLOUT_NODE = "e3_rollout_node"
LEARNER_NODE = "e3_learner_node"
UPLOAD_EXCLUDES = [".venv", ".cache", ".git", "runs", "outputs", "wandb", "**/__pycache__"]
"""Left out of the job's uploaded working directory (a clean clone's .gitignore covers them; here .venv and .cache
may be links, which .gitignore's `dir/` patterns do not match)."""


def private_mount_wrapper(folder: Path) -> list[str]:
    """A command prefix that runs its command in a mount namespace of its own where `folder` is an empty tmpfs;
    [] when this host does not allow it (no `unshare`, no privilege)."""
    wrap = ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
            'mount -t tmpfs e3-node-local "$0" && exec "$@"', str(folder)]  # fmt: skip
    if shutil.which("unshare") is None:
        return []
    probe = subprocess.run([*wrap, "true"], capture_output=True, timeout=30)
    return wrap if probe.returncode == 0 else []


@dataclass(frozen=True)
class Job:
    """How a submitted job ended."""

    status: str
    logs: str
    job_id: str
    """Ray's id of the job (its actors carry it)."""
    beyond_loopback: dict
    """Addresses beyond loopback that a process of the cluster listened on while the job ran (none, we hope)."""


@dataclass
class TwoNodeCluster:
    """The tier's cluster: its nodes, and a folder the learner node does not share with the others."""

    nodes: RayNodes
    node_local: Path
    private_folder: bool
    """Whether `node_local` really is the learner node's own (the host allowed a private mount)."""

    def add_learner_node(self) -> None:
        """Start a learner node (1 CPU, `LEARNER_NODE`), with `node_local` its own where the host allows it."""
        self.nodes.add_node(num_cpus=1, resources={LEARNER_NODE: 1}, wrap=private_mount_wrapper(self.node_local))

    def run_job(self, args: list[str], timeout_s: float = 900, meanwhile: Callable[[], None] = lambda: None) -> Job:
        """Submit `python launch.py <args>` as a Ray job with this repository as its working directory, as the
        README does; wait for its end, calling `meanwhile()` about every second."""
        from ray.job_submission import JobStatus, JobSubmissionClient

        client = JobSubmissionClient(self.nodes.dashboard_url)
        job = client.submit_job(
            entrypoint=shlex.join(["python", "launch.py", *args]),
            runtime_env={"working_dir": str(REPO_ROOT), "excludes": UPLOAD_EXCLUDES},
        )
        listeners: dict = {}
        deadline = time.monotonic() + timeout_s
        while (status := client.get_job_status(job)) not in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}:
            listeners.update(self.nodes.non_loopback_listeners())
            meanwhile()
            if time.monotonic() > deadline:
                client.stop_job(job)
                pytest.fail(f"job {job} still {status} after {timeout_s} s:\n{client.get_job_logs(job)[-3000:]}")
            time.sleep(0.5)
        return Job(str(status), client.get_job_logs(job), client.get_job_info(job).job_id, listeners)
