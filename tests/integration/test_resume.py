"""Exact resume: a run stopped at a checkpoint and resumed continues as if it had never stopped; a checkpoint
whose save was cut short is never taken for the latest; a run whose learner rank is killed heals itself
(`train.max_failures`) and ends as the uninterrupted run does."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import threading
import time

import pytest

import launch
from actors.scheduler import latest_checkpoint
from reporting.report import load_run
from tests.support.config import run_config
from tests.support.records import assert_same_run

COMMON = ["train.max_steps=4", "train.checkpoint_every=2", "eval.heldout_samples=0", "data.valid_size=4"]


def steps_of(run_dir):
    return load_run(run_dir).steps


@pytest.fixture(scope="module")
def straight(embedded_task, ray_cluster, tmp_path_factory):
    """The uninterrupted run that resumed and healed runs must reproduce: its folder and its summary."""
    out = tmp_path_factory.mktemp("straight")
    summary = launch.train(run_config(out, *COMMON, "run_name=straight"))
    return out / "straight", summary


def assert_same_steps(straight_dir, other_dir):
    """Both runs logged steps 0-3 alike and ended with the same difficulty table."""
    assert [m.step for m in steps_of(other_dir)] == [0, 1, 2, 3]
    assert_same_run(straight_dir, other_dir)


def test_resumed_run_equals_uninterrupted_run(straight, tmp_path, caplog):
    first = launch.train(run_config(tmp_path, *COMMON, "run_name=resumed", "train.max_steps=2"))
    stopped = tmp_path / "resumed"
    # what a save killed half-way leaves behind must be ignored
    shutil.copytree(stopped / "checkpoints" / "step_2", stopped / "checkpoints" / ".step_3.partial")
    assert latest_checkpoint(stopped / "checkpoints").name == "step_2"
    # the first run persisted its before-training evaluation; mark it so that only a read of the file can give it
    persisted = json.loads((stopped / launch.HELDOUT_BEFORE).read_text())
    assert persisted == first["heldout_before"] and 0.0 <= persisted["accuracy"] <= 1.0
    marked = {**persisted, "accuracy/marker": 0.5}
    (stopped / launch.HELDOUT_BEFORE).write_text(json.dumps(marked))
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="e3"):
        resumed_summary = launch.train(run_config(tmp_path, *COMMON, "run_name=resumed", "resume=true"))

    # the resumed run reports the first run's base-policy accuracy, not its checkpoint's, and evaluated no "before"
    assert resumed_summary["heldout_before"] == marked
    assert json.loads((stopped / "summary.json").read_text())["heldout_before"] == marked
    messages = [record.getMessage() for record in caplog.records if record.name == "e3"]
    assert any("kept from" in m for m in messages) and "held-out evaluation before training" not in messages

    assert_same_steps(straight[0], stopped)


AHEAD = ["train.max_staleness=1", "learner.off_policy_correction=icepop"]


def test_resumed_run_with_generation_ahead_equals_uninterrupted_run(embedded_task, ray_cluster, tmp_path):
    """One step off: the checkpoint at step 2 holds step 2's batch, issued with version 1; the resumed run
    generates it again with those weights and that temperature, so every step equals the uninterrupted run's."""
    launch.train(run_config(tmp_path, *COMMON, *AHEAD, "run_name=straight-ahead"))
    launch.train(run_config(tmp_path, *COMMON, *AHEAD, "run_name=resumed-ahead", "train.max_steps=2"))
    stopped = tmp_path / "resumed-ahead"
    saved = json.loads((stopped / "checkpoints" / "step_2" / "scheduler.json").read_text())
    assert [(b["step"], b["version"]) for b in saved["pipeline"]] == [(2, 1)]
    assert (stopped / "checkpoints" / "step_2" / "rollout_weights" / "v1" / "model.safetensors").is_file()
    launch.train(run_config(tmp_path, *COMMON, *AHEAD, "run_name=resumed-ahead", "resume=true"))

    straight, resumed = steps_of(tmp_path / "straight-ahead"), steps_of(stopped)
    assert [m.step for m in resumed] == [0, 1, 2, 3]
    assert [m.staleness for m in straight] == [(32,), (0, 32), (0, 32), (0, 32)]
    for a, b in zip(straight, resumed, strict=True):
        assert a.question_ids == b.question_ids and a.rollouts_per_question == b.rollouts_per_question
        assert a.temperature == pytest.approx(b.temperature, abs=1e-9)
        assert a.staleness == b.staleness and a.weights_version == b.weights_version
        assert a.entropy == pytest.approx(b.entropy, rel=1e-4)
        assert a.reward_mean == pytest.approx(b.reward_mean, abs=1e-6)
        assert a.learner["is_ratio_mean"] == pytest.approx(b.learner["is_ratio_mean"], rel=1e-4)


