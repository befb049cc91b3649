"""Step records for tests of the record's consumers (the report, the run log, the benchmarks' summaries)."""

from __future__ import annotations

from typing import Any

from core.step_record import StepRecord


def step_record(step: int = 0, **fields: Any) -> StepRecord:
    """A plausible record of step `step` of a run of two questions with four rollouts each; `fields` override."""
    values: dict[str, Any] = {
        "step": step,
        "epoch": 0,
        "end_of_epoch": False,
        "weights_version": step + 1,
        "question_ids": ("q0", "q1"),
        "rollouts_per_question": (4, 4),
        "generated_tokens": 80,
        "response_length_mean": 10.0,
        "truncated_fraction": 0.0,
        "reward_mean": 0.5,
        "accuracy": 0.5,
        "all_wrong_fraction": 0.0,
        "all_correct_fraction": 0.0,
        "zero_advantage_fraction": 0.25,
        "reward_timeouts": 0,
        "reward_errors": 0,
        "question_ranks": (0.5, 0.5),
        "n_min": 4,
        "n_max": 4,
        "temperature": 1.0,
        "next_temperature": 1.0,
        "temperature_clamped": False,
        "target_entropy": None,
        "entropy": 0.1,
    }
    values.update(fields)
    return StepRecord(**values)


def assert_same_run(expected_dir, run_dir) -> None:
    """The run in `run_dir` logged the steps of the one in `expected_dir`, with the same questions, budgets,
    temperatures, weights versions, entropies (relative 1e-4: kernels round differently after a reload) and rewards,
    and its last checkpoint holds the same difficulty table (exact counts)."""
    import pyarrow.parquet as pq
    import pytest

    from actors.scheduler import latest_checkpoint
    from reporting.report import load_run

    expected, steps = load_run(expected_dir).steps, load_run(run_dir).steps
    assert [m.step for m in steps] == [m.step for m in expected]
    for a, b in zip(expected, steps, strict=True):
        assert a.question_ids == b.question_ids
        assert a.rollouts_per_question == b.rollouts_per_question
        assert a.temperature == pytest.approx(b.temperature, abs=1e-9)
        assert a.weights_version == b.weights_version
        assert a.entropy == pytest.approx(b.entropy, rel=1e-4)
        assert a.reward_mean == pytest.approx(b.reward_mean, abs=1e-6)
    columns = ["question_id", "attempts", "correct"]
    tables = [
        pq.read_table(latest_checkpoint(d / "checkpoints") / "difficulty.parquet") for d in (expected_dir, run_dir)
    ]
    assert tables[0].select(columns).equals(tables[1].select(columns))
