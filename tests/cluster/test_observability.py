"""What a user watches, read back: the Prometheus text that a local cluster's node serves with
`ray.include_dashboard=true` carries the run's gauges at the values of the last logged step, and the W&B offline
run holds every step's numbers and the epoch views (difficulty table, rollouts against rank, entropy against
target). The run is `python launch.py` in its own process, which starts its own local cluster; its learner
rank's process is killed once after the first checkpoint, so the run heals itself (`train.max_failures`) by
starting that local cluster afresh, and the gauges it serves afterwards are still the last step's."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request

import psutil
import pytest

from cluster.environment import REPO_ROOT
from reporting.report import load_run
from reporting.run_log import GAUGES
from tests.support.nodes import (
    LOOPBACK,
    free_port,
    listening_addresses,
    node_env,
    process_tree,
    stop_processes,
    survivors,
)
from tests.support.wandb_log import history

READ_BACK = ["e3_step", "e3_temperature", "e3_entropy", "e3_target_entropy", "e3_accuracy", "e3_all_wrong_fraction"]


def scrape(port: int) -> dict[str, float]:
    """The `e3_*` gauges in the Prometheus text served at 127.0.0.1:`port` ({} when it does not answer yet)."""
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    except OSError:
        return {}
    values = {}
    for line in text.splitlines():
        if line.startswith("ray_e3_"):
            values[line.split("{", 1)[0].split(" ", 1)[0].removeprefix("ray_")] = float(line.rsplit(" ", 1)[1])
    return values


def kill_learner(tree: dict[int, float]) -> int:
    """SIGKILL the learner rank's process among `tree` (Ray titles it `ray::Learner...`); return its pid."""
    for pid in tree:
        try:
            proc = psutil.Process(pid)
            if " ".join(proc.cmdline()).startswith("ray::Learner"):
                proc.kill()
                return pid
        except psutil.NoSuchProcess:
            continue
    raise AssertionError("no learner process in the run's process tree")


def test_gauges_and_wandb_views_read_back(embedded_task, tmp_path):
    port = free_port()
    command = [sys.executable, "launch.py", "+experiment=smoke", f"output_dir={tmp_path}", "run_name=watched",
               "ray.include_dashboard=true", f"ray.metrics_export_port={port}", "wandb.mode=offline",
               "train.checkpoint_every=1", "train.max_failures=1", "log.samples_every=1"]  # fmt: skip
    env = {**node_env(), "RAY_metrics_report_interval_ms": "1000"}  # export every second, not every 10
    log_path = tmp_path / "launch.log"
    scrapes, beyond_loopback, seen, killed = [], {}, {}, []
    first_checkpoint = tmp_path / "watched" / "checkpoints" / "step_1"
    with open(log_path, "w") as log:
        run = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 600
        while run.poll() is None and time.monotonic() < deadline:
            tree = process_tree([run.pid])
            seen.update(tree)
            beyond_loopback.update({a: p for a, p in listening_addresses(tree).items() if a[0] not in LOOPBACK})
            if values := scrape(port):
                scrapes.append(values)
            if not killed and first_checkpoint.is_dir():
                killed = [kill_learner(tree)]
            time.sleep(0.5)
    finally:
        if run.poll() is None:  # past the deadline
            stop_processes(process_tree([run.pid]))
        left = survivors(seen)
        stop_processes(seen)  # by pid: whatever of the run's processes outlived it
    output = log_path.read_text()
    assert run.returncode == 0, output[-3000:]
    assert not left, f"processes outlived the run: {left}"
    assert not beyond_loopback, f"listening beyond loopback: {beyond_loopback}"
    assert f"http://127.0.0.1:{port}/metrics" in output
    assert killed and "recovery 1 of 1 (train.max_failures)" in output
    assert json.loads((tmp_path / "watched" / "summary.json").read_text())["recoveries"] == 1

    steps = load_run(tmp_path / "watched").steps
    last = steps[-1]
    # the gauges show the step logged last when they were scraped: the latest scrape matches its step's record.
    # Ray exports them every second (RAY_metrics_report_interval_ms) while the run may end sooner after its
    # last step, so the latest scrape may be one step behind the end of the run.
    assert scrapes, "no scrape of the metrics port answered with e3 gauges"
    latest = max(scrapes, key=lambda values: values.get("e3_step", -1))
    shown = next(m for m in steps if m.step == latest["e3_step"])
    assert shown.step >= last.step - 1, f"the gauges lagged: step {shown.step} of {last.step}"
    for name in READ_BACK:
        assert latest[name] == pytest.approx(GAUGES[name](shown), rel=1e-6), name

    # one offline run per attempt, under the same run id (`wandb sync` joins them): later steps replace earlier
    attempts = sorted((tmp_path / "watched" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(attempts) == 2
    logged = {}
    for log_file in attempts:
        logged.update(history(log_file))
    assert sorted(logged) == [m.step for m in steps]
    assert logged[last.step]["learner/entropy"] == pytest.approx(last.entropy)
    epoch_end = next(m for m in steps if m.end_of_epoch)  # 16 questions, 8 a step: step 1 ends epoch 0
    views = logged[epoch_end.step]
    assert views["epoch/difficulty_table/_type"] == "table-file" and views["epoch/difficulty_table/nrows"] == 16
    assert views["epoch/rollouts_vs_rank_table/nrows"] == sum(len(m.question_ids) for m in steps[: epoch_end.step + 1])
    assert views["epoch/entropy_vs_target_table/_type"] == "table-file"
    assert "epoch/rollouts_hist/_type" in views and views["epoch"] == 0

    # every step logged whole groups, each with as many responses as its question was allocated, once per step
    # whatever the recovery; W&B holds each step's table of them, one row per response
    groups = [json.loads(line) for line in (tmp_path / "watched" / "samples.jsonl").read_text().splitlines()]
    allocated = {m.step: dict(zip(m.question_ids, m.rollouts_per_question, strict=True)) for m in steps}
    assert sorted({g["step"] for g in groups}) == sorted(allocated)
    assert all(len(g["responses"]) == allocated[g["step"]][g["question_id"]] for g in groups)
    assert len({(g["step"], g["question_id"]) for g in groups}) == len(groups)
    for step in allocated:
        rows = sum(len(g["responses"]) for g in groups if g["step"] == step)
        assert logged[step]["samples/_type"] == "table-file" and logged[step]["samples/nrows"] == rows, step