def test_resume_without_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(launch.ConfigError, match="holds no checkpoint"):
        launch.prepare_run_dir(run_config(tmp_path, "run_name=never-ran", "resume=true"))


def test_learner_rank_death_names_last_checkpoint_and_resume_command(embedded_task, ray_cluster, tmp_path, caplog):
    cfg = run_config(
        tmp_path, *COMMON, "run_name=doomed", "train.checkpoint_every=1", "train.max_steps=40", "train.epochs=20"
    )
    first_checkpoint = tmp_path / "doomed" / "checkpoints" / "step_1"

    def kill_learner_after_first_checkpoint():
        deadline = time.monotonic() + 600
        while not first_checkpoint.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        ray_cluster.kill(ray_cluster.get_actor("e3/learner-0"), no_restart=True)

    killer = threading.Thread(target=kill_learner_after_first_checkpoint, daemon=True)
    killer.start()
    with pytest.raises(ray_cluster.exceptions.RayError):
        launch.train(cfg)
    killer.join(timeout=60)
    assert "last good checkpoint" in caplog.text and "run_name=doomed resume=true" in caplog.text
    named = latest_checkpoint(tmp_path / "doomed" / "checkpoints")
    assert named is not None and str(named) in caplog.text


@pytest.mark.parametrize("placement", ["split", "colocated"])
def test_killed_learner_rank_heals_and_ends_as_the_uninterrupted_run(
    placement, straight, ray_cluster, tmp_path, caplog
):
    """A learner rank's process killed (colocated: the process that also holds the engine, a lost learner rank all
    the same) heals: the run rebuilds its actors, resumes from its last checkpoint and ends as the uninterrupted
    (split) run does."""
    cfg = run_config(
        tmp_path, *COMMON, "run_name=healed", "train.checkpoint_every=1", "train.max_failures=2",
        f"rollout.placement={placement}",
    )  # fmt: skip
    first_checkpoint = tmp_path / "healed" / "checkpoints" / "step_1"
    killed: list[int] = []

    def kill_learner_process_after_first_checkpoint():
        deadline = time.monotonic() + 600
        while not first_checkpoint.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        learner = ray_cluster.get_actor("e3/learner-0")
        pid = ray_cluster.get(learner.__ray_call__.remote(lambda _: os.getpid()))
        os.kill(pid, signal.SIGKILL)  # the process dies as on a crash or an OOM kill, not by ray.kill
        killed.append(pid)

    killer = threading.Thread(target=kill_learner_process_after_first_checkpoint, daemon=True)
    killer.start()
    with caplog.at_level(logging.INFO, logger="e3"):
        summary = launch.train(cfg)
    killer.join(timeout=60)

    assert killed, "the learner rank was never killed"
    assert summary["recoveries"] == 1 and summary["recovery_log"][0]["resumed_from"].startswith(str(tmp_path))
    assert json.loads((tmp_path / "healed" / "summary.json").read_text())["recoveries"] == 1
    assert "recovery 1 of 2 (train.max_failures)" in caplog.text
    assert_same_steps(straight[0], tmp_path / "healed")
    assert summary["heldout_after"] == pytest.approx(straight[1]["heldout_after"], abs=1e-9)
    assert summary["heldout_before"] == straight[1]["heldout_before"]


def test_only_a_lost_process_or_node_counts_as_a_failure_to_heal_from():
    from ray.exceptions import ActorDiedError, NodeDiedError, RayTaskError

    from cluster.recovery import lost_process

    died = ActorDiedError()
    in_scheduler = RayTaskError("Scheduler.step", "traceback", died)  # a rank died under the scheduler's call
    bug = RayTaskError("Scheduler.step", "traceback", ValueError("a bug"))
    assert lost_process(died) and lost_process(in_scheduler) and lost_process(NodeDiedError("node gone"))
    assert not lost_process(bug) and not lost_process(ValueError("a bug"))
