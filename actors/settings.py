"""The scheduler's settings for a run (`SchedulerSettings`), computed from the config once, before any actor
starts: questions and steps, response length, seeds, held-out evaluation, checkpoints, generation ahead."""

from __future__ import annotations

from dataclasses import dataclass

from core.config import LossAggregation, RunConfig, StalePolicy
from core.sampler import EpochSampler
from tasks.registry import ANSWER_KEY_FNS


@dataclass(frozen=True)
class SchedulerSettings:
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
    after_temperature_samples: int = 16
    """Answers per held-out question at each extra temperature `evaluate(temperatures=...)` is asked for."""
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
    samples_every: int = 0
    """Log a few whole groups every K-th step (`log.samples_every`); 0: never."""
    sample_groups: int = 4
    """Groups logged on those steps (`log.sample_groups`)."""
    sample_chars: int = 2000
    """Characters of text kept per prompt and response (`log.sample_chars`)."""
    loss_aggregation: LossAggregation = LossAggregation.token_mean
    """How the loss weighs the responses' tokens (`learner.loss_aggregation`): the batch's advantages carry it."""
    answer_key_fn: str = ""
    """`module:function` giving a completion's answer in canonical form (None when it has none), for counting
    distinct correct answers per group; empty: not counted (the task's, `tasks.registry.ANSWER_KEY_FNS`)."""

    @classmethod
    def from_config(
        cls, cfg: RunConfig, num_questions: int, pad_token_id: int, vocab_size: int, checkpoint_dir: str
    ) -> SchedulerSettings:
        """The settings of a run of `cfg` on `num_questions` training questions: its number of steps (epochs of
        `num_questions / train.questions_per_step` steps, at most `train.max_steps` when set) computed here
        once, the rest read from the config."""
        steps_per_epoch = EpochSampler(num_questions, cfg.train.questions_per_step, cfg.train.seed).steps_per_epoch
        total_steps = cfg.train.epochs * steps_per_epoch
        if cfg.train.max_steps > 0:
            total_steps = min(total_steps, cfg.train.max_steps)
        return cls(
            questions_per_step=cfg.train.questions_per_step,
            total_steps=total_steps,
            max_new_tokens=cfg.rollout.max_new_tokens,
            seed=cfg.train.seed,
            loss_aggregation=cfg.learner.loss_aggregation,
            pad_token_id=pad_token_id,
            vocab_size=vocab_size,
            heldout_samples=cfg.eval.heldout_samples,
            heldout_ks=cfg.eval.heldout_ks(),
            eval_temperature=cfg.eval.temperature,
            after_temperature_samples=cfg.eval.after_temperature_samples,
            checkpoint_dir=checkpoint_dir,
            checkpoint_every=cfg.train.checkpoint_every,
            heldout_every=cfg.eval.every_steps,
            max_staleness=cfg.train.max_staleness,
            stale_policy=cfg.train.stale_policy,
            samples_every=cfg.log.samples_every,
            sample_groups=cfg.log.sample_groups,
            sample_chars=cfg.log.sample_chars,
            answer_key_fn=ANSWER_KEY_FNS.get(cfg.data.task, ""),
        )
