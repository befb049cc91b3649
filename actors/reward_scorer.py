"""The reward scorer: scores every completion against its ground truth, in worker processes, with a time limit.

A pathological completion (a huge expression that sends a symbolic checker into a long search, say) must never
stall a training step: each completion is scored by its own task in a pebble process pool, and a task that runs
past `timeout_s` is killed, its process replaced, and the completion scored 0 (counted in `timeouts`).
"""

from __future__ import annotations

import importlib
import logging
import multiprocessing
from collections.abc import Callable
from concurrent.futures import TimeoutError as FutureTimeout

from pebble import ProcessPool

from core.config import RewardConfig
from core.messages import Rollout, ScoredRollouts

log = logging.getLogger(__name__)


def load_reward_fn(spec: str) -> Callable[[str, str], float]:
    """Import the reward function named `module:function`; raise ValueError naming the spec if it is not one."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"reward function {spec!r}: expected 'module:function'")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"reward function {spec!r} cannot be imported: {err}") from err
    if not callable(fn):
        raise ValueError(f"reward function {spec!r} is not callable")
    return fn


def _score_one(spec: str, completion: str, ground_truth: str) -> float:
    """Runs in a worker process: the reward of one completion as a float (exceptions propagate to the parent)."""
    return float(load_reward_fn(spec)(completion, ground_truth))


class RewardScorer:
    """Scores rollouts with the task's reward function in `config.num_workers` processes.

    Promises: one reward and one correctness flag per completion, in order; a completion whose scoring raises or
    times out scores 0 and is not correct; scoring never raises because of a completion's content.
    """

    def __init__(self, reward_fn: str, config: RewardConfig) -> None:
        load_reward_fn(reward_fn)  # fail here, with the spec in the message, rather than in a worker
        self.reward_fn = reward_fn
        self.config = config
        self.timeouts_total = 0
        self.errors_total = 0
        self._pool = ProcessPool(max_workers=config.num_workers, context=multiprocessing.get_context("spawn"))

    def score(self, rollouts: list[Rollout], ground_truths: list[str]) -> list[ScoredRollouts]:
        """Score each rollout's completions against the ground truth at the same position."""
        if len(rollouts) != len(ground_truths):
            raise ValueError(f"score: {len(rollouts)} rollouts but {len(ground_truths)} ground truths")
        texts = [c.text for r in rollouts for c in r.completions]
        truths = [g for r, g in zip(rollouts, ground_truths, strict=True) for _ in r.completions]
        results = self._run(texts, truths)
        scored, start = [], 0
        for rollout in rollouts:
            group = results[start : start + len(rollout.completions)]
            start += len(group)
            rewards = tuple(reward for reward, _ in group)
            scored.append(
                ScoredRollouts(
                    rollout=rollout,
                    rewards=rewards,
                    correct=tuple(r >= 1.0 for r in rewards),
                    timeouts=sum(timed_out for _, timed_out in group),
                )
            )
        return scored

    def score_texts(self, texts: list[str], ground_truths: list[str]) -> list[float]:
        """Score plain completion texts (evaluation): one reward per text, with the same time limit."""
        return [reward for reward, _ in self._run(texts, ground_truths)]

    def _run(self, texts: list[str], ground_truths: list[str]) -> list[tuple[float, bool]]:
        """(reward, timed out) per text; a timeout or an exception scores 0."""
        futures = [
            self._pool.schedule(_score_one, args=(self.reward_fn, t, g), timeout=self.config.timeout_s)
            for t, g in zip(texts, ground_truths, strict=True)
        ]
        results = []
        for future in futures:
            try:
                results.append((future.result(), False))
            except FutureTimeout:
                self.timeouts_total += 1
                results.append((0.0, True))
            except Exception as err:  # noqa: BLE001 - a reward function's bug must not stop training
                if self.errors_total == 0:
                    log.warning("reward function %s raised (further errors are only counted): %r", self.reward_fn, err)
                self.errors_total += 1
                results.append((0.0, False))
        return results

    def stats(self) -> dict[str, int]:
        """Totals since start: completions killed at the time limit and reward functions that raised."""
        return {"reward/timeouts_total": self.timeouts_total, "reward/errors_total": self.errors_total}

    def close(self) -> None:
        """Stop the worker processes."""
        self._pool.stop()
        self._pool.join()
