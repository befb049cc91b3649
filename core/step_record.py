"""One training step's record: what the scheduler logs after every step, as one typed value.

`StepRecord` is the only place the step line's keys are spelled. `to_log()` writes the namespaced line of
`metrics.jsonl` (the same keys go to W&B; its docstring lists them all); `from_log()` reads such a line back.
Every consumer (the run log and its gauges, the report, the benchmarks, the progress bar, the tests) reads the
record's attributes, never a key. Non-finite floats are written as null and read back as NaN. What a run writes,
around this line: docs/outputs.md.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from core.messages import Rollout

STEP_PHASE = "step"
"""The timed phase that spans the whole step."""
PREVIOUS_CHECKPOINT_PHASE = "previous_checkpoint"
"""The checkpoint written after the step before: a step's record is logged before its checkpoint is written (so
that a failure while writing it cannot lose the record), so the checkpoint's seconds travel in the next record."""
OUTSIDE_STEP_PHASES = ("heldout", PREVIOUS_CHECKPOINT_PHASE)
"""Timed phases that run after the step, outside `timing/step_s` (so step times compare between runs)."""


class PhaseTimer:
    """Times named phases of one step, in seconds, in the order they first ran."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - start


@dataclass(frozen=True)
class StepRecord:
    """The outcome of one scheduler step, as logged. Lists are in the order of the step's questions."""

    step: int
    epoch: int
    end_of_epoch: bool
    weights_version: int
    """The weights version after this step's update."""
    # rollout/
    question_ids: tuple[str, ...]
    rollouts_per_question: tuple[int, ...]
    generated_tokens: int
    response_length_mean: float
    truncated_fraction: float
    # reward/
    reward_mean: float
    accuracy: float
    all_wrong_fraction: float
    all_correct_fraction: float
    zero_advantage_fraction: float
    reward_timeouts: int
    reward_errors: int
    # budget/
    question_ranks: tuple[float, ...]
    n_min: int
    n_max: int
    # temperature/
    temperature: float
    """The temperature this step's rollouts were sampled with."""
    next_temperature: float
    temperature_clamped: bool
    target_entropy: float | None
    """The target the step's entropy was held against; None while the controller has not fixed it."""
    # learner/
    entropy: float
    learner: Mapping[str, float] = field(default_factory=dict)
    """The learner's metrics but entropy, by name (`loss`, `grad_norm`, `logprob_mismatch`, ...)."""
    # timing/ and heldout/
    timing: Mapping[str, float] = field(default_factory=dict)
    """Seconds per phase, in the order the phases ran (`step` is the whole step)."""
    heldout: Mapping[str, float] = field(default_factory=dict)
    """Greedy held-out accuracy after this step (`accuracy`, `accuracy/<source>`); empty on other steps."""
    # pipeline/ (generation ahead of training only)
    staleness: tuple[int, ...] = ()
    """Samples by staleness: entry j counts those sampled with weights j versions older than the trained ones;
    empty in the synchronous loop (then no `pipeline/` key is written)."""
    stale_dropped: int = 0
    """Samples older than `train.max_staleness` versions, dropped and generated again."""
    stale_kept: int = 0
    """Samples older than `train.max_staleness` versions, trained on all the same (`stale_policy=wait`)."""
    generation_seconds: float = math.nan
    """Seconds the workers' engines took to generate the step's rollouts (the longest worker's); NaN if unknown."""
    coverage: float = math.nan
    """Share of the training questions answered correctly at least once so far (this step included)."""
    distinct_correct: float = math.nan
    """Distinct correct answers per group, averaged over the step's groups with one or more (tasks with an answer
    key only, as countdown; NaN elsewhere)."""

    def __post_init__(self) -> None:
        if len(self.question_ids) != len(self.rollouts_per_question) or len(self.question_ids) != len(
            self.question_ranks
        ):
            raise ValueError(
                f"StepRecord step {self.step}: {len(self.question_ids)} questions, "
                f"{len(self.rollouts_per_question)} counts, {len(self.question_ranks)} ranks"
            )

    # -- derived values -----------------------------------------------------------------------------------

    @property
    def rollouts_total(self) -> int:
        """The step's budget: rollouts over all its questions."""
        return sum(self.rollouts_per_question)

    @property
    def rollouts_min(self) -> int:
        """The fewest rollouts any question got."""
        return min(self.rollouts_per_question)

    @property
    def rollouts_max(self) -> int:
        """The most rollouts any question got."""
        return max(self.rollouts_per_question)

    @property
    def tokens_per_s(self) -> float:
        """Generated response tokens per second of the engines' generation (`generation_seconds`), or of the
        generate phase when that is unknown."""
        seconds = self.generation_seconds if self.generation_seconds > 0 else self.timing.get("generate", 0.0)
        return self.generated_tokens / max(seconds, 1e-9)

    @property
    def step_seconds(self) -> float:
        """Seconds of the whole step (NaN if it was not timed)."""
        return self.timing.get(STEP_PHASE, math.nan)

    @property
    def step_phases(self) -> dict[str, float]:
        """Seconds of each phase inside the step, in the order they ran (the step itself and the phases after it
        left out); what they do not cover of `step_seconds` is the scheduler's own overhead."""
        outside = {STEP_PHASE, *OUTSIDE_STEP_PHASES}
        return {phase: s for phase, s in self.timing.items() if phase not in outside}

    @property
    def heldout_accuracy(self) -> float:
        """Greedy held-out accuracy after this step; NaN on steps that did not evaluate."""
        return self.heldout.get("accuracy", math.nan)

    # -- the logged line ------------------------------------------------------------------------------------

    def to_log(self) -> dict[str, Any]:
        """The step as one JSON-ready line of namespaced keys; non-finite floats become None (read back as NaN).

        The line's keys, by namespace:

        - `step`, `epoch`, `end_of_epoch`, `weights_version`: which step (0-based), its epoch, whether it ended the
          epoch, and the weights version after its update.
        - `rollout/question_ids`, `rollout/per_question`: the step's questions and the rollouts each got (lists, in
          batch order); `rollout/total`, `rollout/min`, `rollout/max`: their sum (the step's budget), smallest and
          largest.
        - `rollout/generated_tokens`, `rollout/generate_s`, `rollout/tokens_per_s`: response tokens generated, the
          seconds the workers' engines took to generate them (the longest worker's; ahead of training the `generate`
          phase is only the scheduler's wait), and tokens per second of those (of the `generate` phase when the engines'
          seconds are unknown); `rollout/response_length_mean` (tokens), `rollout/truncated_fraction` (share that hit
          the length limit).
        - `reward/mean` (shaped reward), `reward/accuracy` (share of correct samples), `reward/all_wrong_fraction` and
          `reward/all_correct_fraction` (share of questions with no / only correct samples),
          `reward/zero_advantage_fraction` (share of samples with no learning signal), `reward/timeouts` and
          `reward/errors` (completions whose reward call was killed at its time limit / raised; both scored 0);
          `reward/coverage` (share of training questions solved at least once so far) and, for tasks whose answers
          have a canonical form (countdown), `reward/distinct_correct` (distinct correct answers per group with any).
        - `budget/question_ranks`: each question's difficulty rank when its budget was allocated (0 = easiest);
          `budget/n_min`, `budget/n_max`: the bounds every count was held within.
        - `temperature/sampled`: the temperature this step's rollouts were sampled with; `temperature/next`: the one the
          controller set after this step (the next step samples with it); `temperature/clamped`: whether that update hit
          the bounds; `temperature/target_entropy`: the target this step's entropy was held against (null until fixed).
        - `learner/entropy`: token-mean entropy of the tempered policy over the step's responses (the controller's
          input); `learner/<name>`: the learner's other metrics (loss, clip fractions, grad norm, log-prob mismatch,
          ...).
        - `timing/<phase>_s`: seconds of each phase, in the order they ran; `timing/step_s` is the whole step, and
          `timing/heldout_s` (when the step evaluates) runs after it; `timing/previous_checkpoint_s` is the checkpoint
          written after the step before (written once that step's record was logged).
        - `heldout/accuracy`, `heldout/accuracy/<source>`: greedy held-out accuracy after this step, on steps that
          evaluate.
        - `pipeline/staleness` (only when generation runs ahead of training, `train.max_staleness` >= 1): the step's
          samples by how many weights versions older than the trained policy they were sampled with (entry j: j versions
          old); `pipeline/stale_dropped`, `pipeline/stale_kept`: samples older than the bound that were generated again
          (`train.stale_policy=drop`) or trained on all the same (`wait`).
        """
        line: dict[str, Any] = {
            "step": self.step,
            "epoch": self.epoch,
            "end_of_epoch": self.end_of_epoch,
            "weights_version": self.weights_version,
            "rollout/question_ids": list(self.question_ids),
            "rollout/per_question": list(self.rollouts_per_question),
            "rollout/total": self.rollouts_total,
            "rollout/min": self.rollouts_min,
            "rollout/max": self.rollouts_max,
            "rollout/generated_tokens": self.generated_tokens,
            "rollout/generate_s": self.generation_seconds,
            "rollout/tokens_per_s": self.tokens_per_s,
            "rollout/response_length_mean": self.response_length_mean,
            "rollout/truncated_fraction": self.truncated_fraction,
            "reward/mean": self.reward_mean,
            "reward/accuracy": self.accuracy,
            "reward/all_wrong_fraction": self.all_wrong_fraction,
            "reward/all_correct_fraction": self.all_correct_fraction,
            "reward/zero_advantage_fraction": self.zero_advantage_fraction,
            "reward/timeouts": self.reward_timeouts,
            "reward/errors": self.reward_errors,
            "reward/coverage": self.coverage,
            "budget/question_ranks": list(self.question_ranks),
            "budget/n_min": self.n_min,
            "budget/n_max": self.n_max,
            "temperature/sampled": self.temperature,
            "temperature/next": self.next_temperature,
            "temperature/clamped": self.temperature_clamped,
            "temperature/target_entropy": self.target_entropy,
            "learner/entropy": self.entropy,
            **{f"learner/{name}": value for name, value in self.learner.items()},
            **{f"timing/{phase}_s": seconds for phase, seconds in self.timing.items()},
            **{f"heldout/{name}": value for name, value in self.heldout.items()},
        }
        if math.isfinite(self.distinct_correct):
            line["reward/distinct_correct"] = self.distinct_correct
        if self.staleness:
            line.update(
                {
                    "pipeline/staleness": list(self.staleness),
                    "pipeline/stale_dropped": self.stale_dropped,
                    "pipeline/stale_kept": self.stale_kept,
                }
            )
        return {key: _json_safe(value) for key, value in line.items()}

    @classmethod
    def from_log(cls, line: Mapping[str, Any]) -> StepRecord:
        """Read back a line written by `to_log()`; raises ValueError naming the first missing key."""

        def get(key: str) -> Any:
            if key not in line:
                raise ValueError(f"not a step record: no {key!r} (keys: {', '.join(sorted(line))[:200]})")
            return line[key]

        def real(key: str) -> float:
            return _real_or_nan(get(key))

        target = get("temperature/target_entropy")
        return cls(
            step=int(get("step")),
            epoch=int(get("epoch")),
            end_of_epoch=bool(get("end_of_epoch")),
            weights_version=int(get("weights_version")),
            question_ids=tuple(str(q) for q in get("rollout/question_ids")),
            rollouts_per_question=tuple(int(n) for n in get("rollout/per_question")),
            generated_tokens=int(get("rollout/generated_tokens")),
            response_length_mean=real("rollout/response_length_mean"),
            truncated_fraction=real("rollout/truncated_fraction"),
            reward_mean=real("reward/mean"),
            accuracy=real("reward/accuracy"),
            all_wrong_fraction=real("reward/all_wrong_fraction"),
            all_correct_fraction=real("reward/all_correct_fraction"),
            zero_advantage_fraction=real("reward/zero_advantage_fraction"),
            reward_timeouts=int(get("reward/timeouts")),
            reward_errors=int(get("reward/errors")),
            question_ranks=tuple(math.nan if r is None else float(r) for r in get("budget/question_ranks")),
            n_min=int(get("budget/n_min")),
            n_max=int(get("budget/n_max")),
            temperature=real("temperature/sampled"),
            next_temperature=real("temperature/next"),
            temperature_clamped=bool(get("temperature/clamped")),
            target_entropy=None if target is None else float(target),
            entropy=real("learner/entropy"),
            learner=_namespace(line, "learner/", exclude=("entropy",)),
            timing={key.removesuffix("_s"): value for key, value in _namespace(line, "timing/").items()},
            heldout=_namespace(line, "heldout/"),
            staleness=tuple(int(n) for n in line.get("pipeline/staleness", ())),
            stale_dropped=int(line.get("pipeline/stale_dropped", line.get("pipeline/dropped", 0))),
            stale_kept=int(line.get("pipeline/stale_kept", 0)),
            generation_seconds=_real_or_nan(line.get("rollout/generate_s")),
            coverage=_real_or_nan(line.get("reward/coverage")),
            distinct_correct=_real_or_nan(line.get("reward/distinct_correct")),
        )


