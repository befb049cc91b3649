"""The reward scorer: scores every completion against its ground truth, in worker processes, with a time limit.

A pathological completion (a huge expression that sends a symbolic checker into a long search, say) must never
stall a training step: each completion is scored by its own task in a pebble process pool, and a task that runs
past `timeout_s` is killed, its process replaced, and the completion scored 0 (counted in `timeouts`).

Reward is not correctness. A reward function `(completion, ground_truth) -> result` returns either
- a number: the reward, and the completion counts as correct when `reward >= RewardConfig.correct_threshold`
  (default 1.0: the 0/1 rewards of the shipped tasks); or
- a `(reward, correct)` pair, such as `core.messages.RewardResult`: the reward and an explicit verdict, for
  rewards with partial credit or bonuses (0.5 for a near miss, 1.2 for a correct answer with a bonus).
The correctness flags, not the rewards, feed the difficulty table, the accuracies and pass@k (E3_SPEC §1).
Anything else (None, a string, a non-finite reward, a pair whose verdict is not a bool) breaks the function's
contract: scoring raises `RewardContractError`, naming the function and what it returned.

Shutdown waits until every worker is past its start-up (`RewardScorer.close` says why).
"""

from __future__ import annotations

import importlib
import logging
import math
import multiprocessing
import numbers
import os
import threading
from collections.abc import Callable
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, NamedTuple

import numpy as np
from pebble import ProcessPool

from core.config import RewardConfig
from core.messages import RewardResult, Rollout, ScoredRollout

log = logging.getLogger(__name__)

STARTUP_WAIT_S = 120.0
"""Longest wait, at `close`, for a worker process still starting (a spawned Python importing torch on a loaded
machine); past it the pool is stopped anyway."""

_BARRIER: threading.Barrier | None = None
"""In a worker process: the scorer's shutdown barrier, inherited at start-up (see `_keep_barrier`)."""


class RewardContractError(TypeError):
    """A reward function returned something other than a number or a `(reward, correct)` pair."""


def load_reward_fn(spec: str) -> Callable[[str, str], Any]:
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


def as_reward_result(spec: str, value: object, correct_threshold: float) -> RewardResult:
    """A reward function's return value as a `RewardResult`, per the contract in the module docstring.

    A number (bools and numpy scalars included) is the reward, correct when `>= correct_threshold`; a pair
    `(reward, correct)` with a number and a bool is taken as it is. Raises `RewardContractError` naming `spec`
    and the value for anything else, and for a non-finite reward.
    """
    expected = "expected a finite number or a (reward: float, correct: bool) pair such as core.messages.RewardResult"
    if isinstance(value, tuple):
        if len(value) == 2 and _is_number(value[0]) and isinstance(value[1], bool | np.bool_):
            reward, correct = float(value[0]), bool(value[1])
        else:
            raise RewardContractError(f"reward function {spec!r} returned {value!r}: {expected}")
    elif _is_number(value):
        reward = float(value)
        correct = reward >= correct_threshold
    else:
        raise RewardContractError(f"reward function {spec!r} returned {value!r} ({type(value).__name__}): {expected}")
    if not math.isfinite(reward):
        raise RewardContractError(f"reward function {spec!r} returned {value!r}: {expected}")
    return RewardResult(reward, correct)


def _is_number(value: object) -> bool:
    """A real number a reward may be given as: int, float, bool, or a numpy number or bool."""
    return isinstance(value, numbers.Real | np.bool_)


def _score_one(spec: str, completion: str, ground_truth: str, correct_threshold: float) -> RewardResult:
    """Runs in a worker process: the result of one completion (exceptions propagate to the parent)."""
    return as_reward_result(spec, load_reward_fn(spec)(completion, ground_truth), correct_threshold)


class _Outcome(NamedTuple):
    """How scoring one completion went: its result, and whether it was killed at the time limit or raised."""

    result: RewardResult
    timed_out: bool = False
    raised: bool = False


def _keep_barrier(barrier: threading.Barrier) -> None:
    """Worker initializer: keep the scorer's shutdown barrier (it can only reach a worker at start-up)."""
    global _BARRIER
    _BARRIER = barrier


def _rendezvous(timeout_s: float) -> int:
    """Worker task of `close`: wait until one such task runs in every worker; the worker's pid."""
    if _BARRIER is None:
        raise RuntimeError("reward worker started without the shutdown barrier")
    _BARRIER.wait(timeout_s)
    return os.getpid()


