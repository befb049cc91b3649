"""The rollout worker: samples groups of completions with the current policy weights and temperature.

A plain class (`cluster/` runs each one as a Ray actor). It owns one engine (`actors/engines`) and the two
numbers every rollout is stamped with: the sampling temperature, set by the scheduler's `TemperatureUpdate`,
and the version of the weights loaded, set by `load_weights` (a state dict, through Ray's object store) or
`receive_weights` (streamed over the collective weight transport, `actors/weight_transport.py`). A fresh worker
holds the weights of `model_path`, version 0.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Collection, Iterable, Mapping
from typing import Any

import torch

from actors.engines import Engine, create_engine
from actors.weight_transport import BucketLayout, SyncNotStarted
from core.config import RolloutConfig
from core.messages import Completion, Rollout, RolloutRequest, TemperatureUpdate


class RolloutWorker:
    """Turns `RolloutRequest`s into `Rollout`s stamped with the temperature and weights version used."""

    def __init__(
        self,
        model_path: str,
        config: RolloutConfig,
        dtype: str,
        seed: int,
        max_model_len: int,
        name: str = "rollout-0",
        temperature: float = 1.0,
        sleep_mode: bool = False,
    ) -> None:
        """Build the engine `config.engine` names (`auto`: vLLM when it imports, else transformers) on
        `model_path`, with `config.torch_threads` intra-op threads. Sampling starts at `temperature`.
        `sleep_mode`: the engine will be put to sleep between generations (a colocated rank's, actors/colocated.py)."""
        if max_model_len < 2:
            raise ValueError(f"RolloutWorker {name}: max_model_len={max_model_len} < 2")
        _check_temperature(temperature, f"RolloutWorker {name}")
        torch.set_num_threads(config.torch_threads)
        self.name = name
        self.temperature = temperature
        self.temperature_step: int | None = None
        self.weights_version = 0
        self.weights_intact = True  # False once a streamed load failed midway: the engine then needs replacing
        self.engine: Engine = create_engine(
            config, model_path, dtype=dtype, seed=seed, max_model_len=max_model_len, sleep_mode=sleep_mode
        )

    def generate(self, requests: list[RolloutRequest]) -> list[Rollout]:
        """One `Rollout` per request, in order, each with `num_samples` completions.

        All requests go to the engine in one call (one per distinct `max_new_tokens`: one in practice).
        """
        by_length: dict[int, list[int]] = {}
        for position, request in enumerate(requests):
            by_length.setdefault(request.max_new_tokens, []).append(position)
        rollouts: dict[int, Rollout] = {}
        for max_new_tokens, positions in by_length.items():
            batch = [requests[p] for p in positions]
            start = time.perf_counter()
            groups = self.engine.generate(
                [list(r.prompt_token_ids) for r in batch],
                [r.num_samples for r in batch],
                self.temperature,
                max_new_tokens,
                [r.seed for r in batch],
            )
            seconds = time.perf_counter() - start
            for position, request, completions in zip(positions, batch, groups, strict=True):
                rollouts[position] = self._rollout(request, completions, seconds)
        return [rollouts[p] for p in range(len(requests))]

    def generate_greedy(self, prompts: list[list[int]], max_new_tokens: int) -> list[Completion]:
        """One greedy (temperature 0) completion per prompt, in order; for evaluation."""
        if not prompts:
            return []
        groups = self.engine.generate(prompts, [1] * len(prompts), 0.0, max_new_tokens, [0] * len(prompts))
        return [group[0] for group in groups]

    def set_temperature(self, update: TemperatureUpdate) -> float:
        """Sample with `update.temperature` from now on; returns the temperature now in use."""
        _check_temperature(update.temperature, f"RolloutWorker {self.name}: TemperatureUpdate(step={update.step})")
        self.temperature = update.temperature
        self.temperature_step = update.step
        return self.temperature

    def load_weights(self, state_dict: Mapping[str, torch.Tensor], version: int) -> int:
        """Load the policy weights `version` (Hugging Face names); returns the version now loaded.

        Versions never go back: a version below the loaded one is refused, as a stale or reordered update.
        """
        return self.load_weight_stream(list(state_dict), iter(state_dict.items()), version)

    def load_weight_stream(
        self, names: Collection[str], weights: Iterable[tuple[str, torch.Tensor]], version: int
    ) -> int:
        """Load the policy weights `version` from `weights`, (name, tensor) pairs consumed one at a time, whose names
        are `names` (Hugging Face names: `Engine.load_weight_stream`); returns the version now loaded. A colocated
        learner rank streams its gathered parameters through it (`actors/colocated.py`).

        Versions never go back, as for `load_weights`. A stream that fails midway leaves the engine broken:
        `info()["weights_intact"]` then says False until a complete load.
        """
        self._check_version(version)
        try:
            self.engine.load_weight_stream(names, weights)
        except Exception:
            self.weights_intact = False
            raise
        self.weights_version = version
        self.weights_intact = True
        return self.weights_version

    def _check_version(self, version: int) -> None:
        """Versions never go back: a version below the loaded one is refused, as a stale or reordered update."""
        if version < self.weights_version:
            raise ValueError(
                f"RolloutWorker {self.name}: weights version {version} is older than the loaded {self.weights_version}"
            )

    def join_weight_group(
        self, addresses: list[tuple[str, int]], rank: int, world_size: int, timeout_s: float, name: str
    ) -> None:
        """Join, as `rank`, every learner rank's weight-transport group of the generation `name` (learner rank r
        serves its group at `addresses[r]`), leaving any earlier ones; returns once every member of every group
        joined, or raises having left those it had joined. NCCL on CUDA, gloo on CPU (`Engine.join_weight_groups`:
        vLLM through its own weight-transfer calls)."""
        self.engine.join_weight_groups(addresses, rank, world_size, timeout_s, name)

    def leave_weight_group(self) -> None:
        """Leave every weight-transport group, if in any."""
        self.engine.leave_weight_groups()

    def receive_weights(self, layout: BucketLayout, version: int) -> int:
        """Stream the weights `version` that the learner ranks broadcast in `layout`'s buckets (each rank its
        rows, over its own group) into the engine; returns the version now loaded.

        A failure before the first bucket (a member lost: the start is confirmed by every member of every group)
        leaves the engine as it was; one midway leaves it broken, and `info()["weights_intact"]` then says
        False. Either way the groups are left (the pool rebuilds them) and the error raised.
        """
        self._check_version(version)
        try:
            self.engine.receive_weight_update(layout, version)
        except SyncNotStarted:
            self.leave_weight_group()
            raise
        except Exception:
            self.weights_intact = False
            self.leave_weight_group()
            raise
        self.weights_version = version
        self.weights_intact = True
        return self.weights_version

    def info(self) -> dict[str, Any]:
        """The worker's name, engine, vocabulary size, temperature (and the step that set it), weights version,
        whether its weights are intact (False after a streamed load failed midway) and process id."""
        return {
            "name": self.name,
            "engine": self.engine.name,
            "vocab_size": self.engine.vocab_size,
            "temperature": self.temperature,
            "temperature_step": self.temperature_step,
            "weights_version": self.weights_version,
            "weights_intact": self.weights_intact,
            "pid": os.getpid(),
        }

    def close(self) -> None:
        """Leave the weight-transport groups and release the engine."""
        self.leave_weight_group()
        self.engine.close()

    def _rollout(self, request: RolloutRequest, completions: list[Completion], seconds: float) -> Rollout:
        """Stamp one request's completions with what produced them, and the `seconds` of the engine call."""
        if len(completions) != request.num_samples:
            raise RuntimeError(
                f"engine {self.engine.name} returned {len(completions)} completions for "
                f"{request.question_id!r}, asked {request.num_samples}"
            )
        return Rollout(
            question_id=request.question_id,
            step=request.step,
            prompt_token_ids=tuple(request.prompt_token_ids),
            completions=tuple(completions),
            temperature=self.temperature,
            weights_version=self.weights_version,
            worker=self.name,
            generate_s=seconds,
        )


def _check_temperature(temperature: float, where: str) -> None:
    """Sampling temperatures must be finite and positive (greedy decoding goes through `generate_greedy`)."""
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"{where}: temperature={temperature} must be finite and > 0")