def step_phases(records: Iterable[StepRecord]) -> list[str]:
    """The phases timed inside the steps of `records`, in the order they first ran (a phase that runs on some
    steps only, like the periodic checkpoint, is listed where it first appeared)."""
    phases: dict[str, None] = {}
    for record in records:
        phases.update(dict.fromkeys(record.step_phases))
    return list(phases)


def _real_or_nan(value: Any) -> float:
    """A logged number (null or absent read as NaN)."""
    return math.nan if value is None else float(value)


def _namespace(line: Mapping[str, Any], prefix: str, exclude: tuple[str, ...] = ()) -> dict[str, float]:
    """The `prefix`ed numbers of a line by their name after the prefix (null read as NaN), in line order."""
    return {
        key.removeprefix(prefix): _real_or_nan(value)
        for key, value in line.items()
        if key.startswith(prefix) and key.removeprefix(prefix) not in exclude
    }


def _json_safe(value: Any) -> Any:
    """Non-finite floats (and those in lists) as None, so that the line is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def generation_seconds(rollouts: list[Rollout]) -> float:
    """How long the workers' engines took to generate `rollouts`: per worker, the sum of its engine calls (the
    rollouts of one call share its `generate_s`), and the longest of the workers, who run in parallel; NaN when
    none was measured. Unlike the step's `generate` phase this is not the scheduler's wait, which ahead of
    training is only what is left of a generation that ran during the previous step's training."""
    calls = {(r.worker, r.generate_s) for r in rollouts if r.generate_s > 0}
    per_worker: dict[str, float] = {}
    for worker, seconds in calls:
        per_worker[worker] = per_worker.get(worker, 0.0) + seconds
    return max(per_worker.values(), default=math.nan)
