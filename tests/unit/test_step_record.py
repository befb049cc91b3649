"""The step record: the namespaced line it writes, read back exactly; derived values; the phases in order."""

from __future__ import annotations

import json
import math

import pytest

from core.step_record import StepRecord, step_phases
from tests.support.records import step_record

NAMESPACES = ("rollout/", "reward/", "learner/", "budget/", "temperature/", "timing/", "heldout/", "pipeline/")


def full_record() -> StepRecord:
    return step_record(
        7,
        epoch=1,
        end_of_epoch=True,
        question_ids=("a", "b", "c"),
        rollouts_per_question=(2, 6, 4),
        question_ranks=(0.0, 1 / 3, 2 / 3),
        n_min=2,
        n_max=6,
        target_entropy=0.08,
        reward_errors=1,
        learner={"loss": 0.01, "grad_norm": math.inf, "micro_batches": 2.0},
        timing={"step": 2.0, "sample": 0.01, "generate": 1.5, "train": 0.3, "checkpoint": 0.1, "heldout": 0.4},
        heldout={"accuracy": 0.75, "accuracy/arithmetic/L1": 1.0},
        coverage=0.5,
        distinct_correct=1.5,
    )


def test_every_key_but_the_step_identity_is_namespaced():
    line = full_record().to_log()
    identity = {"step", "epoch", "end_of_epoch", "weights_version"}
    assert identity <= line.keys()
    assert all(key.startswith(NAMESPACES) for key in line.keys() - identity), sorted(line)
    assert line["rollout/total"] == 12 and (line["rollout/min"], line["rollout/max"]) == (2, 6)
    assert line["timing/generate_s"] == 1.5 and line["heldout/accuracy/arithmetic/L1"] == 1.0
    assert "learner/entropy" in line and "learner/learner/loss" not in line
    assert line["reward/coverage"] == 0.5 and line["reward/distinct_correct"] == 1.5
    assert "reward/distinct_correct" not in step_record(0).to_log()  # a task without an answer key: no key


def test_a_line_reads_back_as_the_same_record_through_strict_json():
    record = full_record()
    text = json.dumps(record.to_log(), allow_nan=False)  # non-finite floats are written as null
    back = StepRecord.from_log(json.loads(text))
    assert math.isnan(back.learner["grad_norm"])
    assert back == StepRecord(
        **{**record.__dict__, "learner": {**record.learner, "grad_norm": back.learner["grad_norm"]}}
    )
    assert list(back.timing) == list(record.timing)  # the phases keep the order they ran in
    unset = StepRecord.from_log(json.loads(json.dumps(step_record(0).to_log())))
    assert unset.target_entropy is None and unset.heldout == {} and math.isnan(unset.heldout_accuracy)


def test_derived_values():
    record = full_record()
    assert (record.rollouts_total, record.rollouts_min, record.rollouts_max) == (12, 2, 6)
    assert record.tokens_per_s == pytest.approx(80 / 1.5)
    assert record.step_seconds == 2.0 and record.heldout_accuracy == 0.75
    assert list(record.step_phases) == [
        "sample",
        "generate",
        "train",
        "checkpoint",
    ]  # the step and heldout are not in it
    assert math.isnan(step_record(0).step_seconds)


def test_tokens_per_second_are_of_the_engines_generation_when_measured():
    measured = step_record(0, generation_seconds=0.5, timing={"step": 2.0, "generate": 0.1})
    assert measured.tokens_per_s == pytest.approx(80 / 0.5)  # ahead of training: `generate` is only the wait
    line = measured.to_log()
    assert line["rollout/generate_s"] == 0.5 and StepRecord.from_log(line).generation_seconds == 0.5
    unmeasured = step_record(0, timing={"step": 2.0, "generate": 0.1})
    assert unmeasured.tokens_per_s == pytest.approx(80 / 0.1) and unmeasured.to_log()["rollout/generate_s"] is None


def test_phases_are_listed_in_the_order_they_first_ran():
    first = step_record(0, timing={"step": 1.0, "sample": 0.1, "train": 0.5})
    second = step_record(1, timing={"step": 1.0, "sample": 0.1, "generate": 0.2, "train": 0.5, "checkpoint": 0.1})
    assert step_phases([first, second]) == ["sample", "train", "generate", "checkpoint"]


def test_a_line_that_is_not_a_record_names_the_missing_key():
    line = step_record(0).to_log()
    del line["reward/mean"]
    with pytest.raises(ValueError, match=r"not a step record: no 'reward/mean'"):
        StepRecord.from_log(line)


def test_lists_of_different_lengths_are_refused():
    with pytest.raises(ValueError, match="3 questions, 2 counts, 3 ranks"):
        step_record(0, question_ids=("a", "b", "c"), rollouts_per_question=(1, 2), question_ranks=(0.1, 0.2, 0.3))


def test_pipeline_keys_are_written_only_when_generation_ran_ahead():
    synchronous = full_record()
    assert not any(key.startswith("pipeline/") for key in synchronous.to_log())
    ahead = StepRecord(**{**synchronous.__dict__, "staleness": (0, 10, 2), "stale_dropped": 2, "stale_kept": 0})
    line = ahead.to_log()
    assert line["pipeline/staleness"] == [0, 10, 2]
    assert line["pipeline/stale_dropped"] == 2 and line["pipeline/stale_kept"] == 0
    back = StepRecord.from_log(json.loads(json.dumps(line)))
    assert (back.staleness, back.stale_dropped, back.stale_kept) == ((0, 10, 2), 2, 0)
