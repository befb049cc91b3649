"""The scheduler in-process with fakes of the parts `cluster/` hands it (no Ray, no model): the order of its
phases, the stamps on what it sends, the temperature it broadcasts, its records and a checkpoint round trip."""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass, field, replace
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
import torch

from actors.scheduler import ROLLOUT_WEIGHTS, Scheduler
from actors.settings import SchedulerSettings
from core.allocators import ALLOCATORS, QuestionStats
from core.config import BudgetConfig, LossAggregation, RewardConfig, TemperatureConfig
from core.difficulty import DifficultyTable
from core.messages import (
    Completion,
    LearnerResult,
    RewardResult,
    Rollout,
    RolloutRequest,
    ScoredRollout,
    TemperatureUpdate,
    TrainBatch,
)
from core.samples import SampleGroup
from core.step_record import StepRecord, generation_seconds
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

    def sync_weights(self, source: FakeLearner, version: int) -> None:
        self.calls.log.append(("pool", "sync_weights", (source.weights_label(), version)))
        self.version = version

    def set_temperature(self, update: TemperatureUpdate) -> None:
        self.calls.log.append(("pool", "set_temperature", update))
        self.temperature = update.temperature


class FakeLearner:
    """Reports a falling entropy; `save` writes the version, `load` reads it back; counts full gathers."""

    def __init__(self, calls: Calls) -> None:
        self.calls, self.trained, self.gathers = calls, 0, []

    def train(self, batch: TrainBatch, weights_version: int) -> LearnerResult:
        self.calls.log.append(("learner", "train", (batch.num_samples, weights_version)))
        self.trained += 1
        return LearnerResult(weights_version + 1, entropy=1.0 / (1 + self.trained), metrics={"loss": 0.5})

    def weights_label(self) -> str:
        """What the fake pools record of the weights they were sent (a broadcast: nothing gathered)."""
        return f"weights-after-{self.trained}"

    def state_dict_ref(self) -> str:
        """A full gather of the policy (what `keep_weights` costs), counted by the version gathered."""
        self.gathers.append(self.trained)
        return self.weights_label()

    def save(self, path: str) -> None:
        Path(path).mkdir(parents=True)
        (Path(path) / "trained").write_text(str(self.trained))

    def load(self, path: str) -> None:
        self.trained = int((Path(path) / "trained").read_text())


class FakeScorer:
    def __init__(self, calls: Calls) -> None:
        self.calls = calls

    def score(self, rollouts: list[Rollout], ground_truths: list[str]) -> list[ScoredRollout]:
        self.calls.log.append(("scorer", "score", len(rollouts)))
        return [
            ScoredRollout(r, tuple(float(c.text == "right") for c in r.completions),
                           tuple(c.text == "right" for c in r.completions))
            for r in rollouts
        ]  # fmt: skip

    def score_texts(self, texts: list[str], ground_truths: list[str]) -> list[RewardResult]:
        return [RewardResult(float(t == "right"), t == "right") for t in texts]


class FakeRunLog:
    def __init__(self) -> None:
        self.records: list[StepRecord] = []
        self.epochs: list[tuple[int, int, list[int]]] = []
        self.samples: dict[int, list[SampleGroup]] = {}

    def log_step(self, record: StepRecord) -> None:
        self.records.append(record)

    def log_samples(self, step: int, groups: list[SampleGroup]) -> None:
        self.samples[step] = groups

    def log_epoch(self, epoch: int, step: int, table: DifficultyTable, records: list[StepRecord]) -> None:
        self.epochs.append((epoch, step, [r.step for r in records]))

    def rewind(self, step: int) -> list[StepRecord]:
        """Forget what was logged at steps >= `step` (the real run log rewrites metrics.jsonl, overwrites an
        epoch's table files and sends W&B no step twice)."""
        self.records = [r for r in self.records if r.step < step]
        self.epochs = [e for e in self.epochs if e[1] < step]
        return self.records

    def log_summary(self, summary: dict[str, Any]) -> None: ...
    def close(self) -> None: ...


def split(n: int = QUESTIONS) -> Split:
    questions = [Question(f"q{i}", (ChatMessage("user", f"q{i}"),), "right", "fake") for i in range(n)]
    return Split(questions, [[1, 2 + i] for i in range(n)])