class RewardScorer:
    """Scores rollouts with the task's reward function in `config.num_workers` processes.

    Promises: one reward and one correctness flag per completion, in order; a completion whose scoring raises or
    times out scores 0 and is not correct; scoring never raises because of a completion's content, only
    (`RewardContractError`) when the reward function returns something its contract does not allow.
    """

    def __init__(self, reward_fn: str, config: RewardConfig) -> None:
        """Check that `reward_fn` imports here; the worker processes start with the first scoring call."""
        load_reward_fn(reward_fn)  # fail here, with the spec in the message, rather than in a worker
        self.reward_fn = reward_fn
        self.config = config
        self._warned_error = False
        context = multiprocessing.get_context("spawn")
        self._barrier = context.Barrier(config.num_workers)
        self._pool = ProcessPool(
            max_workers=config.num_workers, context=context, initializer=_keep_barrier, initargs=(self._barrier,)
        )
        self._started = False
        self._closed = False

    def score(self, rollouts: list[Rollout], ground_truths: list[str]) -> list[ScoredRollout]:
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
            scored.append(
                ScoredRollout(
                    rollout=rollout,
                    rewards=tuple(outcome.result.reward for outcome in group),
                    correct=tuple(outcome.result.correct for outcome in group),
                    timeouts=sum(outcome.timed_out for outcome in group),
                    errors=sum(outcome.raised for outcome in group),
                )
            )
        return scored

    def score_texts(self, texts: list[str], ground_truths: list[str]) -> list[RewardResult]:
        """Score plain completion texts (evaluation): one (reward, correct) result per text, same time limit."""
        return [outcome.result for outcome in self._run(texts, ground_truths)]

    def _run(self, texts: list[str], ground_truths: list[str]) -> list[_Outcome]:
        """One outcome per text; a timeout or an exception scores 0, not correct."""
        self._started = True
        threshold = self.config.correct_threshold
        futures = [
            self._pool.schedule(_score_one, args=(self.reward_fn, t, g, threshold), timeout=self.config.timeout_s)
            for t, g in zip(texts, ground_truths, strict=True)
        ]
        results = []
        for future in futures:
            try:
                results.append(_Outcome(future.result()))
            except FutureTimeout:
                results.append(_Outcome(RewardResult(0.0, False), timed_out=True))
            except RewardContractError:
                raise  # the function's contract, not a completion's content: stop, with the message
            except Exception as err:  # noqa: BLE001 - a reward function's bug must not stop training
                if not self._warned_error:
                    log.warning("reward function %s raised (further errors are only counted): %r", self.reward_fn, err)
                    self._warned_error = True
                results.append(_Outcome(RewardResult(0.0, False), raised=True))
        return results

    def close(self) -> None:
        """Stop the worker processes, none of them caught starting.

        Why: pebble unlinks its pool's named semaphores before it terminates the workers, so a worker process that
        is still starting (spawned at pool start, or as the replacement of a worker killed at a timeout) would die
        in `SemLock._rebuild` with FileNotFoundError. `close` therefore first proves every worker past its
        start-up: one rendezvous task per worker, all waiting on a barrier the workers inherited (a busy or
        starting worker cannot take a second task, so the tasks land on distinct workers), then closes the idle
        pool.

        Call it when no scoring call is in flight. When a worker does not come up within `STARTUP_WAIT_S` (or the
        rendezvous fails), the pool is stopped anyway and the reason logged.
        """
        if self._closed:
            return
        self._closed = True
        if self._started and not self._all_workers_started():
            log.warning("reward scorer: closing with a worker that did not finish starting")
        self._pool.close()
        try:
            self._pool.join(timeout=STARTUP_WAIT_S)
        except FutureTimeout:
            log.warning("reward scorer: tasks still running at close; stopping the pool")
            self._pool.stop()
            self._pool.join()

    def _all_workers_started(self) -> bool:
        """Run `_rendezvous` in every worker; True when all returned, from as many distinct processes."""
        n = self.config.num_workers
        futures = []
        try:
            futures = [self._pool.schedule(_rendezvous, args=(STARTUP_WAIT_S,)) for _ in range(n)]
            pids = {future.result(timeout=2 * STARTUP_WAIT_S) for future in futures}
        except Exception as err:  # noqa: BLE001 - closing goes on whatever went wrong
            log.warning("reward scorer: shutdown rendezvous failed: %r", err)
            for future in futures:
                future.cancel()
            return False
        return len(pids) == n
