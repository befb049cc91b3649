"""The scheduler in-process with fakes of the parts `cluster/` hands it (no Ray, no model): the order of its
phases, the stamps on what it sends, the temperature it broadcasts, its records and a checkpoint round trip."""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest

from actors.scheduler import Scheduler, StepPlan
from core.config import BudgetConfig, RewardConfig, TemperatureConfig
from core.difficulty import DifficultyTable
from core.messages import (
    Completion,
    LearnerResult,
    RewardResult,
    Rollout,
    RolloutRequest,
    ScoredRollouts,
    TemperatureUpdate,
    TrainBatch,
)
from core.step_record import StepRecord
from tasks.dataset import ChatMessage, Question
from tasks.prepare import Split

QUESTIONS = 8
PER_STEP = 4


@dataclass
class Calls:
    """Every call the fakes received, in order, as (part, method, detail)."""

    log: list[tuple[str, str, Any]] = field(default_factory=list)

    def methods(self) -> list[str]:
        return [f"{part}.{method}" for part, method, _ in self.log]


class FakePool:
    """Question i's sample j is right when j < i % 3 (so questions differ in difficulty); greedy answers are right."""

    def __init__(self, calls: Calls) -> None:
        self.calls, self.temperature, self.version = calls, 1.0, 0

    def generate(self, requests: list[RolloutRequest]) -> list[Rollout]:
        self.calls.log.append(("pool", "generate", [r.num_samples for r in requests]))
        return [
            Rollout(
                r.question_id,
                r.step,
                r.prompt_token_ids,
                tuple(
                    Completion((7, 8), (-0.1, -0.2), "right" if j < int(r.question_id[1:]) % 3 else "wrong", "stop")
                    for j in range(r.num_samples)
                ),  # fmt: skip
                temperature=self.temperature,
                weights_version=self.version,
            )
            for r in requests
        ]

    def generate_greedy(self, prompts: list[list[int]], max_new_tokens: int) -> list[Completion]:
        self.calls.log.append(("pool", "generate_greedy", len(prompts)))
        return [Completion((7,), (-0.1,), "right", "stop") for _ in prompts]

    def load_weights(self, state_dict_ref: Any, version: int) -> None:
        self.calls.log.append(("pool", "load_weights", (state_dict_ref, version)))
        self.version = version

    def set_temperature(self, update: TemperatureUpdate) -> None:
        self.calls.log.append(("pool", "set_temperature", update))
        self.temperature = update.temperature


class FakeLearner:
    """Reports a falling entropy; `save` writes the version, `load` reads it back."""

    def __init__(self, calls: Calls) -> None:
        self.calls, self.trained = calls, 0

    def train(self, batch: TrainBatch, weights_version: int) -> LearnerResult:
        self.calls.log.append(("learner", "train", (batch.num_samples, weights_version)))
        self.trained += 1
        return LearnerResult(weights_version + 1, entropy=1.0 / (1 + self.trained), metrics={"loss": 0.5})

    def state_dict_ref(self) -> str:
        return f"weights-after-{self.trained}"

    def save(self, path: str) -> None:
        Path(path).mkdir(parents=True)
        (Path(path) / "trained").write_text(str(self.trained))

    def load(self, path: str) -> None:
        self.trained = int((Path(path) / "trained").read_text())


class FakeScorer:
    def __init__(self, calls: Calls) -> None:
        self.calls = calls

    def score(self, rollouts: list[Rollout], ground_truths: list[str]) -> list[ScoredRollouts]:
        self.calls.log.append(("scorer", "score", len(rollouts)))
        return [
            ScoredRollouts(r, tuple(float(c.text == "right") for c in r.completions),
                           tuple(c.text == "right" for c in r.completions))
            for r in rollouts
        ]  # fmt: skip

    def score_texts(self, texts: list[str], ground_truths: list[str]) -> list[RewardResult]:
        return [RewardResult(float(t == "right"), t == "right") for t in texts]


class FakeRunLog:
    def __init__(self) -> None:
        self.records: list[StepRecord] = []
        self.epochs: list[tuple[int, int, list[int]]] = []

    def log_step(self, record: StepRecord) -> None:
        self.records.append(record)

    def log_epoch(self, epoch: int, step: int, table: DifficultyTable, records: list[StepRecord]) -> None:
        self.epochs.append((epoch, step, [r.step for r in records]))

    def rewind(self, step: int) -> list[StepRecord]:
        self.records = [r for r in self.records if r.step < step]
        return self.records

    def log_summary(self, summary: dict[str, Any]) -> None: ...
    def close(self) -> None: ...


def split(n: int = QUESTIONS) -> Split:
    questions = [Question(f"q{i}", (ChatMessage("user", f"q{i}"),), "right", "fake") for i in range(n)]
    return Split(questions, [[1, 2 + i] for i in range(n)])


