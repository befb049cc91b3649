"""The scheduler: owns E3's algorithmic state and runs one training step at a time.

State (all saved with a checkpoint): the step counter, the seeded epoch sampler, the difficulty table, the
budget bounds, the temperature controller, the weights version and the generation queue (`actors/pipeline.py`:
with `train.max_staleness` >= 1 the batches issued ahead of training). The rollout pool, the learner group and
the reward scorer are handed in by `cluster/`; this class only calls their plain methods, so a test can build it
in-process with any of them (`tests/unit/test_scheduler.py`).
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from actors import checkpoint_files
from actors.evaluation import greedy_accuracy, sampled_pass_at_k
from actors.pipeline import DrawnQuestions, GenerationQueue, IssuedBatch
from actors.protocols import LearnerGroupLike, RolloutPoolLike, RunLogLike, ScorerLike
from actors.reward_scorer import load_reward_fn
from actors.settings import SchedulerSettings
from core.allocators import ALLOCATORS, QuestionStats
from core.batch import BatchStats, build_train_batch, distinct_correct_per_group
from core.budget import BudgetBounds
from core.config import BudgetConfig, RewardConfig, TemperatureConfig
from core.difficulty import DifficultyTable
from core.messages import LearnerResult, RolloutRequest, ScoredRollout, TemperatureUpdate, TrainBatch
from core.sampler import EpochSampler
from core.samples import sample_groups
from core.step_record import PREVIOUS_CHECKPOINT_PHASE, PhaseTimer, StepRecord, generation_seconds
from core.temperature import TemperatureController
from tasks.dataset import Question, dataset_fingerprint
from tasks.prepare import Split

log = logging.getLogger(__name__)
ROLLOUT_WEIGHTS = "rollout_weights"
"""A checkpoint's folder of the weights its queued generation was issued with (`v<version>/model.safetensors`)."""
HELDOUT_SEED_OFFSET = 7919
"""Added to the run's seed for held-out sampling (`evaluate`): its answers draw from a stream of their own, apart
from the training requests' (seeded by `request_seed(seed, step, position)`)."""


def request_seed(seed: int, step: int, position: int) -> int:
    """A reproducible 31-bit seed for one rollout request of one step."""
    return int(np.random.SeedSequence([seed, step, position]).generate_state(1)[0] & 0x7FFFFFFF)


@dataclass(frozen=True)
class TemperatureOutcome:
    """What the temperature controller did after a step."""

    next_temperature: float
    target_entropy: float | None
    """The target the step's entropy was held against (None while unset)."""
    clamped: bool


