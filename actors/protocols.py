"""What the scheduler and the evaluation call on the parts `cluster/` hands them. Plain methods, so that a test
can hand in-process fakes instead (tests/unit/test_scheduler.py does)."""

from __future__ import annotations

from typing import Any, Protocol

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


class RolloutPoolLike(Protocol):
    """The rollout workers as one: generation, weights and temperature."""

    def generate(self, requests: list[RolloutRequest]) -> list[Rollout]: ...
    def generate_greedy(self, prompts: list[list[int]], max_new_tokens: int) -> list[Completion]: ...
    def load_weights(self, state_dict_ref: Any, version: int) -> None: ...
    def set_temperature(self, update: TemperatureUpdate) -> None: ...


class LearnerGroupLike(Protocol):
    """The learner ranks as one: a training step, the weights to publish, checkpoints."""

    def train(self, batch: TrainBatch, weights_version: int) -> LearnerResult: ...
    def state_dict_ref(self) -> Any: ...
    def save(self, path: str) -> None: ...
    def load(self, path: str) -> None: ...


class ScorerLike(Protocol):
    """The reward scorer: rollouts to scored groups, plain texts to (reward, correct) results."""

    def score(self, rollouts: list[Rollout], ground_truths: list[str]) -> list[ScoredRollouts]: ...
    def score_texts(self, texts: list[str], ground_truths: list[str]) -> list[RewardResult]: ...


class RunLogLike(Protocol):
    """Where a run's records go."""

    def log_step(self, record: StepRecord) -> None: ...
    def rewind(self, step: int) -> list[StepRecord]: ...
    def log_summary(self, summary: dict[str, Any]) -> None: ...
    def close(self) -> None: ...
    def log_epoch(self, epoch: int, step: int, table: DifficultyTable, records: list[StepRecord]) -> Any: ...
