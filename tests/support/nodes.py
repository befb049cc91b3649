"""A Ray cluster of several nodes on one host, on 127.0.0.1, as `ray start` processes that this module starts
and stops by their ids: a head and worker nodes, each with its own raylet, resources and ports, started from the
project's environment the way the README's recipe does (its `bin/` first on PATH, as after activating it)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from cluster.build import free_loopback_port as free_port
from cluster.environment import LOOPBACK_ENV, OFFLINE_ENV, REPO_ROOT

LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}
ENV_BIN = Path(sys.executable).parent


HEAD_PORTS = ["node-manager-port", "object-manager-port", "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
              "runtime-env-agent-port", "metrics-export-port", "ray-client-server-port"]  # fmt: skip
"""`ray start --head` ports given free ones (the defaults are fixed numbers another cluster on the host may hold)."""


def node_env() -> dict[str, str]:
    """The environment of every node: the project's environment first on PATH (as `source .venv/bin/activate`
    gives), no token auth on this loopback-only cluster, Ray held on loopback, offline."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    env.update(OFFLINE_ENV)
    env.update(
        PATH=f"{ENV_BIN}{os.pathsep}{env.get('PATH', '')}",
        VIRTUAL_ENV=str(ENV_BIN.parent),
        RAY_AUTH_MODE="disabled",
        RAY_USAGE_STATS_ENABLED="0",
        WANDB_MODE="offline",
        **{LOOPBACK_ENV: "0"},
    )
    env.pop("PYTHONPATH", None)  # a job imports its uploaded working directory, as on a user's cluster
    return env


def process_tree(roots: Iterable[int]) -> dict[int, float]:
    """Every live process under `roots` (themselves included): pid -> creation time (to tell a reused pid)."""
    tree: dict[int, float] = {}
    for pid in roots:
        try:
            root = psutil.Process(pid)
            for proc in [root, *root.children(recursive=True)]:
                tree[proc.pid] = proc.create_time()
        except psutil.NoSuchProcess:
            continue
    return tree


def listening_addresses(pids: Iterable[int]) -> dict[tuple[str, int], int]:
    """The TCP/UDP addresses that the processes `pids` listen on (or have bound, for UDP): (ip, port) -> pid.

    A UDP socket connected to a peer is left out: it receives from that peer only. Libraries open one for a
    moment to learn the host's routable address (connect to a public address, read the local end; no datagram is
    sent), which would otherwise count as a listener on that address."""
    wanted = set(pids)
    return {
        (c.laddr.ip, c.laddr.port): c.pid
        for c in psutil.net_connections(kind="inet")
        if c.pid in wanted
        and c.laddr
        and (c.status == psutil.CONN_LISTEN or (c.type == socket.SOCK_DGRAM and not c.raddr))
    }


def same_processes(seen: dict[int, float]) -> list[psutil.Process]:
    """The processes of `seen` (pid -> creation time) that are still alive and still the same (not a reused pid)."""
    procs = []
    for pid, created in seen.items():
        try:
            proc = psutil.Process(pid)
            if proc.create_time() == created:
                procs.append(proc)
        except psutil.NoSuchProcess:
            continue
    return procs


def signal_each(procs: list[psutil.Process], signum: int) -> None:
    """Send `signum` to each of `procs` that is still there."""
    for proc in procs:
        try:
            proc.send_signal(signum)
        except psutil.NoSuchProcess:
            continue


def survivors(seen: dict[int, float], grace_s: float = 15.0) -> dict[int, str]:
    """The processes of `seen` still alive after up to `grace_s` seconds of waiting for them to exit by
    themselves: pid -> command line."""
    _, alive = psutil.wait_procs(same_processes(seen), timeout=grace_s)
    found = {}
    for proc in alive:
        try:
            found[proc.pid] = " ".join(proc.cmdline())[:200]
        except psutil.NoSuchProcess:
            continue
    return found


def stop_processes(tree: dict[int, float], timeout_s: float = 10.0) -> list[int]:
    """SIGTERM each process of `tree` that is still the same process, wait up to `timeout_s`, SIGKILL what is
    left; return the pids that had to be killed."""
    procs = same_processes(tree)
    signal_each(procs, signal.SIGTERM)
    _, alive = psutil.wait_procs(procs, timeout=timeout_s)
    signal_each(alive, signal.SIGKILL)
    psutil.wait_procs(alive, timeout=10)
    return [proc.pid for proc in alive]