class Scheduler:
    """Runs E3 steps: sample questions, allocate rollouts, generate, score, learn, sync, adapt the temperature."""

    def __init__(
        self,
        train: Split,
        settings: SchedulerSettings,
        budget: BudgetConfig,
        temperature: TemperatureConfig,
        reward: RewardConfig,
        rollout_pool: RolloutPoolLike,
        learner_group: LearnerGroupLike,
        scorer: ScorerLike,
        heldout: Split | None = None,
        run_log: RunLogLike | None = None,
    ) -> None:
        """`train` holds the questions steps draw from, `heldout` those `evaluate()` scores; `run_log` receives
        every step's record."""
        self.train = train
        self.settings = settings
        self.budget_config = budget
        self.reward_config = reward
        self.rollout_pool = rollout_pool
        self.learner_group = learner_group
        self.scorer = scorer
        self.heldout = heldout
        self.run_log = run_log
        self._epoch_records: list[StepRecord] = []
        self._answer_key = load_reward_fn(settings.answer_key_fn) if settings.answer_key_fn else None

        questions = train.questions
        self.sampler = EpochSampler(len(questions), settings.questions_per_step, seed=settings.seed)
        self.table = DifficultyTable(
            [q.id for q in questions],
            initial_ranks=[math.nan if q.rank is None else q.rank for q in questions],
            ties=budget.ties,
            fingerprint=dataset_fingerprint(questions),
            window=budget.p_window,
        )
        self.bounds = BudgetBounds.from_config(budget)
        self.controller = TemperatureController.from_config(
            temperature, settings.vocab_size, max_steps=settings.total_steps
        )
        self.step_count = 0
        self.weights_version = 0
        self.queue = GenerationQueue(
            rollout_pool,
            learner_group,
            draw=self._draw,
            max_staleness=settings.max_staleness,
            stale_policy=settings.stale_policy,
            total_steps=settings.total_steps,
            checkpoints_after=self._checkpoints_after,
        )
        self._checkpoint_seconds: float | None = None  # of the checkpoint after the last step, for the next record

    # -- the step -------------------------------------------------------------------------------------------

    def step(self) -> StepRecord:
        """Run one training step and return its record (core/step_record.py says what each field means).

        Each phase waits for the one before; with `max_staleness` = k >= 1 the queue also keeps the batches of
        the next k steps generating while this one trains (`GenerationQueue.train`)."""
        timer = PhaseTimer()
        with timer("step"):
            step = self.step_count
            issued = self.queue.take(step, self.weights_version, self.controller.temperature, timer)
            with timer("generate"):
                rollouts = self.queue.rollouts(issued, self.weights_version)
            with timer("score"):
                scored = self.scorer.score(rollouts, [q.ground_truth for q in issued.drawn.questions])
            with timer("update_table"):
                self._observe(scored, step)
            with timer("build_batch"):
                train_batch, stats = self._train_batch(scored, issued.drawn.questions)
            result = self.queue.train(train_batch, self.weights_version, timer)  # phase train (keep, wait ahead)
            with timer("sync"):
                self._sync_weights(result.weights_version)
            with timer("temperature"):
                control = self._adapt_temperature(result.entropy, step)
            with timer("epoch_end"):
                self._maybe_recompute(issued.drawn.batch.end_of_epoch, step)
            if self._samples_due(step):
                with timer("log_samples"):
                    self._log_samples(step, issued.drawn, scored, train_batch, result.weights_version - 1)
            self.step_count += 1
        heldout = self._heldout_if_due(timer)
        record = self._record(step, issued, scored, stats, result, control, timer, heldout)
        self._log(record)  # before the checkpoint: a resume from it never skips this step's record
        self._checkpoint_if_due()
        return record

    def start(self) -> None:
        """Begin a fresh run: send the initial temperature to every rollout worker (they hold the base policy,
        version 0, already); `restore` is its counterpart for a resumed one."""
        self.rollout_pool.set_temperature(TemperatureUpdate(self.controller.temperature, step=0))

    def _draw(self, step: int, timer: PhaseTimer) -> tuple[DrawnQuestions, list[RolloutRequest]]:
        """Step `step`'s questions (phase `sample`) and their budget as seeded requests (phase `allocate`)."""
        with timer("sample"):
            drawn = self._sample()
        with timer("allocate"):
            requests = self._allocate(drawn, step)
        return drawn, requests

    def _checkpoints_after(self, step: int) -> bool:
        """Whether a checkpoint is written after step `step` (0-based): the scheduler's own (`_checkpoint_due`), or
        the driver's at the run's end."""
        last = self.settings.total_steps - 1
        return self._checkpoint_due(step) or (bool(self.settings.checkpoint_dir) and step == last)

    def _checkpoint_due(self, step: int) -> bool:
        """Whether the scheduler checkpoints after step `step` (0-based): after every `checkpoint_every`-th."""
        every = self.settings.checkpoint_every
        in_run = step < self.settings.total_steps
        return bool(every and self.settings.checkpoint_dir and in_run and (step + 1) % every == 0)

    def _sample(self) -> DrawnQuestions:
        """Draw the step's questions and read their current ranks."""
        batch = self.sampler.next_batch()
        questions = [self.train.questions[i] for i in batch.indices]
        ranks = self.table.ranks([q.id for q in questions])
        return DrawnQuestions(batch, questions, ranks, self.bounds.n_min, self.bounds.n_max)

    def _allocate(self, drawn: DrawnQuestions, step: int) -> list[RolloutRequest]:
        """The step's budget of `n * B` rollouts, shared out within the bounds by `budget.allocator` from the
        questions' statistics in the difficulty table, as seeded requests."""
        ids = [q.id for q in drawn.questions]
        counts, windows = self.table.counts(ids), self.table.window_counts(ids)
        stats = [
            QuestionStats(a, c, r, wa, wc) for (a, c), (wa, wc), r in zip(counts, windows, drawn.ranks, strict=True)
        ]
        total = self.bounds.n * len(drawn.questions)
        shares = ALLOCATORS[self.budget_config.allocator](stats, total, drawn.n_min, drawn.n_max)
        return self._requests(drawn.batch.indices, [int(n) for n in shares], step)

    def _requests(self, indices: list[int], counts: list[int], step: int) -> list[RolloutRequest]:
        """The seeded requests of a step: question `indices[p]` gets `counts[p]` samples, seeded by
        `request_seed(seed, step, p)`."""
        return [
            RolloutRequest(
                question_id=self.train.questions[i].id,
                prompt_token_ids=tuple(self.train.prompt_token_ids[i]),
                num_samples=int(count),
                max_new_tokens=self.settings.max_new_tokens,
                seed=request_seed(self.settings.seed, step, position),
                step=step,
            )
            for position, (i, count) in enumerate(zip(indices, counts, strict=True))
        ]

    def _observe(self, scored: list[ScoredRollout], step: int) -> None:
        """Count every sample's correctness into the difficulty table."""
        self.table.observe(
            [s.rollout.question_id for s in scored for _ in s.correct], [c for s in scored for c in s.correct], step
        )

    def _train_batch(self, scored: list[ScoredRollout], questions: list[Question]) -> tuple[TrainBatch, BatchStats]:
        """The learner's batch, with the length bias judged on the questions' index ranks."""
        return build_train_batch(
            scored,
            self.table.index_ranks([q.id for q in questions]),
            self.settings.pad_token_id,
            length_bias_mu=self.reward_config.length_bias_mu,
            length_bias_threshold=self.reward_config.length_bias_threshold,
            sequence_mean=self.settings.loss_aggregation == "sequence_mean",
        )

    def _sync_weights(self, version: int) -> None:
        """Publish the learner group's weights, as `version`, to every rollout worker (over the configured
        transport: the weight group's broadcast, or the object store)."""
        self.rollout_pool.sync_weights(self.learner_group, version)
        self.weights_version = version

    def _adapt_temperature(self, entropy: float, step: int) -> TemperatureOutcome:
        """Feed the step's entropy to the controller and send the temperature it sets to the rollout workers."""
        target_before = self.controller.target_entropy
        next_temperature = self.controller.update(entropy)
        self.rollout_pool.set_temperature(TemperatureUpdate(next_temperature, step))
        # the target this step's entropy was held against: fixed during this update if it was unset
        target = target_before if target_before is not None else self.controller.target_entropy
        return TemperatureOutcome(next_temperature, target, self.controller.last_clamped)

    def _checkpoint_if_due(self) -> None:
        """Checkpoint after every `checkpoint_every`-th step, once the step's record is logged; its seconds go
        into the next step's record (`previous_checkpoint`)."""
        if self._checkpoint_due(self.step_count - 1):
            start = time.perf_counter()
            self.checkpoint()
            self._checkpoint_seconds = time.perf_counter() - start

    def _heldout_if_due(self, timer: PhaseTimer) -> dict[str, float]:
        """After every `plan.heldout_every`-th step: greedy held-out accuracy of the policy just trained (the
        step's `weights_version`), overall and per source; {} on other steps.

        Timed as the `heldout` phase, outside the step, so that step times stay comparable between runs that
        validate and runs that do not. Greedy decoding draws on no sampling seed, so it leaves the training
        rollouts as they would have been without it."""
        every = self.settings.heldout_every
        if not every or self.heldout is None or self.step_count % every:
            return {}
        with timer("heldout"):
            return greedy_accuracy(
                rollout_pool=self.rollout_pool,
                scorer=self.scorer,
                split=self.heldout,
                max_new_tokens=self.settings.max_new_tokens,
            )

    def _record(
        self,
        step: int,
        issued: IssuedBatch,
        scored: list[ScoredRollout],
        stats: BatchStats,
        result: LearnerResult,
        control: TemperatureOutcome,
        timer: PhaseTimer,
        heldout: dict[str, float],
    ) -> StepRecord:
        """The step's record from what its phases produced; its temperature is the one the batch was issued with.
        Ahead of training it also holds the samples' staleness against the weights trained on (`pipeline/`)."""
        drawn, requests, temperature = issued.drawn, issued.requests, issued.temperature
        rollouts = [s.rollout for s in scored]
        timing = dict(timer.seconds)
        if self._checkpoint_seconds is not None:
            timing[PREVIOUS_CHECKPOINT_PHASE], self._checkpoint_seconds = self._checkpoint_seconds, None
        return StepRecord(
            step=step,
            epoch=drawn.batch.epoch,
            end_of_epoch=drawn.batch.end_of_epoch,
            weights_version=self.weights_version,
            question_ids=tuple(q.id for q in drawn.questions),
            rollouts_per_question=tuple(r.num_samples for r in requests),
            generated_tokens=sum(len(c.token_ids) for r in rollouts for c in r.completions),
            generation_seconds=generation_seconds(rollouts),
            response_length_mean=stats.response_length_mean,
            truncated_fraction=stats.truncated_fraction,
            reward_mean=stats.reward_mean,
            accuracy=stats.accuracy,
            all_wrong_fraction=stats.all_wrong_fraction,
            all_correct_fraction=stats.all_correct_fraction,
            zero_advantage_fraction=stats.zero_advantage_fraction,
            reward_timeouts=sum(s.timeouts for s in scored),
            reward_errors=sum(s.errors for s in scored),
            question_ranks=tuple(float(r) for r in drawn.ranks),
            n_min=drawn.n_min,
            n_max=drawn.n_max,
            temperature=temperature,
            next_temperature=control.next_temperature,
            temperature_clamped=control.clamped,
            target_entropy=control.target_entropy,
            entropy=result.entropy,
            learner={name: value for name, value in result.metrics.items() if name != "entropy"},
            timing=timing,
            heldout=heldout,
            staleness=self.queue.staleness(rollouts, result.weights_version - 1),
            stale_dropped=issued.stale_dropped,
            stale_kept=issued.stale_kept,
            coverage=self.table.coverage,
            distinct_correct=distinct_correct_per_group(scored, self._answer_key) if self._answer_key else math.nan,
        )

    def _samples_due(self, step: int) -> bool:
        """Whether step `step` (0-based) logs a few whole groups: every `samples_every`-th, from the first."""
        every = self.settings.samples_every
        return bool(every and self.run_log is not None and step % every == 0)

    def _log_samples(
        self, step: int, drawn: DrawnQuestions, scored: list[ScoredRollout], batch: TrainBatch, trained: int
    ) -> None:
        """Send a few of the step's groups, whole, to the run log (`core.samples`)."""
        groups = sample_groups(
            step=step,
            scored=scored,
            prompts=["\n".join(m.content for m in q.prompt) for q in drawn.questions],
            ground_truths=[q.ground_truth for q in drawn.questions],
            ranks=drawn.ranks,
            advantages=batch.advantages.tolist(),
            trained_version=trained,
            count=self.settings.sample_groups,
            max_chars=self.settings.sample_chars,
            seed=request_seed(self.settings.seed, step, 0),
        )
        self.run_log.log_samples(step, groups)

    def _log(self, record: StepRecord) -> None:
        """Send the record to the run log; at epoch end also the difficulty table and the epoch's records."""
        self._epoch_records.append(record)
        if self.run_log is not None:
            self.run_log.log_step(record)
        if record.end_of_epoch:
            if self.run_log is not None:
                self.run_log.log_epoch(record.epoch, record.step, self.table, self._epoch_records)
            self._epoch_records = []

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

    def evaluate(self, sample: bool = True, temperatures: tuple[float, ...] = ()) -> dict[str, float]:
        """The current policy on the held-out questions: greedy accuracy (overall, per source) and, when `sample`
        and the plan ask for it, mean@k and pass@k from k sampled answers each (as `sampled/<key>`), at the
        evaluation temperature and at each of `temperatures` (as `sampled_t<T>/<key>`, e.g. `sampled_t0.6/`, from
        `after_temperature_samples` answers a question)."""
        if self.heldout is None:
            return {}
        result = greedy_accuracy(
            rollout_pool=self.rollout_pool,
            scorer=self.scorer,
            split=self.heldout,
            max_new_tokens=self.settings.max_new_tokens,
        )
        if self.settings.heldout_samples and sample:
            sampled = self._sampled_pass_at_k(self.settings.eval_temperature, self.settings.heldout_samples)
            result.update({f"sampled/{key}": value for key, value in sampled.items()})
            for temperature in temperatures:
                sampled = self._sampled_pass_at_k(temperature, self.settings.after_temperature_samples)
                result.update({f"sampled_t{temperature:g}/{key}": value for key, value in sampled.items()})
        return result

    def _sampled_pass_at_k(self, temperature: float, k: int) -> dict[str, float]:
        """Held-out pass@k and mean@k from `k` answers a question sampled at `temperature`."""
        return sampled_pass_at_k(
            rollout_pool=self.rollout_pool,
            scorer=self.scorer,
            split=self.heldout,
            max_new_tokens=self.settings.max_new_tokens,
            num_samples=k,
            temperature=temperature,
            ks=list(self.settings.heldout_ks or (1, k)),
            seed=self.settings.seed + HELDOUT_SEED_OFFSET,
            restore_temperature=self.controller.temperature,
        )

    def finish(self, summary: dict[str, Any]) -> None:
        """Write the run's summary and close the run log."""
        if self.run_log is not None:
            self.run_log.log_summary(summary)
            self.run_log.close()

    def close(self) -> None:
        """Flush and close the run log (`metrics.jsonl`, the W&B run) without a summary, as when the run stops
        on a failure; a no-op after `finish` or a second call."""
        if self.run_log is not None:
            self.run_log.close()

    # -- checkpoints ----------------------------------------------------------------------------------------

    def checkpoint(self) -> str:
        """Save the policy, the optimizer and the algorithmic state as `<checkpoint_dir>/step_<k>/`, atomically.

        Everything is written into a hidden temporary folder, flushed to disk, marked whole by a manifest written
        last and renamed into place (`actors.checkpoint_files.publish`; an earlier folder of the same step is moved
        aside, not deleted, until then), so a process killed mid-save leaves a complete checkpoint as the latest
        loadable one.
        """
        final = Path(self.settings.checkpoint_dir) / f"step_{self.step_count}"
        partial = checkpoint_files.partial_folder(final)
        self.learner_group.save(str(partial / "policy"))
        self.table.write_parquet(partial / "difficulty.parquet")
        state = {**self.state_dict(), "pipeline": self.queue.save(partial / ROLLOUT_WEIGHTS)}
        (partial / "scheduler.json").write_text(json.dumps(state, indent=1), encoding="utf-8")
        checkpoint_files.publish(partial, final)
        log.info("checkpoint written: %s", final)
        return str(final)

    def restore(self, directory: str) -> int:
        """Load a checkpoint written by `checkpoint()`, generate again the batches it had queued (with the
        weights and temperatures they were issued with), push its weights and temperature to the rollout
        workers, and return the step it continues from."""
        path = Path(directory)
        self.table.read_parquet(path / "difficulty.parquet")  # first: it refuses a table of other questions
        state = json.loads((path / "scheduler.json").read_text(encoding="utf-8"))
        self.load_state_dict(state)
        self.queue.restore_state(state.get("pipeline", []), self.train.questions, self._requests)
        self.learner_group.load(str(path / "policy"))
        self.queue.regenerate(path / ROLLOUT_WEIGHTS, lambda: self._sync_weights(self.weights_version))
        self._sync_weights(self.weights_version)
        self.rollout_pool.set_temperature(TemperatureUpdate(self.controller.temperature, self.step_count))
        if self.run_log is not None:
            kept = self.run_log.rewind(self.step_count)
            # the epoch's steps before the checkpoint: its views at epoch end cover the whole epoch, as uninterrupted
            epoch = self.queue.next_epoch(default=self.sampler.epoch)  # the epoch of the next step to train
            self._epoch_records = [record for record in kept if record.epoch == epoch]
        return self.step_count

    def state_dict(self) -> dict[str, Any]:
        """The algorithmic state but the difficulty table (saved as Parquet beside it, with the dataset's
        fingerprint) and the generation queue (`GenerationQueue.save`): plain JSON values."""
        return {
            "step": self.step_count,
            "weights_version": self.weights_version,
            "sampler": self.sampler.state_dict(),
            "bounds": self.bounds.state_dict(),
            "controller": self.controller.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore `state_dict()` (the difficulty table, read first, has refused a checkpoint of other questions)."""
        self.step_count = int(state["step"])
        self.weights_version = int(state["weights_version"])
        self.sampler.load_state_dict(state["sampler"])
        self.bounds.load_state_dict(state["bounds"])
        self.controller.load_state_dict(state["controller"])


def latest_checkpoint(checkpoint_dir: str | Path) -> Path | None:
    """The complete checkpoint (one that matches its manifest) with the highest step under `checkpoint_dir`, or
    None if there is none; incomplete folders are skipped with a warning (`actors.checkpoint_files`)."""
    return checkpoint_files.latest_checkpoint(checkpoint_dir)
