"""The smoke experiment as a user runs it on a cluster: `ray job submit` with the repository as the working
directory, on a head and two worker nodes, the rollout workers on one node and the learner on the other by
custom resources; its outputs land where the user asked, the checkpoint folder is proven shared first, and
nothing of the cluster listens beyond loopback."""

from __future__ import annotations

import pytest
from ray.util.state import list_actors, list_nodes

from actors.learner import MODEL_FILE
from actors.report import load_run
from cluster.environment import REPO_ROOT
from tests.cluster.conftest import LEARNER_NODE, ROLLOUT_NODE

CACHE = f"cache_dir={(REPO_ROOT / '.cache').resolve()}"  # the base policy built once, not again in the job
PLACED = [f"ray.rollout_node_resource={ROLLOUT_NODE}", f"ray.learner_node_resource={LEARNER_NODE}"]


def node_with(cluster, resource: str) -> str:
    """The id of the node started with the custom resource `resource`."""
    nodes = list_nodes(address=cluster.nodes.dashboard_url, detail=True)
    (node,) = [n for n in nodes if resource in n.resources_total and n.state == "ALIVE"]
    return node.node_id


def test_relative_output_dir_in_a_job_is_refused_with_what_to_give(two_node_cluster):
    status, logs, _ = two_node_cluster.run_job(["+experiment=smoke", "ray.address=auto", "run_name=job-relative"])
    assert status == "FAILED"
    assert "output_dir='runs' and cache_dir='.cache': relative" in logs and "working_dir_files" in logs
    assert "output_dir=$PWD/runs cache_dir=$PWD/.cache" in logs


def test_smoke_job_on_two_nodes_lands_its_outputs_where_asked(two_node_cluster, tmp_path):
    out = tmp_path / "runs"
    status, logs, listeners = two_node_cluster.run_job(
        ["+experiment=smoke", "ray.address=auto", *PLACED, f"output_dir={out}", CACHE, "run_name=job-smoke"]
    )
    assert status == "SUCCEEDED", logs[-3000:]
    assert not listeners, f"listening beyond loopback: {listeners}"
    assert f"outputs: {out / 'job-smoke'}/" in logs
    assert f"output folder {out / 'job-smoke' / 'checkpoints'} is shared by nodes" in logs
    assert f"model {CACHE.removeprefix('cache_dir=')}/arithmetic/base-policy" in logs and "probe at step" not in logs

    run_dir = out / "job-smoke"
    assert [m.step for m in load_run(run_dir).steps] == [0, 1, 2]
    assert (run_dir / "checkpoints" / "step_3" / "policy" / MODEL_FILE).is_file()
    assert (run_dir / "summary.json").is_file() and (run_dir / "report.html").is_file()

    actors = list_actors(address=two_node_cluster.nodes.dashboard_url, detail=True, limit=1000)
    placed = {a.name: a.node_id for a in actors if a.name.startswith("e3/")}
    rollout_node, learner_node = node_with(two_node_cluster, ROLLOUT_NODE), node_with(two_node_cluster, LEARNER_NODE)
    assert placed["e3/rollout-0"] == rollout_node and placed["e3/learner-0"] == learner_node
    assert placed["e3/scheduler"] not in {rollout_node, learner_node}  # on the head, with the job's driver


def test_checkpoint_folder_not_shared_with_the_learner_node_is_refused(two_node_cluster):
    if not two_node_cluster.private_folder:
        pytest.skip("this host allows no private mount (unshare --mount), so every node shares every folder")
    out = two_node_cluster.node_local
    status, logs, _ = two_node_cluster.run_job(
        ["+experiment=smoke", "ray.address=auto", *PLACED, f"output_dir={out}", CACHE, "run_name=job-unshared"]
    )
    assert status == "FAILED"
    folder = out / "job-unshared" / "checkpoints"
    assert f"the output folder {folder} is not one folder shared by the run's nodes" in logs, logs[-3000:]
    learner_node = node_with(two_node_cluster, LEARNER_NODE)
    assert f"{learner_node[:12]} (127.0.0.1, learner)" in logs and "(127.0.0.1, driver and scheduler)" in logs