@dataclass
class RayNodes:
    """A head and worker nodes started by `start_nodes`; `stop()` ends every process they started."""

    gcs_address: str
    dashboard_url: str
    temp_dir: Path
    starters: list[subprocess.Popen] = field(default_factory=list)
    seen: dict[int, float] = field(default_factory=dict)
    """Every process of the cluster seen so far (pid -> creation time), added to by `processes()`."""

    def processes(self) -> dict[int, float]:
        """The cluster's live processes now (the `ray start` processes and everything under them)."""
        tree = process_tree(p.pid for p in self.starters)
        self.seen.update(tree)
        return tree

    def non_loopback_listeners(self) -> dict[tuple[str, int], str]:
        """Addresses beyond loopback that a process of the cluster listens on: (ip, port) -> its command."""
        found = {}
        for (ip, port), pid in listening_addresses(self.processes()).items():
            if ip not in LOOPBACK:
                try:
                    found[(ip, port)] = " ".join(psutil.Process(pid).cmdline()[:3])
                except psutil.NoSuchProcess:
                    found[(ip, port)] = f"pid {pid}"
        return found

    def add_node(self, num_cpus: float, resources: dict[str, float], wrap: Sequence[str] = ()) -> None:
        """Start a worker node that joins the head with `num_cpus` CPUs and custom `resources`, optionally under
        the command prefix `wrap` (tests/support/worker_node.py says why not `ray start`)."""
        ports = {
            "node_manager_port": free_port(),
            "object_manager_port": free_port(),
            "dashboard_agent_listen_port": free_port(),
            "runtime_env_agent_port": free_port(),
            "metrics_export_port": free_port(),
            "metrics_agent_port": free_port(),
        }
        # A temporary folder of its own, as on a machine of its own: nodes sharing one would share (and clean up)
        # one copy of each job's working directory under it, which no real cluster does.
        node_dir = self.temp_dir / f"node{len(self.starters)}"
        node_dir.mkdir()
        command = [*wrap, sys.executable, "-m", "tests.support.worker_node", f"--gcs={self.gcs_address}",
                   f"--num-cpus={num_cpus}", f"--resources={json.dumps(resources)}", f"--temp-dir={node_dir}",
                   f"--ports={json.dumps(ports)}"]  # fmt: skip
        self.starters.append(_spawn(command, self.temp_dir, {**node_env(), "PYTHONPATH": str(REPO_ROOT)}))

    def kill_node(self, index: int) -> None:
        """Kill worker node `index` (0: the first added) at once, every process of it by its pid with SIGKILL, as
        when a machine is lost."""
        starter = self.starters[1 + index]
        tree = process_tree([starter.pid])
        self.seen.update(tree)
        signal_each(same_processes(tree), signal.SIGKILL)
        starter.wait(timeout=30)

    def stop(self) -> list[int]:
        """Stop every process the cluster started (by pid, SIGTERM then SIGKILL); return those killed hard."""
        self.processes()
        killed = stop_processes(self.seen)
        shutil.rmtree(self.temp_dir, ignore_errors=True)
        return killed


def _spawn(command: Sequence[str], temp_dir: Path, env: dict[str, str]) -> subprocess.Popen:
    """Start `command` with its output in a log file under `temp_dir`."""
    with open(temp_dir / f"node-{time.monotonic_ns()}.log", "w") as log:
        return subprocess.Popen(command, env=env, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)


def start_logs(temp_dir: Path) -> str:
    """The last lines of every node's output under `temp_dir` (for a failure message)."""
    return "\n".join(f"{p.name}: ...{p.read_text()[-1500:]}" for p in sorted(temp_dir.glob("node-*.log")))


def start_head(num_cpus: float, resources: dict[str, float] | None = None) -> RayNodes:
    """Start a head node (GCS, dashboard with the job server on 127.0.0.1) and wait until it takes jobs."""
    from ray.job_submission import JobSubmissionClient

    temp_dir = Path(tempfile.mkdtemp(prefix="e3ray-", dir="/tmp"))  # short: Ray's socket paths have a limit
    port, dashboard_port = free_port(), free_port()
    head = _spawn(
        [
            str(ENV_BIN / "ray"),
            "start",
            "--head",
            "--block",
            "--node-ip-address=127.0.0.1",
            "--disable-usage-stats",
            f"--temp-dir={temp_dir}",
            f"--port={port}",
            "--include-dashboard=true",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dashboard_port}",
            f"--num-cpus={num_cpus}",
            f"--resources={json.dumps(resources or {})}",
            *(f"--{name}={free_port()}" for name in HEAD_PORTS),
        ],
        temp_dir,
        node_env(),
    )
    nodes = RayNodes(f"127.0.0.1:{port}", f"http://127.0.0.1:{dashboard_port}", temp_dir, [head])
    deadline = time.monotonic() + 120
    while True:
        try:
            JobSubmissionClient(nodes.dashboard_url).list_jobs()
            return nodes
        except Exception:  # noqa: BLE001 - not up yet
            if head.poll() is not None or time.monotonic() > deadline:
                logs = start_logs(temp_dir)
                nodes.stop()
                raise RuntimeError(f"the Ray head did not come up (exit code {head.poll()}):\n{logs}") from None
            time.sleep(1)


def wait_for_nodes(nodes: RayNodes, count: int, timeout_s: float = 120) -> list:
    """Wait until `count` nodes are alive; return them (Ray's state API `NodeState`s)."""
    from ray.util.state import list_nodes

    deadline = time.monotonic() + timeout_s
    while True:
        alive = [n for n in list_nodes(address=nodes.dashboard_url, detail=True) if n.state == "ALIVE"]
        if len(alive) >= count:
            return alive
        if time.monotonic() > deadline or any(p.poll() is not None for p in nodes.starters):
            raise RuntimeError(f"{len(alive)} of {count} Ray nodes came up:\n{start_logs(nodes.temp_dir)}")
        time.sleep(1)
