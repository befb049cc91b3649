"""Checkpoints need one output folder on every node that writes them: the scheduler (on the driver's node) writes
a checkpoint's `scheduler.json` and renames the step folder into place, while learner rank 0 writes its `policy/`
on its own node. On a cluster of several nodes, `check_shared_folder` proves at start-up that a folder is the same
on each of them (every node writes a probe file, every other reads it) or refuses the run, naming the folder and
the nodes that do not share it.
"""

from __future__ import annotations

import logging
import uuid
from pathlib import Path

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from core.config import ConfigError

log = logging.getLogger(__name__)

PROBE = ".e3-shared-probe-{node}"


def _write_probe(folder: str, node: str, token: str) -> str:
    """Write `token` to this node's probe file in `folder`; '' when done, else why it could not."""
    try:
        (Path(folder) / PROBE.format(node=node)).write_text(token, encoding="utf-8")
    except OSError as err:
        return f"cannot write there ({err.strerror or err})"
    return ""


def _read_probes(folder: str, tokens: dict[str, str]) -> dict[str, bool]:
    """Which of the other nodes' probe files (`{node: token}`) this node sees in `folder`, with their token."""
    seen = {}
    for node, token in tokens.items():
        try:
            seen[node] = (Path(folder) / PROBE.format(node=node)).read_text(encoding="utf-8") == token
        except OSError:
            seen[node] = False
    return seen


def _on(node: str) -> NodeAffinitySchedulingStrategy:
    return NodeAffinitySchedulingStrategy(node_id=node, soft=False)


def check_shared_folder(folder: Path, nodes: dict[str, str]) -> None:
    """Make sure `folder` (created here, on the driver's node) is one folder on every node of `nodes` (`{node id:
    the role it plays}`, the driver's own node among them): each node writes a probe file into it and reads every
    other's. Raises `ConfigError` naming the folder and the nodes that do not see each other's files; returns at
    once when all of `nodes` is this node. The probe files are removed afterwards."""
    here = ray.get_runtime_context().get_node_id()
    if set(nodes) <= {here}:
        return
    folder.mkdir(parents=True, exist_ok=True)
    tokens = {node: uuid.uuid4().hex for node in nodes}
    write = ray.remote(num_cpus=0)(_write_probe)
    read = ray.remote(num_cpus=0)(_read_probes)
    try:
        writes = [write.options(scheduling_strategy=_on(n)).remote(str(folder), n, tokens[n]) for n in nodes]
        written = dict(zip(nodes, ray.get(writes), strict=True))
        reads = [read.options(scheduling_strategy=_on(n)).remote(str(folder), tokens) for n in nodes]
        seen = dict(zip(nodes, ray.get(reads), strict=True))
    finally:
        for node in nodes:
            (folder / PROBE.format(node=node)).unlink(missing_ok=True)
    addresses = {n["NodeID"]: n["NodeManagerAddress"] for n in ray.nodes()}
    name = lambda node: f"{node[:12]} ({addresses.get(node, '?')}, {nodes[node]})"  # noqa: E731
    problems = [f"node {name(n)}: {why}" for n, why in written.items() if why]
    problems += [
        f"node {name(reader)} does not see the probe file node {name(writer)} wrote"
        for reader, visible in seen.items()
        for writer, ok in visible.items()
        if not ok and not written[writer]
    ]
    if problems:
        raise ConfigError(
            f"the output folder {folder} is not one folder shared by the run's nodes: {'; '.join(problems)}. "
            "A checkpoint's policy/ is written on learner rank 0's node and renamed into place on the driver's: "
            "put output_dir on a file system that every node mounts at the same path (NFS, a shared disk), or "
            "keep the learner ranks on the driver's node"
        )
    log.info("output folder %s is shared by nodes %s", folder, ", ".join(name(n) for n in nodes))
