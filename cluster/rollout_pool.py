"""The rollout workers as one pool: balanced requests, one bounded wait, weight and temperature broadcasts,
and a restart of any worker whose process dies.

A worker that dies mid-step is replaced by a fresh actor under the same name; the pool reloads the current
weights and temperature into it and re-issues exactly the requests the dead worker held, so every question gets
its samples once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayActorError

from core.balance import balance
from core.messages import Completion, Rollout, RolloutRequest, TemperatureUpdate

log = logging.getLogger(__name__)


class RolloutPool:
    """Drives N rollout worker actors as one; remembers the weights and temperature to restore after a crash."""

    def __init__(self, spawn: Callable[[int], Any], num_workers: int, timeout_s: float, max_restarts: int = 3):
        """`spawn(i)` creates worker i's actor (named, with its resources); `timeout_s` bounds one step's wait."""
        self._spawn = spawn
        self.workers = [spawn(i) for i in range(num_workers)]
        self.timeout_s = timeout_s
        self.max_restarts = max_restarts
        self.restarts = 0
        self._weights: tuple[Any, int] | None = None  # (object ref of the state dict, version)
        self._temperature: TemperatureUpdate | None = None

    def wait_ready(self) -> list[dict]:
        """Block until every worker has built its engine; return their `info()`."""
        return ray.get([w.info.remote() for w in self.workers], timeout=self.timeout_s)

    def generate(self, requests: list[RolloutRequest]) -> list[Rollout]:
        """Rollouts for `requests`, in request order; dead workers are restarted and their requests re-issued."""
        plan = balance([r.num_samples for r in requests], len(self.workers))
        pending = {
            w: self.workers[w].generate.remote([requests[i] for i in positions])
            for w, positions in enumerate(plan)
            if positions
        }
        results: dict[int, Rollout] = {}
        while pending:
            worker, ref = pending.popitem()
            try:
                rollouts = ray.get(ref, timeout=self.timeout_s)
            except (RayActorError, GetTimeoutError) as err:
                self._restart(worker, err)
                pending[worker] = self.workers[worker].generate.remote([requests[i] for i in plan[worker]])
                continue
            for position, rollout in zip(plan[worker], rollouts, strict=True):
                results[position] = rollout
        return [results[i] for i in range(len(requests))]

    def generate_greedy(self, prompts: list[list[int]], max_new_tokens: int) -> list[Completion]:
        """Greedy completions of `prompts` (evaluation), spread evenly over the workers, in prompt order."""
        plan = balance([1] * len(prompts), len(self.workers))
        refs = [
            self.workers[w].generate_greedy.remote([prompts[i] for i in positions], max_new_tokens)
            for w, positions in enumerate(plan)
        ]
        completions: dict[int, Completion] = {}
        for positions, ref in zip(plan, refs, strict=True):
            for position, completion in zip(positions, ray.get(ref, timeout=self.timeout_s), strict=True):
                completions[position] = completion
        return [completions[i] for i in range(len(prompts))]

    def load_weights(self, state_dict_ref: Any, version: int) -> None:
        """Send the weights to every worker and check that each reports `version` loaded."""
        self._weights = (state_dict_ref, version)
        loaded = ray.get([w.load_weights.remote(state_dict_ref, version) for w in self.workers], timeout=self.timeout_s)
        if any(v != version for v in loaded):
            raise RuntimeError(f"weight sync to version {version} failed: workers report versions {loaded}")

    def set_temperature(self, update: TemperatureUpdate) -> None:
        """Send the temperature to every worker and check that each applied it."""
        self._temperature = update
        applied = ray.get([w.set_temperature.remote(update) for w in self.workers], timeout=self.timeout_s)
        if any(t != update.temperature for t in applied):
            raise RuntimeError(f"temperature update to {update.temperature} failed: workers report {applied}")

    def info(self) -> list[dict]:
        """Each worker's engine, temperature and weights version."""
        return ray.get([w.info.remote() for w in self.workers], timeout=self.timeout_s)

    def _restart(self, index: int, error: Exception) -> None:
        """Replace worker `index` by a fresh actor holding the current weights and temperature."""
        if self.restarts >= self.max_restarts:
            raise RuntimeError(f"rollout worker {index} failed again after {self.restarts} restarts") from error
        self.restarts += 1
        log.warning(
            "rollout worker %d lost (%s); restarting it (restart %d)", index, type(error).__name__, self.restarts
        )
        ray.kill(self.workers[index], no_restart=True)
        self.workers[index] = self._spawn(index)
        ray.get(self.workers[index].info.remote(), timeout=self.timeout_s)
        if self._weights is not None:
            ray.get(self.workers[index].load_weights.remote(*self._weights), timeout=self.timeout_s)
        if self._temperature is not None:
            ray.get(self.workers[index].set_temperature.remote(self._temperature), timeout=self.timeout_s)

    def shutdown(self) -> None:
        """Kill every worker actor."""
        for worker in self.workers:
            ray.kill(worker, no_restart=True)
