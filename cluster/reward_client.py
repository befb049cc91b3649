"""The reward scorer actor behind plain calls, each with a deadline (as `RolloutPool` and `LearnerGroup` do for
theirs), so that a scorer that hangs or dies stops the step with an error instead of a wait without end."""

from __future__ import annotations

import logging
import math

import ray

from core.config import RewardConfig
from core.messages import RewardResult, Rollout, ScoredRollout

log = logging.getLogger(__name__)

CALL_SLACK_S = 60.0
"""Added to every call's worst case: the actor call itself, and pool workers replaced after kills."""


class RewardScorerClient:
    """Calls the `RewardScorer` actor; every call waits at most as long as its items can take."""

    def __init__(self, handle: ray.actor.ActorHandle, config: RewardConfig) -> None:
        self.handle = handle
        self.config = config

    def deadline_s(self, items: int) -> float:
        """The longest a call scoring `items` completions can take: each one killed at `reward.timeout_s`, on
        `reward.num_workers` processes, plus `CALL_SLACK_S`."""
        return self.config.timeout_s * math.ceil(items / self.config.num_workers) + CALL_SLACK_S

    def score(self, rollouts: list[Rollout], ground_truths: list[str]) -> list[ScoredRollout]:
        """The scorer's `score`; GetTimeoutError past the deadline."""
        items = sum(len(r.completions) for r in rollouts)
        return ray.get(self.handle.score.remote(rollouts, ground_truths), timeout=self.deadline_s(items))

    def score_texts(self, texts: list[str], ground_truths: list[str]) -> list[RewardResult]:
        """The scorer's `score_texts`; GetTimeoutError past the deadline."""
        return ray.get(self.handle.score_texts.remote(texts, ground_truths), timeout=self.deadline_s(len(texts)))

    def shutdown(self, timeout_s: float = 30.0) -> None:
        """Stop the scorer's worker processes cleanly, then the actor (killed anyway if closing fails)."""
        try:
            ray.get(self.handle.close.remote(), timeout=timeout_s)
        except Exception as err:  # noqa: BLE001 - stopping what is left matters more
            log.warning("reward scorer did not close cleanly: %r", err)
        ray.kill(self.handle, no_restart=True)
