"""The scheduler: owns E3's algorithmic state and runs one training step at a time.

State (all saved with a checkpoint): the step counter, the seeded epoch sampler, the difficulty table, the
budget bounds, the temperature controller and the weights version. The rollout pool, the learner group and the
reward scorer are handed in by `cluster/`; this class only calls their plain methods, so a test can build it
in-process with any of them.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from actors.evaluation import greedy_accuracy, sampled_pass_at_k
from core.batch import build_train_batch
from core.budget import BudgetBounds, allocate_rollouts
from core.config import BudgetConfig, RewardConfig, TemperatureConfig
from core.difficulty import DifficultyTable
from core.messages import (
    Completion,
    LearnerResult,
    Rollout,
    RolloutRequest,
    ScoredRollouts,
    TemperatureUpdate,
    TrainBatch,
)
from core.sampler import EpochSampler
from core.temperature import TemperatureController
from tasks.dataset import Question, dataset_fingerprint

log = logging.getLogger(__name__)


class RolloutPoolLike(Protocol):
    def generate(self, requests: list[RolloutRequest]) -> list[Rollout]: ...
    def generate_greedy(self, prompts: list[list[int]], max_new_tokens: int) -> list[Completion]: ...
    def sync_weights(self, source: Any, version: int) -> None: ...
    def set_temperature(self, update: TemperatureUpdate) -> None: ...


class LearnerGroupLike(Protocol):
    def train(self, batch: TrainBatch, weights_version: int) -> LearnerResult: ...
    def save(self, path: str) -> None: ...
    def load(self, path: str) -> None: ...


class ScorerLike(Protocol):
    def score(self, rollouts: list[Rollout], ground_truths: list[str]) -> list[ScoredRollouts]: ...
    def score_texts(self, texts: list[str], ground_truths: list[str]) -> list[tuple[float, bool]]: ...


@dataclass(frozen=True)
class RunLogLike(Protocol):
    def log_step(self, metrics: dict[str, Any]) -> None: ...
    def rewind(self, step: int) -> None: ...
    def log_summary(self, summary: dict[str, Any]) -> None: ...
    def close(self) -> None: ...
    def log_epoch(
        self, epoch: int, step: int, table: DifficultyTable, metrics_of_epoch: list[dict[str, Any]]
    ) -> Any: ...


@dataclass(frozen=True)
class StepPlan:
    """The scheduler's own settings for a run, beside the budget, temperature and reward sub-configs."""

    questions_per_step: int
    """B: questions in each step's batch."""
    total_steps: int
    """Steps in the run (for annealing and progress)."""
    max_new_tokens: int
    """Longest response, in tokens."""
    seed: int
    """Seed of the sampler and of every rollout request."""
    pad_token_id: int
    """Padding token id of the train batch."""
    vocab_size: int
    """Vocabulary size V of the policy (the temperature controller's gain)."""
    heldout_samples: int = 0
    """Answers sampled per held-out question by `evaluate()` for mean@k and pass@k; 0: greedy only."""
    eval_temperature: float = 1.0
    """Sampling temperature of those answers."""
    checkpoint_dir: str = ""
    """Where `checkpoint()` writes `step_<k>/` folders; empty: no checkpoints."""
    checkpoint_every: int = 0
    """Checkpoint after every K-th step (the driver also checkpoints at the end); 0: only at the end."""
    heldout_every: int = 0
    """Greedy held-out accuracy after every K-th step, on that step's metrics as `heldout/...`; 0: never."""


