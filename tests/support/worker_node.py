"""`python -m tests.support.worker_node --gcs HOST:PORT [...]`: one Ray worker node, in this process and its
children, until SIGTERM; what `ray start --address=... --block` does, for a node held on 127.0.0.1.

`ray start` cannot start such a node: with `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0` (which keeps Ray on loopback) it
refuses to join a cluster, and without it it replaces 127.0.0.1 (the node's address and the head's) with the
machine's external address. So this starts the node the way `ray.cluster_utils.Cluster.add_node` does, with Ray's
own `Node` class, in a process of its own (so that it can run in a mount namespace of its own).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time


def main() -> None:
    """Start the node, wait until SIGTERM or until one of its processes dies, then stop all of them."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--gcs", required=True, help="the head's GCS address, 127.0.0.1:PORT")
    parser.add_argument("--num-cpus", type=float, required=True)
    parser.add_argument("--resources", default="{}", help="custom resources, as JSON")
    parser.add_argument("--temp-dir", required=True)
    parser.add_argument("--ports", default="{}", help="RayParams port fields, as JSON")
    args = parser.parse_args()

    import ray._private.node
    from ray._private.parameter import RayParams

    params = RayParams(
        gcs_address=args.gcs,
        node_ip_address="127.0.0.1",
        num_cpus=args.num_cpus,
        resources=json.loads(args.resources),
        temp_dir=args.temp_dir,
        **json.loads(args.ports),
    )
    node = ray._private.node.Node(params, head=False, shutdown_at_exit=True, spawn_reaper=True)
    print(f"Ray worker node {node.node_id} started on {node.node_ip_address}", flush=True)

    def stop(signum, frame):  # noqa: ARG001 - signal handler signature
        node.kill_all_processes(check_alive=False, allow_graceful=True)
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    while True:
        time.sleep(1)
        if node.dead_processes():
            print(f"a process of the node died: {node.dead_processes()}", flush=True)
            node.kill_all_processes(check_alive=False, allow_graceful=False)
            sys.exit(1)


if __name__ == "__main__":
    main()