def build(tmp_path: Path, checkpoint_every: int = 0) -> tuple[Scheduler, Calls, FakeRunLog]:
    calls, run_log = Calls(), FakeRunLog()
    plan = StepPlan(
        questions_per_step=PER_STEP, total_steps=6, max_new_tokens=4, seed=3, pad_token_id=0, vocab_size=50,
        checkpoint_dir=str(tmp_path / "checkpoints"), checkpoint_every=checkpoint_every, heldout_every=2,
    )  # fmt: skip
    scheduler = Scheduler(
        train=split(),
        plan=plan,
        budget=BudgetConfig(n=4, n_low=2, n_high=6, n_update=2),
        temperature=TemperatureConfig(),
        reward=RewardConfig(),
        rollout_pool=FakePool(calls),
        learner_group=FakeLearner(calls),
        scorer=FakeScorer(calls),
        heldout=split(2),
        run_log=run_log,
    )
    return scheduler, calls, run_log


def test_a_step_runs_its_phases_in_order_and_stamps_what_it_sends(tmp_path):
    scheduler, calls, run_log = build(tmp_path)
    record = scheduler.step()

    assert calls.methods() == [
        "pool.generate",
        "scorer.score",
        "learner.train",
        "pool.load_weights",
        "pool.set_temperature",
    ]
    assert calls.log[2][2] == (4 * PER_STEP, 0)  # n * B samples, trained from weights version 0
    assert calls.log[3][2] == ("weights-after-1", 1)  # the learner's new weights, stamped with the new version
    update = calls.log[4][2]
    assert update == TemperatureUpdate(record.next_temperature, step=0)
    phases = ["sample", "allocate", "generate", "score", "update_table", "build_batch", "train", "sync", "temperature",
              "epoch_end"]  # fmt: skip
    assert list(record.step_phases) == phases and record.step_seconds >= sum(record.step_phases.values())
    assert record.weights_version == 1 and record.rollouts_total == 4 * PER_STEP
    assert record.entropy == 0.5 and record.learner == {"loss": 0.5}
    assert record.target_entropy is None  # the controller fixes its target from this first step's entropy
    assert run_log.records == [record]


def test_records_stamp_the_temperature_sampled_and_the_bounds_allocated_within(tmp_path):
    scheduler, calls, run_log = build(tmp_path)
    records = [scheduler.step() for _ in range(4)]  # two epochs of two steps

    for previous, current in pairwise(records):
        assert current.temperature == previous.next_temperature  # sampled with what the controller sent last
    assert [(r.n_min, r.n_max) for r in records] == [(4, 4), (4, 4), (2, 6), (2, 6)]  # widened after step 1
    assert all(r.n_min <= r.rollouts_min <= r.rollouts_max <= r.n_max for r in records)
    assert run_log.epochs == [(0, 1, [0, 1]), (1, 3, [2, 3])]
    # held-out greedy accuracy after every 2nd step, timed outside the step
    assert [bool(r.heldout) for r in records] == [False, True, False, True]
    assert records[1].heldout_accuracy == 1.0 and "heldout" in records[1].timing
    assert "heldout" not in records[1].step_phases
    assert calls.methods().count("pool.generate_greedy") == 2


def test_a_checkpoint_restores_into_a_fresh_scheduler_and_pushes_weights_and_temperature(tmp_path):
    scheduler, _, _ = build(tmp_path, checkpoint_every=2)
    scheduler.step(), scheduler.step()
    saved = scheduler.state_dict()
    scheduler.step()
    restored, calls, run_log = build(tmp_path)
    assert restored.restore(str(tmp_path / "checkpoints" / "step_2")) == 2

    assert restored.state_dict() == saved and restored.step_count == 2 and restored.weights_version == 2
    assert calls.methods() == ["pool.load_weights", "pool.set_temperature"]
    assert calls.log[0][2] == ("weights-after-2", 2)
    assert calls.log[1][2].temperature == restored.controller.temperature
    again = restored.step()  # step 2 again, as the uninterrupted scheduler ran it
    assert again.step == 2 and again.question_ids == scheduler_step_2_ids(tmp_path)


def test_a_run_resumed_mid_epoch_logs_the_whole_epoch_at_its_end(tmp_path):
    scheduler, _, logged = build(tmp_path, checkpoint_every=1)
    scheduler.step()  # step 0 of epoch 0 (two steps an epoch), checkpointed as step_1
    restored, _, run_log = build(tmp_path)
    run_log.records = list(logged.records)  # what metrics.jsonl holds when the run resumes
    restored.restore(str(tmp_path / "checkpoints" / "step_1"))
    restored.step()
    assert run_log.epochs == [(0, 1, [0, 1])]  # the epoch's views see step 0, logged before the resume


def scheduler_step_2_ids(tmp_path: Path) -> tuple[str, ...]:
    """The questions of step 2 in an uninterrupted run."""
    straight, _, _ = build(tmp_path / "straight")
    return [straight.step() for _ in range(3)][2].question_ids


def test_a_checkpoint_of_other_questions_is_refused(tmp_path):
    scheduler, _, _ = build(tmp_path, checkpoint_every=1)
    scheduler.step()
    other = Scheduler(
        train=split(QUESTIONS + 1),
        plan=scheduler.plan,
        budget=BudgetConfig(n=4, n_low=2, n_high=6, n_update=2),
        temperature=TemperatureConfig(),
        reward=RewardConfig(),
        rollout_pool=FakePool(Calls()),
        learner_group=FakeLearner(Calls()),
        scorer=FakeScorer(Calls()),
    )
    with pytest.raises(ValueError, match="built for other questions"):
        other.restore(str(tmp_path / "checkpoints" / "step_1"))
    assert other.step_count == 0  # nothing was loaded