class PhaseTimer:
    """Times named phases of one step into `timing/<phase>_s`."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        self.seconds[f"timing/{phase}_s"] = self.seconds.get(f"timing/{phase}_s", 0.0) + time.perf_counter() - start


def request_seed(seed: int, step: int, position: int) -> int:
    """A reproducible 31-bit seed for one rollout request of one step."""
    return int(np.random.SeedSequence([seed, step, position]).generate_state(1)[0] & 0x7FFFFFFF)


class Scheduler:
    """Runs E3 steps: sample questions, allocate rollouts, generate, score, learn, sync, adapt the temperature."""

    def __init__(
        self,
        questions: list[Question],
        prompt_token_ids: list[list[int]],
        plan: StepPlan,
        budget: BudgetConfig,
        temperature: TemperatureConfig,
        reward: RewardConfig,
        rollouts: RolloutPoolLike,
        learner: LearnerGroupLike,
        scorer: ScorerLike,
        heldout: tuple[list[Question], list[list[int]]] | None = None,
        run_log: RunLogLike | None = None,
    ) -> None:
        """`heldout` is the (questions, prompt ids) pair `evaluate()` scores; `run_log` receives every step."""
        if len(questions) != len(prompt_token_ids):
            raise ValueError(f"Scheduler: {len(questions)} questions but {len(prompt_token_ids)} prompts")
        self.questions = questions
        self.prompt_token_ids = prompt_token_ids
        self.plan = plan
        self.budget_config = budget
        self.reward_config = reward
        self.rollouts = rollouts
        self.learner = learner
        self.scorer = scorer
        self.heldout = heldout
        self.run_log = run_log
        self._epoch_metrics: list[dict[str, Any]] = []
        self.fingerprint = dataset_fingerprint(questions)

        self.sampler = EpochSampler(len(questions), plan.questions_per_step, seed=plan.seed)
        self.table = DifficultyTable(
            [q.id for q in questions],
            initial_ranks=[math.nan if q.rank is None else q.rank for q in questions],
            ties=budget.ties,
        )
        self.bounds = BudgetBounds(budget.n, budget.n_low, budget.n_high, budget.n_update, start_wide=budget.start_wide)
        self.controller = TemperatureController(
            vocab_size=plan.vocab_size,
            initial_temperature=temperature.initial,
            init_steps=temperature.init_steps,
            target_entropy=temperature.target_entropy,
            enabled=temperature.enabled,
            annealing=temperature.annealing,
            max_steps=plan.total_steps,
            annealing_ratio=temperature.annealing_ratio,
            annealing_factor=temperature.annealing_factor,
            min_temperature=temperature.min_temperature,
            max_temperature=temperature.max_temperature,
        )
        self.step_count = 0
        self.weights_version = 0

    # -- the step -------------------------------------------------------------------------------------------

    def step(self) -> dict[str, Any]:
        """Run one training step and return its metrics (see the README for every key)."""
        timer = PhaseTimer()
        with timer("step"):
            step = self.step_count
            temperature = self.controller.temperature
            with timer("sample"):
                batch = self.sampler.next_batch()
                questions = [self.questions[i] for i in batch.indices]
                ranks = self.table.ranks([q.id for q in questions])
            with timer("allocate"):
                counts = allocate_rollouts(ranks, self.bounds.n * len(questions), self.bounds.n_min, self.bounds.n_max)
                requests = self._requests(batch.indices, counts, step)
            with timer("generate"):
                rollouts = self.rollouts.generate(requests)
            with timer("score"):
                scored = self.scorer.score(rollouts, [q.ground_truth for q in questions])
            with timer("update_table"):
                self.table.observe(
                    [s.rollout.question_id for s in scored for _ in s.correct],
                    [c for s in scored for c in s.correct],
                    step=step,
                )
            with timer("build_batch"):
                train_batch, stats = build_train_batch(
                    scored,
                    self.table.index_ranks([q.id for q in questions]),
                    self.plan.pad_token_id,
                    self.reward_config.length_bias_mu,
                    self.reward_config.length_bias_threshold,
                )
            with timer("train"):
                result = self.learner.train(train_batch, self.weights_version)
            with timer("sync"):
                self.rollouts.sync_weights(self.learner, result.weights_version)
                self.weights_version = result.weights_version
            with timer("temperature"):
                target_before = self.controller.target_entropy
                next_temperature = self.controller.update(result.entropy)
                # the target this step's entropy was held against: fixed during this update if it was unset
                target_used = target_before if target_before is not None else self.controller.target_entropy
                self.rollouts.set_temperature(TemperatureUpdate(next_temperature, step))
            with timer("epoch_end"):
                self._maybe_recompute(batch.end_of_epoch, step)
            self.step_count += 1
            every = self.plan.checkpoint_every
            if every and self.plan.checkpoint_dir and self.step_count % every == 0:
                with timer("checkpoint"):
                    self.checkpoint()
        heldout = self._heldout_if_due(timer)

        generated_tokens = sum(len(c.token_ids) for r in rollouts for c in r.completions)
        metrics: dict[str, Any] = {
            "step": step,
            "epoch": batch.epoch,
            "end_of_epoch": batch.end_of_epoch,
            "temperature": temperature,
            "next_temperature": next_temperature,
            "temperature_clamped": self.controller.last_clamped,
            "target_entropy": target_used,
            "entropy": result.entropy,
            "reward_mean": stats.reward_mean,
            "accuracy": stats.accuracy,
            "all_wrong_fraction": stats.all_wrong_fraction,
            "all_correct_fraction": stats.all_correct_fraction,
            "zero_advantage_fraction": stats.zero_advantage_fraction,
            "truncated_fraction": stats.truncated_fraction,
            "rollouts_total": int(sum(counts)),
            "rollouts_min": int(min(counts)),
            "rollouts_max": int(max(counts)),
            "rollouts_per_question": [int(c) for c in counts],
            "question_ranks": [float(r) for r in ranks],
            "question_ids": [q.id for q in questions],
            "budget_n_min": self.bounds.n_min,
            "budget_n_max": self.bounds.n_max,
            "response_length_mean": stats.response_length_mean,
            "generated_tokens": generated_tokens,
            "weights_version": self.weights_version,
            "reward/timeouts": sum(s.timeouts for s in scored),
            **{f"learner/{k}": v for k, v in result.metrics.items()},
            **heldout,
            **timer.seconds,
        }
        metrics["throughput/generated_tokens_per_s"] = generated_tokens / max(metrics["timing/generate_s"], 1e-9)
        self._record(metrics)
        return metrics

    def _heldout_if_due(self, timer: PhaseTimer) -> dict[str, float]:
        """After every `plan.heldout_every`-th step: greedy held-out accuracy of the policy just trained (the
        step's `weights_version`) as `heldout/accuracy` and `heldout/accuracy/<source>`; {} on other steps.

        Timed as `timing/heldout_s`, outside `timing/step_s`, so that step times stay comparable between runs that
        validate and runs that do not. Greedy decoding draws on no sampling seed, so it leaves the training
        rollouts as they would have been without it."""
        every = self.plan.heldout_every
        if not every or self.heldout is None or self.step_count % every:
            return {}
        with timer("heldout"):
            questions, prompts = self.heldout
            accuracy = greedy_accuracy(self.rollouts, self.scorer, questions, prompts, self.plan.max_new_tokens)
        return {f"heldout/{key}": value for key, value in accuracy.items()}

    def _record(self, metrics: dict[str, Any]) -> None:
        """Send the step to the run log; at epoch end also the difficulty table and the epoch's steps."""
        self._epoch_metrics.append(metrics)
        if self.run_log is not None:
            self.run_log.log_step(metrics)
        if metrics["end_of_epoch"]:
            if self.run_log is not None:
                self.run_log.log_epoch(metrics["epoch"], metrics["step"], self.table, self._epoch_metrics)
            self._epoch_metrics = []

    def _requests(self, indices: list[int], counts: list[int], step: int) -> list[RolloutRequest]:
        return [
            RolloutRequest(
                question_id=self.questions[i].id,
                prompt_token_ids=tuple(self.prompt_token_ids[i]),
                num_samples=count,
                max_new_tokens=self.plan.max_new_tokens,
                seed=request_seed(self.plan.seed, step, position),
                step=step,
            )
            for position, (i, count) in enumerate(zip(indices, counts, strict=True))
        ]

    def _maybe_recompute(self, end_of_epoch: bool, step: int) -> None:
        """At epoch end: recompute ranks and widen the bounds; every K steps (if configured): recompute ranks."""
        every = self.budget_config.recompute_every
        if end_of_epoch:
            self.table.recompute_ranks()
            n_min, n_max = self.bounds.end_epoch()
            log.info("epoch end at step %d: ranks recomputed, budget bounds now %d..%d", step, n_min, n_max)
        elif every and (step + 1) % every == 0:
            self.table.recompute_ranks()

    # -- evaluation -----------------------------------------------------------------------------------------

    def evaluate(self) -> dict[str, float]:
        """The current policy on the held-out questions: greedy accuracy (overall, per source) and, when the plan
        asks for it, mean@k and pass@k from k sampled answers each."""
        if self.heldout is None:
            return {}
        questions, prompts = self.heldout
        result = greedy_accuracy(self.rollouts, self.scorer, questions, prompts, self.plan.max_new_tokens)
        k = self.plan.heldout_samples
        if k:
            sampled = sampled_pass_at_k(
                self.rollouts,
                self.scorer,
                questions,
                prompts,
                self.plan.max_new_tokens,
                k,
                self.plan.eval_temperature,
                [1, k],
                self.plan.seed + 7919,
                self.controller.temperature,
            )
            result.update({f"sampled/{key}": value for key, value in sampled.items()})
        return result

    def finish(self, summary: dict[str, Any]) -> None:
        """Write the run's summary and close the run log."""
        if self.run_log is not None:
            self.run_log.log_summary(summary)
            self.run_log.close()

    # -- checkpoints ----------------------------------------------------------------------------------------

    def checkpoint(self) -> str:
        """Save the policy, the optimizer and the algorithmic state as `<checkpoint_dir>/step_<k>/`, atomically.

        Everything is written into a hidden temporary folder that is renamed into place at the end, so a process
        killed mid-save leaves the previous checkpoint as the latest loadable one.
        """
        root = Path(self.plan.checkpoint_dir)
        final = root / f"step_{self.step_count}"
        partial = root / f".step_{self.step_count}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        self.learner.save(str(partial / "policy"))
        self.table.write_parquet(partial / "difficulty.parquet")
        (partial / "scheduler.json").write_text(json.dumps(self.state_dict(), indent=1), encoding="utf-8")
        shutil.rmtree(final, ignore_errors=True)
        os.replace(partial, final)
        log.info("checkpoint written: %s", final)
        return str(final)

    def restore(self, directory: str) -> int:
        """Load a checkpoint written by `checkpoint()`, push its weights and temperature to the rollout workers,
        and return the step it continues from."""
        path = Path(directory)
        state = json.loads((path / "scheduler.json").read_text(encoding="utf-8"))
        self.load_state_dict(state)
        self.table.read_parquet(path / "difficulty.parquet")
        self.learner.load(str(path / "policy"))
        self.rollouts.sync_weights(self.learner, self.weights_version)
        self.rollouts.set_temperature(TemperatureUpdate(self.controller.temperature, self.step_count))
        if self.run_log is not None:
            self.run_log.rewind(self.step_count)
        return self.step_count

    def state_dict(self) -> dict[str, Any]:
        """The algorithmic state but the difficulty table (saved as Parquet beside it): plain JSON values."""
        return {
            "step": self.step_count,
            "weights_version": self.weights_version,
            "fingerprint": self.fingerprint,
            "sampler": self.sampler.state_dict(),
            "bounds": self.bounds.state_dict(),
            "controller": self.controller.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore `state_dict()`; refuses a state saved for a different dataset."""
        if state["fingerprint"] != self.fingerprint:
            raise ValueError(
                f"checkpoint was saved for dataset fingerprint {state['fingerprint'][:12]}..., "
                f"this run's dataset is {self.fingerprint[:12]}...: refusing to resume on different questions"
            )
        self.step_count = int(state["step"])
        self.weights_version = int(state["weights_version"])
        self.sampler.load_state_dict(state["sampler"])
        self.bounds.load_state_dict(state["bounds"])
        self.controller.load_state_dict(state["controller"])


def latest_checkpoint(checkpoint_dir: str | Path) -> Path | None:
    """The complete checkpoint with the highest step under `checkpoint_dir`, or None if there is none."""
    root = Path(checkpoint_dir)
    steps = [
        (int(p.name.removeprefix("step_")), p) for p in root.glob("step_*") if p.name.removeprefix("step_").isdigit()
    ]
    return max(steps)[1] if steps else None
