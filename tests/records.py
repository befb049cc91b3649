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
