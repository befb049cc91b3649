"""The scheduler: owns E3's algorithmic state and runs one training step at a time.

State (all saved with a checkpoint): the step counter, the seeded epoch sampler, the difficulty table, the
budget bounds, the temperature controller, the weights version, and with `max_staleness` >= 1 the batches issued
ahead of training (actors/pipeline.py says how that pipeline runs E3, and with what lag). The rollout pool, the
learner group and the reward scorer are handed in by `cluster/`; this class only calls their plain methods, so a
test can build it in-process with any of them.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from actors import checkpoint_files
from actors.evaluation import greedy_accuracy, sampled_pass_at_k
from actors.pipeline import IssuedBatch, Sampled, staleness_histogram
from actors.protocols import LearnerGroupLike, RolloutPoolLike, RunLogLike, ScorerLike
from core.allocators import ALLOCATORS, QuestionStats
from core.batch import BatchStats, build_train_batch
from core.budget import BudgetBounds
from core.config import BudgetConfig, RewardConfig, StalePolicy, TemperatureConfig
from core.difficulty import DifficultyTable
from core.messages import LearnerResult, Rollout, RolloutRequest, ScoredRollouts, TemperatureUpdate, TrainBatch
from core.sampler import EpochBatch, EpochSampler
from core.step_record import PREVIOUS_CHECKPOINT_PHASE, StepRecord
from core.temperature import TemperatureController
from tasks.dataset import Question, dataset_fingerprint
from tasks.prepare import Split

log = logging.getLogger(__name__)
ROLLOUT_WEIGHTS = "rollout_weights"
"""A checkpoint's folder of the weights its queued generation was issued with (`v<version>/model.safetensors`)."""


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
    heldout_ks: tuple[int, ...] = ()
    """The k of those pass@k and mean@k (each at most `heldout_samples`); empty: 1 and `heldout_samples`."""
    eval_temperature: float = 1.0
    """Sampling temperature of those answers."""
    checkpoint_dir: str = ""
    """Where `checkpoint()` writes `step_<k>/` folders; empty: no checkpoints."""
    checkpoint_every: int = 0
    """Checkpoint after every K-th step (the driver also checkpoints at the end); 0: only at the end."""
    heldout_every: int = 0
    """Greedy held-out accuracy after every K-th step, in that step's record; 0: never."""
    max_staleness: int = 0
    """Steps generation runs ahead of training (`train.max_staleness`); 0: the synchronous loop."""
    stale_policy: StalePolicy = StalePolicy.wait
    """A rollout older than `max_staleness` versions when its step trains: `wait` keeps it, `drop` generates it
    again with the current weights (`train.stale_policy`)."""