def build(
    tmp_path: Path,
    checkpoint_every: int = 0,
    budget: BudgetConfig | None = None,
    pool_class: type = FakePool,
    learner_class: type = FakeLearner,
    **plan_fields: Any,
) -> tuple[Scheduler, Calls, FakeRunLog]:
    calls, run_log = Calls(), FakeRunLog()
    settings = SchedulerSettings(
        questions_per_step=PER_STEP, total_steps=6, max_new_tokens=4, seed=3, pad_token_id=0, vocab_size=50,
        checkpoint_dir=str(tmp_path / "checkpoints"), checkpoint_every=checkpoint_every, heldout_every=2,
        **plan_fields,
    )  # fmt: skip
    scheduler = Scheduler(
        train=split(),
        settings=settings,
        budget=budget or BudgetConfig(n=4, n_low=2, n_high=6, n_update=2),
        temperature=TemperatureConfig(),
        reward=RewardConfig(),
        rollout_pool=pool_class(calls),
        learner_group=learner_class(calls),
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
        "pool.sync_weights",
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


def test_heldout_evaluation_samples_pass_at_every_configured_k_and_restores_the_temperature(tmp_path):
    scheduler, calls, _ = build(tmp_path, heldout_samples=4, heldout_ks=(1, 2, 4))
    result = scheduler.evaluate()

    # held-out q0 gets no right sample of 4, q1 one: pass@k of q1 = 1 - C(3, k) / C(4, k) = 1/4, 1/2, 1
    assert result["accuracy"] == 1.0  # greedy answers are right
    assert [result[f"sampled/all/pass@{k}"] for k in (1, 2, 4)] == [0.125, 0.25, 0.5]
    assert "sampled/all/pass@8" not in result
    updates = [detail for part, method, detail in calls.log if method == "set_temperature"]
    assert [u.temperature for u in updates] == [1.0, scheduler.controller.temperature]
    assert scheduler.evaluate(sample=False) == {"accuracy": 1.0, "accuracy/fake": 1.0}  # eval.sample_before=false


def test_after_training_pass_at_k_is_also_measured_at_each_asked_temperature(tmp_path):
    scheduler, calls, _ = build(tmp_path, heldout_samples=4, heldout_ks=(1, 4), after_temperature_samples=2)
    result = scheduler.evaluate(temperatures=(0.6, 1.3))

    # 2 answers a question at the extra temperatures: pass@1 only (q1's first sample is right: 1/2 over q0, q1)
    assert [result[f"sampled_t{t}/all/pass@1"] for t in (0.6, 1.3)] == [0.25, 0.25]
    assert "sampled_t0.6/all/pass@4" not in result and result["sampled/all/pass@4"] == 0.5
    generated = [detail for part, method, detail in calls.log if method == "generate"]
    assert [counts[0] for counts in generated] == [4, 2, 2]
    updates = [detail.temperature for part, method, detail in calls.log if method == "set_temperature"]
    restore = scheduler.controller.temperature
    assert updates == [1.0, restore, 0.6, restore, 1.3, restore]  # each sampled at its own, then restored


def test_every_kth_step_logs_whole_groups_with_what_each_response_was_sampled_with(tmp_path):
    scheduler, _, run_log = build(tmp_path, samples_every=2, sample_groups=3, sample_chars=3)
    records = [scheduler.step() for _ in range(3)]

    assert sorted(run_log.samples) == [0, 2]
    for step, groups in run_log.samples.items():
        record = records[step]
        per_question = dict(zip(record.question_ids, record.rollouts_per_question, strict=True))
        assert [g.pick for g in groups] == ["hardest", "easiest", "most_mixed"]
        assert len({g.question_id for g in groups}) == 3
        for group in groups:
            assert group.rollouts == len(group.responses) == per_question[group.question_id]
            assert group.ground_truth == "right" and group.prompt == group.question_id[:3]
            for response in group.responses:
                assert response.text == response.text[:3] and response.text_chars == 5  # "right" or "wrong", cut
                assert response.correct == (response.reward == 1.0)
                assert (response.temperature, response.staleness) == (record.temperature, 0)
                assert response.weights_version == record.weights_version - 1
            rewards = [r.reward for r in group.responses]
            if len(set(rewards)) == 1:
                assert all(r.advantage == 0 for r in group.responses)  # GRPO: no signal in a uniform group
            else:
                assert all((r.advantage > 0) == r.correct for r in group.responses)


def test_records_carry_coverage_and_with_an_answer_key_distinct_correct_answers(tmp_path):
    scheduler, _, _ = build(tmp_path)
    first, second = scheduler.step(), scheduler.step()

    solvable = lambda ids: sum(int(q[1:]) % 3 > 0 for q in ids)  # noqa: E731  (q0, q3, q6 are never solved)
    assert first.coverage == solvable(first.question_ids) / QUESTIONS
    assert second.coverage == 5 / QUESTIONS  # after the epoch: every question the fake pool can solve
    assert math.isnan(first.distinct_correct)  # no answer key: not counted
    keyed, _, _ = build(tmp_path / "keyed", answer_key_fn="builtins:str")
    assert keyed.step().distinct_correct == 1.0  # every right answer is the same text


def test_a_fresh_run_starts_by_sending_the_initial_temperature(tmp_path):
    calls, run_log = Calls(), FakeRunLog()
    fresh, _, _ = build(tmp_path)
    scheduler = Scheduler(
        train=split(), settings=fresh.settings, budget=fresh.budget_config,
        temperature=TemperatureConfig(initial=0.8), reward=RewardConfig(), rollout_pool=FakePool(calls),
        learner_group=FakeLearner(calls), scorer=FakeScorer(calls), run_log=run_log,
    )  # fmt: skip
    scheduler.start()
    assert calls.log == [("pool", "set_temperature", TemperatureUpdate(0.8, step=0))]


def test_a_checkpoint_restores_into_a_fresh_scheduler_and_pushes_weights_and_temperature(tmp_path):
    scheduler, _, _ = build(tmp_path, checkpoint_every=2)
    scheduler.step(), scheduler.step()
    saved = scheduler.state_dict()
    scheduler.step()
    restored, calls, run_log = build(tmp_path)
    assert restored.restore(str(tmp_path / "checkpoints" / "step_2")) == 2

    assert restored.state_dict() == saved and restored.step_count == 2 and restored.weights_version == 2
    assert calls.methods() == ["pool.sync_weights", "pool.set_temperature"]
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
        settings=scheduler.settings,
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


@pytest.mark.parametrize("allocator", ["e3", "uniform", "informative", "knapsack"])
def test_the_configured_allocator_shares_the_budget_from_the_table(tmp_path, monkeypatch, allocator):
    budget = BudgetConfig(n=4, n_low=2, n_high=6, n_update=2, start_wide=True, allocator=allocator, p_window=3)
    scheduler, _, _ = build(tmp_path, budget=budget)
    scheduler.step(), scheduler.step()  # an epoch: the table has seen every question once and ranked them
    ids = [q.id for q in scheduler.train.questions]
    table = scheduler.table
    before = dict(
        zip(ids, zip(table.counts(ids), table.window_counts(ids), table.ranks(ids), strict=True), strict=True)
    )
    seen = []
    real = ALLOCATORS[allocator]
    monkeypatch.setitem(ALLOCATORS, allocator, lambda *args: seen.append(args) or real(*args))

    record = scheduler.step()

    ((stats, total, n_min, n_max),) = seen
    assert stats == [QuestionStats(*before[q][0], before[q][2], *before[q][1]) for q in record.question_ids]
    assert all(s.window_attempts <= 3 for s in stats)  # budget.p_window: the last 3 outcomes of each question
    assert (total, n_min, n_max) == (4 * PER_STEP, 2, 6)
    assert list(record.rollouts_per_question) == real(stats, total, n_min, n_max)


# -- generation ahead of training (settings.max_staleness >= 1) ------------------------------------------------------


class AheadPool(FakePool):
    """A pool whose generation runs while the learner trains: `submit` captures the weights and temperature the
    workers hold (each worker runs its calls in order), `collect` answers with them. Weights and temperatures
    must never be pushed while a submitted generation is uncollected. A sample's correctness depends on the
    weights it was sampled with and its seed, so that generating with other weights shows in the rewards."""

    def __init__(self, calls: Calls) -> None:
        super().__init__(calls)
        self.weights, self.in_flight, self.kept = "weights-after-0", 0, {}

    def _rollouts(self, requests: list[RolloutRequest], weights: str, version: int, temperature: float) -> list:
        trained = int(weights.rsplit("-", 1)[1])
        return [
            Rollout(r.question_id, r.step, r.prompt_token_ids,
                    tuple(Completion((7, 8), (-0.1, -0.2), "right" if (r.seed + j + trained) % 3 else "wrong", "stop")
                          for j in range(r.num_samples)),
                    temperature=temperature, weights_version=version)
            for r in requests
        ]  # fmt: skip

    def generate(self, requests: list[RolloutRequest]) -> list[Rollout]:
        self.calls.log.append(("pool", "generate", [r.step for r in requests]))
        return self._rollouts(requests, self.weights, self.version, self.temperature)

    def submit(self, requests: list[RolloutRequest]) -> tuple:
        (step,) = {r.step for r in requests}
        self.calls.log.append(("pool", "submit", (step, self.version, self.temperature)))
        self.in_flight += 1
        return (requests, self.weights, self.version, self.temperature)

    def collect(self, pending: tuple) -> list[Rollout]:
        requests, weights, version, temperature = pending
        self.calls.log.append(("pool", "collect", requests[0].step))
        self.in_flight -= 1
        return self._rollouts(requests, weights, version, temperature)

    def sync_weights(self, source: FakeLearner, version: int) -> None:
        assert self.in_flight == 0, "weights pushed into a generation batch"
        super().sync_weights(source, version)
        self.weights = source.weights_label()

    def track_source(self, source: FakeLearner, version: int) -> None:
        assert version == source.trained, "the learner holds another version"

    def set_temperature(self, update: TemperatureUpdate) -> None:
        assert self.in_flight == 0, "temperature changed under a generation batch"
        super().set_temperature(update)

    def keep_weights(self, source: FakeLearner, version: int) -> None:
        self.calls.log.append(("pool", "keep_weights", version))
        self.kept[version] = source.state_dict_ref()

    def release_weights(self, below: int) -> None:
        self.kept = {v: w for v, w in self.kept.items() if v >= below}

    def save_weights(self, version: int, path: str) -> None:
        Path(path).mkdir(parents=True)
        (Path(path) / "model.safetensors").write_text(self.kept[version])

    def load_policy(self, path: str, version: int) -> None:
        if version < self.version:  # as a real worker does
            raise ValueError(f"weights version {version} is older than the loaded {self.version}")
        self.calls.log.append(("pool", "load_policy", version))
        self.weights, self.version = (Path(path) / "model.safetensors").read_text(), version
        self.kept[version] = self.weights


def build_ahead(
    tmp_path: Path, max_staleness: int = 1, stale_policy: str = "wait", total_steps: int = 6, checkpoint_every: int = 0
) -> tuple[Scheduler, Calls, FakeRunLog]:
    calls, run_log = Calls(), FakeRunLog()
    settings = SchedulerSettings(
        questions_per_step=PER_STEP, total_steps=total_steps, max_new_tokens=4, seed=3, pad_token_id=0,
        vocab_size=50, checkpoint_dir=str(tmp_path / "checkpoints"), checkpoint_every=checkpoint_every,
        max_staleness=max_staleness, stale_policy=stale_policy,
    )  # fmt: skip
    scheduler = Scheduler(
        train=split(), settings=settings, budget=BudgetConfig(n=4, n_low=2, n_high=6, n_update=2),
        temperature=TemperatureConfig(), reward=RewardConfig(), rollout_pool=AheadPool(calls),
        learner_group=FakeLearner(calls), scorer=FakeScorer(calls), run_log=run_log,
    )  # fmt: skip
    return scheduler, calls, run_log


def test_one_step_off_generates_the_next_batch_while_the_learner_trains(tmp_path):
    scheduler, calls, _ = build_ahead(tmp_path, max_staleness=1)
    first = scheduler.step()
    assert calls.methods() == [
        "pool.submit", "pool.submit",  # steps 0 and 1, both with the base weights (version 0)
        "pool.collect", "scorer.score", "learner.train",  # no checkpoint needs version 0: nothing kept
        "pool.collect",  # step 1's batch generated during the training: collected before the weights move
        "pool.sync_weights", "pool.set_temperature",
    ]  # fmt: skip
    assert [d for _, m, d in calls.log if m == "submit"] == [(0, 0, 1.0), (1, 0, 1.0)]
    calls.log.clear()
    second = scheduler.step()
    assert calls.methods() == [
        "pool.submit",  # step 2, with version 1 and the temperature set after step 0
        "scorer.score", "learner.train", "pool.collect", "pool.sync_weights",
        "pool.set_temperature",
    ]  # fmt: skip
    assert calls.log[0][2] == (2, 1, first.next_temperature)
    assert list(second.step_phases) == ["sample", "allocate", "submit", "generate", "score", "update_table",
                                        "build_batch", "keep_weights", "train", "wait_ahead", "sync", "temperature",
                                        "epoch_end"]  # fmt: skip
    # staleness: step 0 trains on version 0's samples (0 old), step 1 on version 0's while training version 1
    assert first.staleness == (16,) and second.staleness == (0, 16)
    assert first.temperature == second.temperature == 1.0  # both issued before any update


@pytest.mark.parametrize("k", [1, 2])
def test_ahead_the_stamps_temperature_budget_and_ranks_lag_by_k_steps(tmp_path, monkeypatch, k):
    scheduler, _, _ = build_ahead(tmp_path, max_staleness=k)
    observed, seen_when_allocated = [], []
    observe = scheduler.table.observe
    monkeypatch.setattr(
        scheduler.table, "observe", lambda ids, ok, step: observed.append(step) or observe(ids, ok, step)
    )
    allocate = ALLOCATORS["e3"]
    monkeypatch.setitem(ALLOCATORS, "e3", lambda *args: seen_when_allocated.append(len(observed)) or allocate(*args))
    records = [scheduler.step() for _ in range(6)]

    assert observed == [0, 1, 2, 3, 4, 5]  # the table sees results in step order
    # step s's budget came from the table as it was when s was issued: results of steps before s - k
    assert seen_when_allocated == [max(s - k, 0) for s in range(6 + k)]  # the last k: past the run's end
    for r in records:  # every sample at most k versions old; from step k on, exactly k
        assert len(r.staleness) - 1 == min(r.step, k) and sum(r.staleness) == r.rollouts_total
    # a step samples with the temperature set after step s - k - 1 (the first k + 1 with the initial one)
    for r in records:
        assert r.temperature == (1.0 if r.step <= k else records[r.step - k - 1].next_temperature)
    # bounds widen after step 1 (end of epoch 0); steps 2 .. 1 + k were allocated before that
    assert [(r.n_min, r.n_max) for r in records[:4]] == [(4, 4)] * (2 + k) + [(2, 6)] * (2 - k)


def test_a_resumed_run_with_work_in_flight_equals_an_uninterrupted_one(tmp_path):
    straight, _, _ = build_ahead(tmp_path / "straight", max_staleness=1)
    expected = [straight.step() for _ in range(4)]

    first, _, _ = build_ahead(tmp_path / "stopped", max_staleness=1, total_steps=2)  # stops after 2 steps
    first.step(), first.step()
    first.checkpoint()  # as launch.py does at the end: step 2's batch is queued, issued with version 1
    saved = json.loads((tmp_path / "stopped" / "checkpoints" / "step_2" / "scheduler.json").read_text())
    assert [(b["step"], b["version"]) for b in saved["pipeline"]] == [(2, 1)]
    assert (tmp_path / "stopped" / "checkpoints" / "step_2" / ROLLOUT_WEIGHTS / "v1" / "model.safetensors").is_file()

    resumed, calls, _ = build_ahead(tmp_path / "stopped", max_staleness=1)
    assert resumed.restore(str(tmp_path / "stopped" / "checkpoints" / "step_2")) == 2
    assert calls.methods() == ["pool.load_policy", "pool.set_temperature", "pool.submit", "pool.collect",
                               "pool.sync_weights", "pool.set_temperature"]  # fmt: skip
    assert calls.log[0][2] == 1 and calls.log[2][2] == (2, 1, expected[2].temperature)
    again = [resumed.step() for _ in range(2)]
    for a, b in zip(expected[2:], again, strict=True):
        assert (a.step, a.question_ids, a.rollouts_per_question) == (b.step, b.question_ids, b.rollouts_per_question)
        assert (a.temperature, a.reward_mean, a.staleness) == (b.temperature, b.reward_mean, b.staleness)
        assert a.entropy == b.entropy


def test_generating_the_queued_batch_with_the_checkpoints_weights_would_show(tmp_path):
    """The fake's rewards depend on the weights, so the exact-resume test above would catch a restore that
    generated the queued batch with the checkpoint's (newer) weights."""
    scheduler, _, _ = build_ahead(tmp_path, max_staleness=1)
    scheduler.step(), scheduler.step()
    (batch,) = scheduler.queue.batches
    pool = scheduler.rollout_pool
    right = pool._rollouts(batch.requests, "weights-after-1", 1, 1.0)
    wrong = pool._rollouts(batch.requests, "weights-after-2", 2, 1.0)
    assert [c.text for r in right for c in r.completions] != [c.text for r in wrong for c in r.completions]


@pytest.mark.parametrize("policy", ["drop", "wait"])
def test_rollouts_older_than_the_bound_are_dropped_and_generated_again_or_kept(tmp_path, policy):
    ahead, _, _ = build_ahead(tmp_path, max_staleness=2, checkpoint_every=2)
    ahead.step(), ahead.step()  # the checkpoint at step 2 queues steps 2 (version 0) and 3 (version 1)
    resumed, calls, _ = build_ahead(tmp_path, max_staleness=1, stale_policy=policy)  # a tighter bound
    resumed.restore(str(tmp_path / "checkpoints" / "step_2"))
    records = [resumed.step() for _ in range(3)]

    stale = records[0]  # step 2 trains version 2 on version 0's samples: 2 old, over the bound of 1 (so is step 3)
    if policy == "drop":
        assert stale.stale_dropped == stale.rollouts_total and stale.stale_kept == 0
        assert stale.staleness == (stale.rollouts_total,)  # generated again with the current weights
        assert ("pool", "generate", [2] * PER_STEP) in calls.log
    else:
        assert stale.stale_kept == stale.rollouts_total and stale.stale_dropped == 0
        assert stale.staleness == (0, 0, stale.rollouts_total)
        assert "pool.generate" not in calls.methods()
    assert records[1].stale_dropped + records[1].stale_kept == records[1].rollouts_total
    assert records[2].staleness == (0, records[2].rollouts_total)  # step 4, issued under the new bound: 1 old


@pytest.mark.parametrize(
    ("k", "every", "gathered"),
    [(1, 0, [5]), (1, 2, [1, 3, 5]), (2, 3, [1, 2, 4, 5])],
    ids=["final-checkpoint-only", "every-2", "two-ahead-every-3"],
)
def test_ahead_the_policy_is_gathered_only_on_steps_whose_checkpoints_need_it(tmp_path, k, every, gathered):
    """No full copy of the policy on a step that neither checkpoints nor loses a worker: the version of step s
    is kept (gathered) only when a checkpoint after steps s .. s + k - 1 queues a batch issued with it, and
    every checkpoint then holds the weights of every queued batch (the last is the driver's, at the run's end)."""
    scheduler, _, _ = build_ahead(tmp_path, max_staleness=k, checkpoint_every=every)
    for _ in range(6):
        scheduler.step()
    scheduler.checkpoint()
    assert scheduler.learner_group.gathers == gathered  # the learner's version when gathered: the step's
    for folder in sorted((tmp_path / "checkpoints").glob("step_*")):
        queued = {b["version"] for b in json.loads((folder / "scheduler.json").read_text())["pipeline"]}
        saved = {int(v.name[1:]) for v in (folder / ROLLOUT_WEIGHTS).iterdir()}
        assert saved == queued, folder.name


def test_a_restore_missing_an_older_versions_weights_still_generates_every_queued_batch(tmp_path):
    """Two steps ahead, the checkpoint after step 1 queues batches of versions 0 and 1. Without version 0's
    weights its batch is generated with the checkpoint's (version 2), after version 1's batch: a worker refuses a
    version older than the one it holds."""
    ahead, _, _ = build_ahead(tmp_path, max_staleness=2, checkpoint_every=2)
    ahead.step(), ahead.step()
    folder = tmp_path / "checkpoints" / "step_2"
    shutil.rmtree(folder / ROLLOUT_WEIGHTS / "v0")
    resumed, calls, _ = build_ahead(tmp_path, max_staleness=2)
    assert resumed.restore(str(folder)) == 2
    assert [m for m in calls.methods() if m in ("pool.load_policy", "pool.sync_weights")] == [
        "pool.load_policy", "pool.sync_weights", "pool.sync_weights"
    ]  # fmt: skip
    assert {b.step: {r.weights_version for r in b.rollouts} for b in resumed.queue.batches} == {2: {2}, 3: {1}}


class FailingOnce:
    """Raises `RuntimeError` from the wrapped callable at its `at`-th call (0-based), once."""

    def __init__(self, wrapped, at: int) -> None:
        self.wrapped, self.at, self.calls = wrapped, at, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.calls - 1 == self.at:
            raise RuntimeError("injected failure")
        return self.wrapped(*args, **kwargs)


@pytest.mark.parametrize("where", ["heldout", "checkpoint"])
def test_after_a_failure_around_a_checkpoint_a_healed_run_logs_every_step_and_epoch_once(tmp_path, where):
    """A failure after a checkpointing step's work (in its held-out evaluation, or while its checkpoint is
    written), then a resume from the latest checkpoint as launch.py heals: every step's record and every epoch's
    views are logged exactly once."""
    from actors.scheduler import latest_checkpoint

    scheduler, _, run_log = build(tmp_path, checkpoint_every=2)  # held-out every 2 steps, 2 steps an epoch
    if where == "heldout":  # after step 3: the second held-out evaluation
        scheduler.rollout_pool.generate_greedy = FailingOnce(scheduler.rollout_pool.generate_greedy, at=1)
    else:  # the checkpoint after step 3, once its policy is written
        scheduler.table.write_parquet = FailingOnce(scheduler.table.write_parquet, at=1)
    with pytest.raises(RuntimeError, match="injected failure"):
        while scheduler.step_count < 6:
            scheduler.step()
    resumed, _, _ = build(tmp_path, checkpoint_every=2)
    resumed.run_log = run_log  # the run folder's metrics.jsonl, as the healed run finds it
    resumed.restore(str(latest_checkpoint(tmp_path / "checkpoints")))
    while resumed.step_count < 6:
        resumed.step()
    assert [r.step for r in run_log.records] == list(range(6))
    assert [(epoch, steps) for epoch, _, steps in run_log.epochs] == [(0, [0, 1]), (1, [2, 3]), (2, [4, 5])]


def test_a_checkpoints_seconds_travel_in_the_next_steps_record(tmp_path):
    scheduler, _, _ = build(tmp_path, checkpoint_every=2)
    records = [scheduler.step() for _ in range(3)]
    assert "previous_checkpoint" not in records[0].timing and "previous_checkpoint" not in records[1].timing
    assert records[2].timing["previous_checkpoint"] > 0 and "previous_checkpoint" not in records[2].step_phases


def test_generation_seconds_sum_a_workers_calls_and_take_the_longest_worker():
    def rollout(worker: str, seconds: float) -> Rollout:
        return Rollout("q", 0, (1,), (Completion((1,), (-0.1,), "x", "stop"),), 1.0, 0, worker, seconds)

    # w0 made one call of 2.0 s (two rollouts share it) and one of 0.5 s (a stale batch generated again)
    rollouts = [rollout("w0", 2.0), rollout("w0", 2.0), rollout("w0", 0.5), rollout("w1", 2.25)]
    assert generation_seconds(rollouts) == 2.5
    assert math.isnan(generation_seconds([rollout("w0", 0.0)]))  # fakes that do not measure


class LongWrongPool(FakePool):
    """Wrong answers run three tokens longer than right ones (as countdown's failed search traces do)."""

    def generate(self, requests: list[RolloutRequest]) -> list[Rollout]:
        def longer(c: Completion) -> Completion:
            return c if c.text == "right" else Completion((7, 8, 9, 9, 9), (-0.1,) * 5, c.text, "stop")

        return [replace(r, completions=tuple(map(longer, r.completions))) for r in super().generate(requests)]


class BatchKeepingLearner(FakeLearner):
    def train(self, batch: TrainBatch, weights_version: int) -> LearnerResult:
        self.batch = batch
        return super().train(batch, weights_version)


def test_sequence_mean_scales_each_responses_advantage_by_its_share_of_the_tokens(tmp_path):
    batches = {}
    for aggregation in LossAggregation:
        scheduler, *_ = build(
            tmp_path / aggregation.value, pool_class=LongWrongPool, learner_class=BatchKeepingLearner,
            loss_aggregation=aggregation,
        )  # fmt: skip
        scheduler.step()
        batches[aggregation.value] = scheduler.learner_group.batch
    token_mean, sequence_mean = batches["token_mean"], batches["sequence_mean"]
    lengths = token_mean.response_mask.sum(dim=1)
    assert set(lengths.tolist()) == {2.0, 5.0} and bool((token_mean.advantages != 0).any())
    expected = token_mean.advantages * lengths.sum() / (len(lengths) * lengths)  # tokens / (responses * length)
    assert torch.allclose(sequence_mean.advantages, expected, rtol=1e-6)
