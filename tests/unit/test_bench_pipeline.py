"""bench.pipeline's arithmetic: the timing ratios, the quality means and the targets, from made-up runs."""

from __future__ import annotations

import os

import pytest

from bench.pipeline import markdown, pin_once, summarize


def made_up() -> dict:
    timings = {
        "sync": {"step_s": 3.0, "generate_phase_s": 1.6, "train_s": 1.2, "wait_ahead_s": 0.0, "steps": 9},
        "async": {"step_s": 1.7, "generate_phase_s": 0.1, "train_s": 1.3, "wait_ahead_s": 0.3, "steps": 9},
    }
    quality = {
        mode: [
            {"seed": s, "heldout_greedy_accuracy": acc + 0.002 * s, "all_wrong_last_epoch": 0.2,
             "entropy_last_epoch": 0.5, "entropy_off_target_last_epoch": off,
             "entropy_mean_off_target_last_epoch": off / 5, "wall_s": 100.0}
            for s in (0, 1)
        ]
        for mode, acc, off in (("sync", 0.72, 0.03), ("async", 0.715, 0.15))
    }  # fmt: skip
    return summarize(timings, quality)


def test_summary_takes_the_hidden_generation_time_from_the_synchronous_run():
    results = made_up()
    assert results["async"]["generate_s"] == results["sync"]["generate_s"] == 1.6
    assert results["sync"]["step_over_max_generate_train"] == pytest.approx(3.0 / 1.6)
    assert results["async"]["step_over_max_generate_train"] == pytest.approx(1.7 / 1.6)
    assert results["async"]["generate_wait_s"] == pytest.approx(0.4)
    assert results["speedup"] == pytest.approx(3.0 / 1.7)
    assert results["quality"]["async"]["heldout_greedy_accuracy"] == pytest.approx(0.716)
    assert len(results["quality"]["sync"]["per_seed"]) == 2
    assert results["targets"] == {
        "step_within_1.1x_of_max": True,
        "speedup_at_least_1.3x": True,
        "accuracy_within_0.01": True,
        "entropy_within_10pct_of_target": False,  # per step, 15% off
        "mean_entropy_within_10pct_of_target": True,  # the epoch's mean, 3% off
    }


def test_markdown_names_the_command_and_the_pinning():
    results = {**made_up(), "seeds": [0, 1], "machine": "some CPU", "date": "today"}
    text = markdown(results, "python -m bench.pipeline")
    assert "python -m bench.pipeline" in text and "pinned to CPU 0" in text and "1.76x" in text


def test_pinning_touches_only_actor_processes():
    before = os.sched_getaffinity(0)
    assert pin_once(os.getpid()) == {}  # no rollout worker or learner under the test process
    assert os.sched_getaffinity(0) == before
