"""The smoke experiment as a user runs it on a cluster: `ray job submit` with the repository as the working
directory, on a head and two worker nodes, the rollout workers on one node and the learner on the other by
custom resources; its outputs land where the user asked, the checkpoint folder is proven shared first, nothing
of the cluster listens beyond loopback, and a run that loses the learner's node mid-run heals itself on the
node that replaces it and ends as the uninterrupted run did."""

from __future__ import annotations

import json

import pytest
from ray.util.state import list_actors, list_nodes

from actors.checkpoint_files import WEIGHTS_FILE
from cluster.environment import REPO_ROOT
from reporting.report import load_run
from tests.support.nodes import wait_for_nodes
from tests.support.records import assert_same_run
from tests.support.two_node import LEARNER_NODE, ROLLOUT_NODE

CACHE = f"cache_dir={(REPO_ROOT / '.cache').resolve()}"  # the base policy built once, not again in the job
PLACED = [f"ray.rollout_node_resource={ROLLOUT_NODE}", f"ray.learner_node_resource={LEARNER_NODE}"]


def node_with(cluster, resource: str) -> str:
    """The id of the node started with the custom resource `resource`."""
    nodes = list_nodes(address=cluster.nodes.dashboard_url, detail=True)
    (node,) = [n for n in nodes if resource in n.resources_total and n.state == "ALIVE"]
    return node.node_id


def test_relative_output_dir_in_a_job_is_refused_with_what_to_give(two_node_cluster):
    job = two_node_cluster.run_job(["+experiment=smoke", "ray.address=auto", "run_name=job-relative"])
    assert job.status == "FAILED"
    assert "output_dir='runs' and cache_dir='.cache': relative" in job.logs and "working_dir_files" in job.logs
    assert "output_dir=$PWD/runs cache_dir=$PWD/.cache" in job.logs


@pytest.fixture(scope="module")
def smoke_job(two_node_cluster, tmp_path_factory):
    """The smoke experiment submitted as a job, placed on the two worker nodes: its run folder and how it ended."""
    out = tmp_path_factory.mktemp("job") / "runs"
    job = two_node_cluster.run_job(
        ["+experiment=smoke", "ray.address=auto", *PLACED, f"output_dir={out}", CACHE, "run_name=job-smoke"]
    )
    return out / "job-smoke", job


def test_smoke_job_on_two_nodes_lands_its_outputs_where_asked(two_node_cluster, smoke_job):
    run_dir, job = smoke_job
    assert job.status == "SUCCEEDED", job.logs[-3000:]
    assert not job.beyond_loopback, f"listening beyond loopback: {job.beyond_loopback}"
    assert f"outputs: {run_dir}/" in job.logs
    assert f"output folder {run_dir / 'checkpoints'} is shared by nodes" in job.logs
    assert f"model {CACHE.removeprefix('cache_dir=')}/arithmetic/base-policy" in job.logs
    assert "probe at step" not in job.logs  # the base policy was not built again

    assert [m.step for m in load_run(run_dir).steps] == [0, 1, 2]
    assert (run_dir / "checkpoints" / "step_3" / "policy" / WEIGHTS_FILE).is_file()
    assert (run_dir / "summary.json").is_file() and (run_dir / "report.html").is_file()

    actors = list_actors(address=two_node_cluster.nodes.dashboard_url, detail=True, limit=1000)
    placed = {a.name: a.node_id for a in actors if a.job_id == job.job_id and a.name.startswith("e3/")}
    rollout_node, learner_node = node_with(two_node_cluster, ROLLOUT_NODE), node_with(two_node_cluster, LEARNER_NODE)
    assert placed["e3/rollout-0"] == rollout_node and placed["e3/learner-0"] == learner_node
    assert placed["e3/scheduler"] not in {rollout_node, learner_node}  # on the head, with the job's driver


def test_lost_learner_node_heals_on_its_replacement_and_ends_as_the_uninterrupted_job(
    two_node_cluster, smoke_job, tmp_path
):
    out = tmp_path / "runs"
    first_checkpoint = out / "job-healed" / "checkpoints" / "step_1"
    lost = []

    def lose_the_learner_node_after_the_first_checkpoint():
        if not lost and first_checkpoint.is_dir():
            two_node_cluster.nodes.kill_node(1)  # the learner's node, every process of it, with SIGKILL
            lost.append(True)
            two_node_cluster.add_learner_node()  # a machine comes back; the rebuilt learner lands on it

    job = two_node_cluster.run_job(
        [
            "+experiment=smoke",
            "ray.address=auto",
            *PLACED,
            f"output_dir={out}",
            CACHE,
            "run_name=job-healed",
            "train.checkpoint_every=1",
            "train.max_failures=1",
        ],
        meanwhile=lose_the_learner_node_after_the_first_checkpoint,
    )
    assert lost, "the learner's node was never lost"
    assert job.status == "SUCCEEDED", job.logs[-3000:]
    assert "recovery 1 of 1 (train.max_failures)" in job.logs and not job.beyond_loopback
    summary = json.loads((out / "job-healed" / "summary.json").read_text())
    assert summary["recoveries"] == 1 and "step_" in summary["recovery_log"][0]["resumed_from"]
    assert_same_run(smoke_job[0], out / "job-healed")
    wait_for_nodes(two_node_cluster.nodes, 3)


def test_checkpoint_folder_not_shared_with_the_learner_node_is_refused(two_node_cluster):
    if not two_node_cluster.private_folder:
        pytest.skip("this host allows no private mount (unshare --mount), so every node shares every folder")
    out = two_node_cluster.node_local
    job = two_node_cluster.run_job(
        ["+experiment=smoke", "ray.address=auto", *PLACED, f"output_dir={out}", CACHE, "run_name=job-unshared"]
    )
    assert job.status == "FAILED"
    folder = out / "job-unshared" / "checkpoints"
    assert f"the output folder {folder} is not one folder shared by the run's nodes" in job.logs, job.logs[-3000:]
    learner_node = node_with(two_node_cluster, LEARNER_NODE)
    assert f"{learner_node[:12]} (127.0.0.1, learner)" in job.logs and "(127.0.0.1, driver and scheduler)" in job.logs