class PhaseTimer:
    """Times named phases of one step, in seconds, in the order they first ran."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - start


def request_seed(seed: int, step: int, position: int) -> int:
    """A reproducible 31-bit seed for one rollout request of one step."""
    return int(np.random.SeedSequence([seed, step, position]).generate_state(1)[0] & 0x7FFFFFFF)


@dataclass(frozen=True)
class _Control:
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
        plan: StepPlan,
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
        self.plan = plan
        self.budget_config = budget
        self.reward_config = reward
        self.rollout_pool = rollout_pool
        self.learner_group = learner_group
        self.scorer = scorer
        self.heldout = heldout
        self.run_log = run_log
        self._epoch_records: list[StepRecord] = []

        questions = train.questions
        self.sampler = EpochSampler(len(questions), plan.questions_per_step, seed=plan.seed)
        self.table = DifficultyTable(
            [q.id for q in questions],
            initial_ranks=[math.nan if q.rank is None else q.rank for q in questions],
            ties=budget.ties,
            fingerprint=dataset_fingerprint(questions),
        )
        self.bounds = BudgetBounds.from_config(budget)
        self.controller = TemperatureController.from_config(temperature, plan.vocab_size, max_steps=plan.total_steps)
        self.step_count = 0
        self.weights_version = 0
        self.pipeline: deque[IssuedBatch] = deque()  # batches issued ahead of training, oldest first
        self._checkpoint_seconds: float | None = None  # of the checkpoint after the last step, for the next record

    # -- the step -------------------------------------------------------------------------------------------

    def step(self) -> StepRecord:
        """Run one training step and return its record (core/step_record.py says what each field means).

        With `plan.max_staleness` = k >= 1 the batches of the next k steps generate while this one trains
        (actors/pipeline.py); with k = 0 each phase waits for the one before."""
        timer = PhaseTimer()
        with timer("step"):
            step = self.step_count
            self._issue_through(step + self.plan.max_staleness, timer)  # phases sample, allocate (and submit)
            issued = self.pipeline.popleft()
            with timer("generate"):
                rollouts = self._rollouts_of(issued)
            with timer("score"):
                scored = self.scorer.score(rollouts, [q.ground_truth for q in issued.sampled.questions])
            with timer("update_table"):
                self._observe(scored, step)
            with timer("build_batch"):
                train_batch, stats = self._train_batch(scored, issued.sampled.questions)
            self._keep_weights(timer)  # ahead of training, on steps whose checkpoints save the queued weights
            with timer("train"):
                result = self.learner_group.train(train_batch, self.weights_version)
            self._collect_ahead(result.weights_version, timer)  # ahead of training: weights move between batches
            with timer("sync"):
                self._sync_weights(result.weights_version)
            with timer("temperature"):
                control = self._adapt_temperature(result.entropy, step)
            with timer("epoch_end"):
                self._maybe_recompute(issued.sampled.batch.end_of_epoch, step)
            self.step_count += 1
            self._release_weights()
        heldout = self._heldout_if_due(timer)
        record = self._record(step, issued, scored, stats, result, control, timer, heldout)
        self._log(record)  # before the checkpoint: a resume from it never skips this step's record
        self._checkpoint_if_due()
        return record

    # -- the pipeline (plan.max_staleness >= 1; with 0 it issues one batch and generates it in the step) ------

    def _issue_through(self, last_step: int, timer: PhaseTimer) -> None:
        """Issue the batches of every step up to `last_step` not issued yet, in step order: draw the questions,
        allocate the budget from the table as it is now, and (ahead of training) submit the requests, which the
        workers sample with the weights and temperature they hold now. Steps past the run's end are drawn and
        allocated (a checkpoint then saves them as an uninterrupted run would have them) but not generated."""
        next_step = self.pipeline[-1].step + 1 if self.pipeline else self.step_count
        for step in range(next_step, last_step + 1):
            with timer("sample"):
                sampled = self._sample()
            with timer("allocate"):
                requests = self._allocate(sampled, step)
            issued = IssuedBatch(step, sampled, requests, self.weights_version, self.controller.temperature)
            if self.plan.max_staleness > 0 and step < self.plan.total_steps:
                with timer("submit"):
                    issued.pending = self.rollout_pool.submit(requests)
            self.pipeline.append(issued)

    def _rollouts_of(self, issued: IssuedBatch) -> list[Rollout]:
        """The batch's rollouts (generated now if it was not submitted, waited for if it still generates), with
        any older than `plan.max_staleness` versions dropped and generated again (`stale_policy=drop`) or kept
        (`wait`), counted on `issued` (`dropped`, `kept_stale`)."""
        if self.plan.max_staleness == 0:
            return self.rollout_pool.generate(issued.requests)
        rollouts = self._collected(issued)
        stale = [
            i for i, r in enumerate(rollouts) if self.weights_version - r.weights_version > self.plan.max_staleness
        ]
        samples = sum(len(rollouts[i].completions) for i in stale)
        if not stale:
            return rollouts
        log.warning(
            "step %d: %d rollouts are more than %d versions older than version %d: %s",
            issued.step,
            len(stale),
            self.plan.max_staleness,
            self.weights_version,
            "generating them again" if self.plan.stale_policy == "drop" else "training on them (stale_policy=wait)",
        )
        if self.plan.stale_policy != "drop":
            issued.kept_stale = samples
            return rollouts
        fresh = self.rollout_pool.generate([issued.requests[i] for i in stale])  # same seeds, current weights
        for i, rollout in zip(stale, fresh, strict=True):
            rollouts[i] = rollout
        issued.dropped = samples
        return rollouts

    def _collected(self, issued: IssuedBatch) -> list[Rollout]:
        """The batch's rollouts: collected from the pool (submitted first if it was not)."""
        if issued.rollouts is None:
            pending = issued.pending if issued.pending is not None else self.rollout_pool.submit(issued.requests)
            issued.rollouts, issued.pending = self.rollout_pool.collect(pending), None
        return issued.rollouts

    def _keep_weights(self, timer: PhaseTimer) -> None:
        """Ahead of training, before the learner moves on (timed as `keep_weights`): on a step whose version a
        checkpoint will need, have the pool keep the weights the queued batches were issued with, for the
        checkpoint to save (a full gather of the policy; meanwhile a worker lost while it generates them is
        restored to them exactly). A batch issued at step s with version s stays queued through the checkpoints
        after steps s .. s + k - 1 (k = `max_staleness`); on every other step nothing is gathered. Nothing (and no
        phase) in the synchronous loop."""
        k = self.plan.max_staleness
        if k == 0:
            return
        with timer("keep_weights"):
            queued = any(b.version == self.weights_version for b in self.pipeline)
            if queued and any(self._checkpoints_after(s) for s in range(self.step_count, self.step_count + k)):
                self.rollout_pool.keep_weights(self.learner_group, self.weights_version)

    def _checkpoints_after(self, step: int) -> bool:
        """Whether a checkpoint is written after step `step` (0-based): every `checkpoint_every`-th, and the
        driver's at the run's end."""
        if not self.plan.checkpoint_dir or step >= self.plan.total_steps:
            return False
        every = self.plan.checkpoint_every
        return step == self.plan.total_steps - 1 or bool(every and (step + 1) % every == 0)

    def _collect_ahead(self, learner_version: int, timer: PhaseTimer) -> None:
        """Ahead of training (timed as `wait_ahead`), once the learner holds `learner_version`: wait for every
        batch generating ahead (they ran while the learner trained), so that the weights are pushed between
        generation batches, never into one. A worker lost meanwhile is replaced with the learner's
        `learner_version`, stamped as such, unless its batch's weights were kept (`RolloutPool.track_source`).
        Nothing (and no phase) in the synchronous loop."""
        if self.plan.max_staleness == 0:
            return
        self.rollout_pool.track_source(self.learner_group, learner_version)
        with timer("wait_ahead"):
            for issued in self.pipeline:
                if issued.pending is not None:
                    self._collected(issued)

    def _release_weights(self) -> None:
        """Ahead of training: let the pool drop kept weights no queued batch was issued with any more."""
        if self.plan.max_staleness > 0:
            self.rollout_pool.release_weights(min((b.version for b in self.pipeline), default=self.weights_version))

    def _sample(self) -> Sampled:
        """Draw the step's questions and read their current ranks."""
        batch = self.sampler.next_batch()
        questions = [self.train.questions[i] for i in batch.indices]
        ranks = self.table.ranks([q.id for q in questions])
        return Sampled(batch, questions, ranks, self.bounds.n_min, self.bounds.n_max)

    def _allocate(self, sampled: Sampled, step: int) -> list[RolloutRequest]:
        """The step's budget of `n * B` rollouts, shared out within the bounds by `budget.allocator` from the
        questions' statistics in the difficulty table, as seeded requests."""
        ids = [q.id for q in sampled.questions]
        stats = [QuestionStats(a, c, r) for (a, c), r in zip(self.table.counts(ids), sampled.ranks, strict=True)]
        total = self.bounds.n * len(sampled.questions)
        counts = ALLOCATORS[self.budget_config.allocator](stats, total, sampled.n_min, sampled.n_max)
        return self._requests(sampled.batch.indices, [int(c) for c in counts], step)

    def _requests(self, indices: list[int], counts: list[int], step: int) -> list[RolloutRequest]:
        """The seeded requests of a step: question `indices[p]` gets `counts[p]` samples, seeded by
        `request_seed(seed, step, p)`."""
        return [
            RolloutRequest(
                question_id=self.train.questions[i].id,
                prompt_token_ids=tuple(self.train.prompt_token_ids[i]),
                num_samples=int(count),
                max_new_tokens=self.plan.max_new_tokens,
                seed=request_seed(self.plan.seed, step, position),
                step=step,
            )
            for position, (i, count) in enumerate(zip(indices, counts, strict=True))
        ]

    def _observe(self, scored: list[ScoredRollouts], step: int) -> None:
        """Count every sample's correctness into the difficulty table."""
        self.table.observe(
            [s.rollout.question_id for s in scored for _ in s.correct], [c for s in scored for c in s.correct], step
        )

    def _train_batch(self, scored: list[ScoredRollouts], questions: list[Question]) -> tuple[TrainBatch, BatchStats]:
        """The learner's batch, with the length bias judged on the questions' index ranks."""
        return build_train_batch(
            scored,
            self.table.index_ranks([q.id for q in questions]),
            self.plan.pad_token_id,
            length_bias_mu=self.reward_config.length_bias_mu,
            length_bias_threshold=self.reward_config.length_bias_threshold,
        )

    def _sync_weights(self, version: int) -> None:
        """Publish the learner group's weights, as `version`, to every rollout worker (over the configured
        transport: the weight group's broadcast, or the object store)."""
        self.rollout_pool.sync_weights(self.learner_group, version)
        self.weights_version = version

    def _adapt_temperature(self, entropy: float, step: int) -> _Control:
        """Feed the step's entropy to the controller and send the temperature it sets to the rollout workers."""
        target_before = self.controller.target_entropy
        next_temperature = self.controller.update(entropy)
        self.rollout_pool.set_temperature(TemperatureUpdate(next_temperature, step))
        # the target this step's entropy was held against: fixed during this update if it was unset
        target = target_before if target_before is not None else self.controller.target_entropy
        return _Control(next_temperature, target, self.controller.last_clamped)

    def _checkpoint_if_due(self) -> None:
        """Checkpoint after every `plan.checkpoint_every`-th step, once the step's record is logged; its seconds
        go into the next step's record (`previous_checkpoint`)."""
        every = self.plan.checkpoint_every
        if every and self.plan.checkpoint_dir and self.step_count % every == 0:
            start = time.perf_counter()
            self.checkpoint()
            self._checkpoint_seconds = time.perf_counter() - start

    def _heldout_if_due(self, timer: PhaseTimer) -> dict[str, float]:
        """After every `plan.heldout_every`-th step: greedy held-out accuracy of the policy just trained (the
        step's `weights_version`), overall and per source; {} on other steps.

        Timed as the `heldout` phase, outside the step, so that step times stay comparable between runs that
        validate and runs that do not. Greedy decoding draws on no sampling seed, so it leaves the training
        rollouts as they would have been without it."""
        every = self.plan.heldout_every
        if not every or self.heldout is None or self.step_count % every:
            return {}
        with timer("heldout"):
            return greedy_accuracy(
                rollout_pool=self.rollout_pool,
                scorer=self.scorer,
                split=self.heldout,
                max_new_tokens=self.plan.max_new_tokens,
            )

    def _record(
        self,
        step: int,
        issued: IssuedBatch,
        scored: list[ScoredRollouts],
        stats: BatchStats,
        result: LearnerResult,
        control: _Control,
        timer: PhaseTimer,
        heldout: dict[str, float],
    ) -> StepRecord:
        """The step's record from what its phases produced; its temperature is the one the batch was issued with.
        Ahead of training it also holds the samples' staleness against the weights trained on (`pipeline/`)."""
        sampled, requests, temperature = issued.sampled, issued.requests, issued.temperature
        rollouts = [s.rollout for s in scored]
        ahead = self.plan.max_staleness > 0
        timing = dict(timer.seconds)
        if self._checkpoint_seconds is not None:
            timing[PREVIOUS_CHECKPOINT_PHASE], self._checkpoint_seconds = self._checkpoint_seconds, None
        return StepRecord(
            step=step,
            epoch=sampled.batch.epoch,
            end_of_epoch=sampled.batch.end_of_epoch,
            weights_version=self.weights_version,
            question_ids=tuple(q.id for q in sampled.questions),
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
            question_ranks=tuple(float(r) for r in sampled.ranks),
            n_min=sampled.n_min,
            n_max=sampled.n_max,
            temperature=temperature,
            next_temperature=control.next_temperature,
            temperature_clamped=control.clamped,
            target_entropy=control.target_entropy,
            entropy=result.entropy,
            learner={name: value for name, value in result.metrics.items() if name != "entropy"},
            timing=timing,
            heldout=heldout,
            staleness=staleness_histogram(rollouts, result.weights_version - 1) if ahead else (),
            stale_dropped=issued.dropped,
            stale_kept=issued.kept_stale,
        )

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

    def evaluate(self, sample: bool = True) -> dict[str, float]:
        """The current policy on the held-out questions: greedy accuracy (overall, per source) and, when `sample`
        and the plan ask for it, mean@k and pass@k from k sampled answers each (as `sampled/<key>`)."""
        if self.heldout is None:
            return {}
        result = greedy_accuracy(
            rollout_pool=self.rollout_pool,
            scorer=self.scorer,
            split=self.heldout,
            max_new_tokens=self.plan.max_new_tokens,
        )
        k = self.plan.heldout_samples
        if k and sample:
            sampled = sampled_pass_at_k(
                rollout_pool=self.rollout_pool,
                scorer=self.scorer,
                split=self.heldout,
                max_new_tokens=self.plan.max_new_tokens,
                num_samples=k,
                temperature=self.plan.eval_temperature,
                ks=list(self.plan.heldout_ks or (1, k)),
                seed=self.plan.seed + 7919,
                restore_temperature=self.controller.temperature,
            )
            result.update({f"sampled/{key}": value for key, value in sampled.items()})
        return result

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
        final = Path(self.plan.checkpoint_dir) / f"step_{self.step_count}"
        partial = checkpoint_files.partial_folder(final)
        self.learner_group.save(str(partial / "policy"))
        self.table.write_parquet(partial / "difficulty.parquet")
        self._save_pipeline_weights(partial / ROLLOUT_WEIGHTS)
        (partial / "scheduler.json").write_text(json.dumps(self.state_dict(), indent=1), encoding="utf-8")
        checkpoint_files.publish(partial, final)
        log.info("checkpoint written: %s", final)
        return str(final)

    def _save_pipeline_weights(self, folder: Path) -> None:
        """Write the weights every queued batch was issued with, one folder `v<version>` each, so that a restore
        can generate the batches again exactly; a version the pool did not keep is logged and left out (a
        restore then generates its batches with the checkpoint's weights)."""
        for version in sorted({b.version for b in self.pipeline}):
            try:
                self.rollout_pool.save_weights(version, str(folder / f"v{version}"))
            except KeyError:
                log.warning(
                    "checkpoint: weights version %d of queued generation was not kept; a resumed run "
                    "generates those batches with the checkpoint's weights instead",
                    version,
                )

    def restore(self, directory: str) -> int:
        """Load a checkpoint written by `checkpoint()`, generate again the batches it had queued (with the
        weights and temperatures they were issued with), push its weights and temperature to the rollout
        workers, and return the step it continues from."""
        path = Path(directory)
        self.table.read_parquet(path / "difficulty.parquet")  # first: it refuses a table of other questions
        self.load_state_dict(json.loads((path / "scheduler.json").read_text(encoding="utf-8")))
        self.learner_group.load(str(path / "policy"))
        self._regenerate_pipeline(path / ROLLOUT_WEIGHTS)
        self._sync_weights(self.weights_version)
        self.rollout_pool.set_temperature(TemperatureUpdate(self.controller.temperature, self.step_count))
        if self.run_log is not None:
            kept = self.run_log.rewind(self.step_count)
            # the epoch's steps before the checkpoint: its views at epoch end cover the whole epoch, as uninterrupted
            epoch = self.pipeline[0].sampled.batch.epoch if self.pipeline else self.sampler.epoch  # the next to train
            self._epoch_records = [record for record in kept if record.epoch == epoch]
        return self.step_count

    def _regenerate_pipeline(self, folder: Path) -> None:
        """Generate the restored queue's batches again as they were issued: version by version, the workers
        load the weights saved for it and take the batch's temperature, and each batch is generated (the same
        seeds: the same rollouts). The versions whose weights are missing come last, generated with the
        checkpoint's own (newer) weights (logged: the resumed run then departs from an uninterrupted one), since
        a worker refuses a version older than the one it holds."""
        batches = [b for b in self.pipeline if b.step < self.plan.total_steps]
        versions = sorted({b.version for b in batches})
        saved = [v for v in versions if (folder / f"v{v}" / "model.safetensors").is_file()]
        for version in saved + [v for v in versions if v not in saved]:
            if version in saved:
                self.rollout_pool.load_policy(str(folder / f"v{version}"), version)
            else:
                log.warning(
                    "restore: no saved weights version %d for queued generation; generating it with the "
                    "checkpoint's weights (version %d)",
                    version,
                    self.weights_version,
                )
                self._sync_weights(self.weights_version)
            for issued in (b for b in batches if b.version == version):
                self.rollout_pool.set_temperature(TemperatureUpdate(issued.temperature, issued.step))
                self._collected(issued)

    def state_dict(self) -> dict[str, Any]:
        """The algorithmic state but the difficulty table (saved as Parquet beside it, with the dataset's
        fingerprint): plain JSON values; `pipeline` lists the batches issued ahead of training (what
        regenerates each, not its outputs)."""
        return {
            "step": self.step_count,
            "weights_version": self.weights_version,
            "sampler": self.sampler.state_dict(),
            "bounds": self.bounds.state_dict(),
            "controller": self.controller.state_dict(),
            "pipeline": [issued.state_dict() for issued in self.pipeline],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore `state_dict()` (the difficulty table, read first, has refused a checkpoint of other questions)."""
        self.step_count = int(state["step"])
        self.weights_version = int(state["weights_version"])
        self.sampler.load_state_dict(state["sampler"])
        self.bounds.load_state_dict(state["bounds"])
        self.controller.load_state_dict(state["controller"])
        self.pipeline = deque(self._issued_from_state(entry) for entry in state.get("pipeline", []))

    def _issued_from_state(self, entry: dict[str, Any]) -> IssuedBatch:
        """A queued batch from its `IssuedBatch.state_dict()`: the questions, ranks and bounds it was drawn
        with, and its requests rebuilt with their seeds (not yet generated)."""
        batch = EpochBatch(list(entry["indices"]), int(entry["epoch"]), int(entry["step_in_epoch"]),
                           bool(entry["end_of_epoch"]))  # fmt: skip
        questions = [self.train.questions[i] for i in batch.indices]
        sampled = Sampled(
            batch, questions, [float(r) for r in entry["ranks"]], int(entry["n_min"]), int(entry["n_max"])
        )
        step = int(entry["step"])
        requests = self._requests(batch.indices, [int(c) for c in entry["counts"]], step)
        return IssuedBatch(step, sampled, requests, int(entry["version"]), float(entry["temperature"]))


def latest_checkpoint(checkpoint_dir: str | Path) -> Path | None:
    """The complete checkpoint (one that matches its manifest) with the highest step under `checkpoint_dir`, or
    None if there is none; incomplete folders are skipped with a warning (`actors.checkpoint_files`)."""
    return checkpoint_files.latest_checkpoint(checkpoint_dir)


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
