"""The rollout workers as one pool: balanced requests, one bounded wait per call, weight and temperature
broadcasts, and the replacement of any worker that dies or hangs in any of them.

Every call (`generate`, `generate_greedy`, `sync_weights`/`load_weights`, `set_temperature`) issues its work to
all workers at once and waits under one deadline for all of them. `submit` issues a generation without waiting
(the pipeline of `train.max_staleness` >= 1 keeps generation running while the learner trains); `collect` then
waits for it under the generation deadline, with the same recovery. A worker that is dead (its process gone) or
hung (no answer by the deadline) is replaced by a fresh actor under the same name; the pool brings it to the
current weights version and temperature and re-issues exactly the work the lost worker held, so every question
gets its samples once and every worker reports the version once. Restarts are limited to
`max_restarts_per_hour` over any sliding hour; an error a worker raises itself (a bad request) is no fault of
its process and propagates.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayActorError

from actors.checkpoint_files import WEIGHTS_FILE
from cluster.weight_sync import CollectiveTransport, ObjectStoreTransport, WeightSource, wait_all
from core.balance import balance
from core.messages import Completion, Rollout, RolloutRequest, TemperatureUpdate

log = logging.getLogger(__name__)

MAX_SYNC_ROUNDS = 4
"""Weight pushes one sync may take: the first, and retries after lost workers were replaced."""
HOUR_S = 3600.0
KILL_WAIT_S = 30.0
"""Longest wait for a killed worker to be reported dead (its name free for the replacement)."""
ROLLOUT_NAME = "e3/rollout-{index}"
"""The Ray name of rollout worker `index` (a replacement takes the name of the worker it replaces)."""


@dataclass
class PendingGeneration:
    """A generation `RolloutPool.submit` issued and `collect` has not yet returned: which requests went to which
    worker (`assignment[w]`: positions in the request list), the arguments and the worker actor each went to, and the
    reference each will answer on."""

    num_requests: int
    version: int | None
    """The weights version the workers held when it was issued (what it samples with)."""
    assignment: list[list[int]]
    work: dict[int, tuple]
    actors: dict[int, Any]
    refs: dict[int, Any]


class RolloutPool:
    """Drives N rollout worker actors as one; remembers the weights and temperature to restore after a loss."""

    def __init__(
        self,
        spawn: Callable[[int], Any],
        num_workers: int,
        timeout_s: float,
        sync_timeout_s: float = 300.0,
        max_restarts_per_hour: int = 10,
        transport: ObjectStoreTransport | CollectiveTransport | None = None,
        worker_name: str = ROLLOUT_NAME,
    ) -> None:
        """`spawn(i)` creates worker i's actor, named `worker_name.format(index=i)`, with its resources.
        `timeout_s` bounds a generation call and a fresh worker's start-up, `sync_timeout_s` a weight sync or a
        temperature update. `transport` carries `sync_weights` (default: the object store)."""
        self._spawn = spawn
        self.worker_name = worker_name
        self.workers = [spawn(i) for i in range(num_workers)]
        self.timeout_s = timeout_s
        self.sync_timeout_s = sync_timeout_s
        self.max_restarts_per_hour = max_restarts_per_hour
        self.transport = transport if transport is not None else ObjectStoreTransport()
        self.restarts = 0
        self._restart_times: deque[float] = deque()
        self._source: WeightSource | None = None  # where `sync_weights` takes the weights from
        self._weights_ref: Any = None  # or the state dict `load_weights` was given
        self._version: int | None = None
        self._temperature: TemperatureUpdate | None = None
        self._kept: dict[int, Any] = {}  # weights version -> object ref of its state dict (`keep_weights`)

    def wait_ready(self) -> list[dict]:
        """Block until every worker has built its engine; return their `info()`."""
        return ray.get([w.info.remote() for w in self.workers], timeout=self.timeout_s)

    # ----------------------------------------------------------------------------------------------- calls

    def generate(self, requests: list[RolloutRequest]) -> list[Rollout]:
        """Rollouts for `requests`, in request order; lost workers are replaced and their requests re-issued."""
        assignment = balance([r.num_samples for r in requests], len(self.workers))
        work = {w: ([requests[i] for i in positions],) for w, positions in enumerate(assignment) if positions}
        answers = self._call("generate", work, self.timeout_s)
        results = {
            p: rollout for w, rollouts in answers.items() for p, rollout in zip(assignment[w], rollouts, strict=True)
        }
        return [results[i] for i in range(len(requests))]

    def submit(self, requests: list[RolloutRequest]) -> PendingGeneration:
        """Issue the generation of `requests` (balanced as `generate` balances them) and return at once; each
        worker runs it after the calls it already holds, so weights and temperatures sent later reach it only
        after this generation. `collect` returns the rollouts."""
        assignment = balance([r.num_samples for r in requests], len(self.workers))
        work = {w: ([requests[i] for i in positions],) for w, positions in enumerate(assignment) if positions}
        actors = {w: self.workers[w] for w in work}
        refs = {w: actors[w].generate.remote(*args) for w, args in work.items()}
        return PendingGeneration(len(requests), self._version, assignment, work, actors, refs)

    def collect(self, pending: PendingGeneration) -> list[Rollout]:
        """The rollouts of a `submit`ted generation, in request order, waiting at most `timeout_s` from now.

        A worker lost while it held the work (dead or hung) is replaced, brought to the current temperature, and
        given exactly its share again; one that another call has replaced already is not replaced twice, its share
        only goes to the replacement. So every request is answered once. The replacement samples with the weights
        the generation was issued with when the pool kept them (`keep_weights`, on the steps that checkpoint),
        else with the newest weights of the learner (`track_source`), stamped with their version: its share is
        then fresher than the rest, never mislabelled."""
        answers: dict[int, Any] = {}
        refs = dict(pending.refs)
        while refs:
            values, errors = wait_all(refs, self.timeout_s)
            answers.update(values)
            for w, error in errors.items():
                if not is_lost(error):
                    raise error
                if self.workers[w] is pending.actors[w]:  # still the actor that failed: replace it
                    kept = self._kept.get(pending.version) if pending.version is not None else None
                    self._replace(w, error, restore_weights=kept is None)
                    if kept is not None:  # the issue-time weights, not the learner's newer ones
                        self._call("load_weights", {w: (kept, pending.version)}, self.sync_timeout_s)
                    elif self._version is not None and self._version != pending.version:
                        log.warning(
                            "rollout worker %d lost while generating with weights version %s, which was not kept; "
                            "its share is generated again with version %d, the learner's newest",
                            w,
                            pending.version,
                            self._version,
                        )
                pending.actors[w] = self.workers[w]
            refs = {w: self.workers[w].generate.remote(*pending.work[w]) for w in errors}
        results = {
            p: rollout
            for w, rollouts in answers.items()
            for p, rollout in zip(pending.assignment[w], rollouts, strict=True)
        }
        return [results[i] for i in range(pending.num_requests)]

    def generate_greedy(self, prompts: list[list[int]], max_new_tokens: int) -> list[Completion]:
        """Greedy completions of `prompts` (evaluation), spread evenly over the workers, in prompt order; lost
        workers are replaced and their prompts re-issued."""
        assignment = balance([1] * len(prompts), len(self.workers))
        work = {
            w: ([prompts[i] for i in positions], max_new_tokens) for w, positions in enumerate(assignment) if positions
        }
        answers = self._call("generate_greedy", work, self.timeout_s)
        results = {p: c for w, completions in answers.items() for p, c in zip(assignment[w], completions, strict=True)}
        return [results[i] for i in range(len(prompts))]

    def sync_weights(self, source: WeightSource, version: int) -> None:
        """Bring every worker to the weights `version` that `source` (the learner group) holds now, over the
        pool's transport; lost workers are replaced and brought there too. Raises if a worker still does not
        report `version` after `MAX_SYNC_ROUNDS` pushes."""
        self._source, self._weights_ref, self._version = source, None, version
        self._sync(set(range(len(self.workers))))

    def load_weights(self, state_dict_ref: Any, version: int) -> None:
        """Send the state dict behind `state_dict_ref` to every worker as `version` (through the object store,
        whatever the transport) and check that each reports it loaded; lost workers are replaced."""
        self._source, self._weights_ref, self._version = None, state_dict_ref, version
        work = {w: (state_dict_ref, version) for w in range(len(self.workers))}
        loaded = self._call("load_weights", work, self.sync_timeout_s)
        if any(v != version for v in loaded.values()):
            raise RuntimeError(f"weight sync to version {version} failed: workers report versions {loaded}")

    def track_source(self, source: WeightSource, version: int) -> None:
        """`source` (the learner group) now holds `version`, newer than the weights the workers generate with
        (ahead of training, once the learner has trained): a worker replaced from now on is brought to `version`,
        stamped as such, unless the weights of its lost work were kept. Nothing is sent; the next `sync_weights`
        brings every worker there."""
        self._source, self._weights_ref, self._version = source, None, version

    def keep_weights(self, source: WeightSource, version: int) -> None:
        """Keep a copy of the weights `version` that `source` (the learner group) holds now, in the object store,
        until `release_weights`, for a checkpoint to save (`save_weights`); meanwhile a worker lost while
        generation issued with them is in flight is restored to them exactly. A full gather: one publish-dtype
        copy of the policy per version kept, 3.55 GB at 1.5B parameters in bf16, 15.2 GB at 7B; the scheduler asks
        for it only on the steps whose checkpoints need it."""
        self._kept[version] = source.state_dict_ref()

    def release_weights(self, below: int) -> None:
        """Drop the kept copies of versions older than `below`."""
        for version in [v for v in self._kept if v < below]:
            del self._kept[version]

    def save_weights(self, version: int, path: str) -> None:
        """Write the kept weights `version` to `path/model.safetensors` (publish dtype, Hugging Face names).
        Raises KeyError when they were not kept."""
        from safetensors.torch import save_file

        state = ray.get(self._kept[version], timeout=self.sync_timeout_s)
        Path(path).mkdir(parents=True, exist_ok=True)
        save_file({name: tensor.contiguous() for name, tensor in state.items()}, str(Path(path) / WEIGHTS_FILE))

    def load_policy(self, path: str, version: int) -> None:
        """Load the weights `save_weights` wrote to the folder `path` into every worker as `version` (through the
        object store, `load_weights`), and keep them: the pipeline restores generation in flight with them."""
        from safetensors.torch import load_file

        self._kept[version] = ray.put(load_file(str(Path(path) / WEIGHTS_FILE)))
        self.load_weights(self._kept[version], version)

    def set_temperature(self, update: TemperatureUpdate) -> None:
        """Send the temperature to every worker and check that each applied it; lost workers are replaced."""
        self._temperature = update
        applied = self._call("set_temperature", {w: (update,) for w in range(len(self.workers))}, self.sync_timeout_s)
        if any(t != update.temperature for t in applied.values()):
            raise RuntimeError(f"temperature update to {update.temperature} failed: workers report {applied}")

    def info(self) -> list[dict]:
        """Each worker's engine, temperature, weights version and process id."""
        return ray.get([w.info.remote() for w in self.workers], timeout=self.sync_timeout_s)

    def shutdown(self) -> None:
        """Kill every worker actor, found by its name (so that a copy of this pool whose workers another copy
        replaced, such as the driver's after the scheduler's replaced one, still stops the replacements), and
        wait until Ray has them dead, so that their names are free again (for a new pool, or a run that rebuilds
        its cluster)."""
        self.transport.close(self.workers)
        workers = list(self.workers)
        for index in range(len(self.workers)):
            try:
                named = ray.get_actor(self.worker_name.format(index=index))
            except ValueError:  # no live actor of that name
                continue
            if named._actor_id != self.workers[index]._actor_id:
                workers.append(named)
        for worker in workers:
            ray.kill(worker, no_restart=True)
        for worker in workers:
            _wait_dead(worker)

    # ------------------------------------------------------------------------------------------- recovery

    def _call(self, method: str, work: dict[int, tuple], timeout_s: float) -> dict[int, Any]:
        """`method(*work[w])` on each worker w at once, under one deadline; each lost worker is replaced and its
        work re-issued to the replacement (until the restart budget runs out). Returns the answers by worker."""
        answers: dict[int, Any] = {}
        pending = dict(work)
        while pending:
            refs = {w: getattr(self.workers[w], method).remote(*args) for w, args in pending.items()}
            values, errors = wait_all(refs, timeout_s)
            answers.update(values)
            for w, error in errors.items():
                if not is_lost(error):
                    raise error
                self._replace(w, error, restore_weights=True)
            pending = {w: pending[w] for w in errors}
        return answers

    def _sync(self, indices: set[int]) -> None:
        """Push the current weights (`_source`'s, or `_weights_ref`) to the workers `indices`, replacing lost or
        broken ones and pushing again to those still without the version."""
        pending = set(indices)
        for _ in range(MAX_SYNC_ROUNDS):
            if self._weights_ref is not None:
                work = {w: (self._weights_ref, self._version) for w in pending}
                self._call("load_weights", work, self.sync_timeout_s)
                return
            workers = {w: self.workers[w] for w in sorted(pending)}
            errors = self.transport.push(self._source, workers, self._version, self.sync_timeout_s)
            if not errors:
                return
            for w, error in errors.items():
                if is_lost(error) or not self._intact(w):
                    self._replace(w, error, restore_weights=False)  # the next round brings it to the version
            pending = set(errors)
        raise RuntimeError(
            f"weight sync to version {self._version} failed after {MAX_SYNC_ROUNDS} pushes: workers "
            f"{sorted(pending)} still lack it ({errors})"
        )

    def _intact(self, index: int) -> bool:
        """Whether worker `index` answers and its engine's weights are whole (a streamed load may have failed
        midway); False when it does not answer."""
        try:
            info = ray.get(self.workers[index].info.remote(), timeout=self.sync_timeout_s)
        except (RayActorError, GetTimeoutError):
            return False
        return bool(info["weights_intact"])

    def _replace(self, index: int, error: Exception, restore_weights: bool) -> None:
        """Replace worker `index` by a fresh actor under the same name holding the current temperature, and
        (with `restore_weights`) the current weights version."""
        now = time.monotonic()
        while self._restart_times and now - self._restart_times[0] > HOUR_S:
            self._restart_times.popleft()
        if len(self._restart_times) >= self.max_restarts_per_hour:
            raise RuntimeError(
                f"rollout worker {index} lost ({type(error).__name__}: {error}) after {len(self._restart_times)} "
                f"restarts in the last hour (rollout.max_restarts_per_hour={self.max_restarts_per_hour})"
            ) from error
        self._restart_times.append(now)
        self.restarts += 1
        log.warning(
            "rollout worker %d lost (%s); replacing it (restart %d)", index, type(error).__name__, self.restarts
        )
        ray.kill(self.workers[index], no_restart=True)
        _wait_dead(self.workers[index])  # a hung worker's name is only free once Ray has it dead
        self.workers[index] = self._spawn(index)
        ray.get(self.workers[index].info.remote(), timeout=self.timeout_s)
        if self._temperature is not None:
            self._call("set_temperature", {index: (self._temperature,)}, self.sync_timeout_s)
        if restore_weights and self._version is not None:
            self._sync({index})


def _wait_dead(actor: Any, timeout_s: float = KILL_WAIT_S) -> None:
    """Wait until Ray reports the killed `actor` dead (a call to it fails with RayActorError), at most
    `timeout_s`: `ray.kill` only asks for it, and the actor's name stays taken until it is dead."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            ray.get(actor.__ray_ready__.remote(), timeout=1.0)
        except RayActorError:
            return
        except GetTimeoutError:
            continue
        time.sleep(0.05)
    log.warning("a killed rollout worker was still not dead after %.0f s", timeout_s)


def is_lost(error: Exception) -> bool:
    """Whether `error` means the worker's process is gone or hung (not an error the worker raised itself)."""
    return isinstance(error, (RayActorError, GetTimeoutError))
