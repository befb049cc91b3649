"""The interface every rollout engine implements, and the argument checks the engines share.

An engine turns prompts (token ids) into sampled completions and takes new policy weights in place. It knows
nothing about questions, steps or weights versions: the `RolloutWorker` keeps that bookkeeping.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Collection, Iterable, Mapping, Sequence

import torch

from actors.weight_transport import BucketLayout, SyncNotStarted, WeightGroup, group_name, receive_weights
from core.messages import Completion

MIN_SAMPLING_TEMPERATURE = 1e-4
"""Smallest temperature that samples: vLLM decodes greedily below 1e-5, so tiny values are refused."""


class Engine(ABC):
    """Samples completions from the current policy weights.

    Contract of `generate` (both engines honour it, and tests/integration/test_engines.py checks it):
    - one list per prompt, holding `num_samples[i]` completions of `prompts[i]`;
    - each completion's `token_ids` are the generated tokens, ending with the end-of-sequence token when
      `finish_reason == "stop"`, or exactly `max_new_tokens` long when `finish_reason == "length"`;
    - `logprobs[t]` is the log-probability of `token_ids[t]` under softmax(logits / temperature), i.e. the
      distribution actually sampled from (no top-k, top-p or penalties are applied); for temperature 0 (greedy
      decoding) it is under softmax(logits);
    - `text` is the decoded completion without special tokens;
    - sample j of prompt i is drawn with seed `seeds[i] + j`, so it depends on that prompt, seed, temperature
      and weights only, not on which other prompts share the call (up to floating-point rounding of batched
      kernels).
    """

    name: str
    """Short engine name reported by the rollout worker (`vllm` or `hf`)."""

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """Number of tokens the policy's output distribution ranges over (the model config's vocab size)."""

    @property
    @abstractmethod
    def max_model_len(self) -> int:
        """Longest prompt + completion, in tokens, this engine accepts."""

    @abstractmethod
    def generate(
        self,
        prompts: list[list[int]],
        num_samples: list[int],
        temperature: float,
        max_new_tokens: int,
        seeds: list[int],
    ) -> list[list[Completion]]:
        """Sample `num_samples[i]` completions of each prompt, as described in the class docstring."""

    def load_weights(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        """Replace the policy's weights in place with `state_dict` (Hugging Face parameter names).

        Raises ValueError, before changing anything, when a name is unknown or a required weight is missing.
        """
        self.load_weight_stream(list(state_dict), iter(state_dict.items()))

    @abstractmethod
    def load_weight_stream(self, names: Collection[str], weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Replace the policy's weights in place with `weights`, (name, tensor) pairs consumed one at a time
        (tensors on any device, in any float dtype), whose names are `names` (Hugging Face names).

        Raises ValueError, before consuming anything, when a name is unknown or a required weight is missing.
        The engine may keep references to the tensors it was given. If `weights` raises midway, the engine's
        weights are undefined (a mix of both versions, or worse) until a complete load succeeds.
        """

    @abstractmethod
    def close(self) -> None:
        """Release the engine's memory and process-wide state; the engine cannot be used afterwards."""

    def sleep(self) -> None:
        """Free the engine's device memory while a colocated learner trains (`actors/colocated.py`); its weights
        may be lost (vLLM drops them) until the next complete load, and `wake_up` must come before any other call.
        Here, and on CPU for every engine, nothing: host memory is not the learner's constraint."""
        return None

    def wake_up(self) -> None:
        """Take the memory `sleep` freed back (the weights then need a complete load if they were dropped)."""
        return None

    # -- the collective weight transport (`actors/weight_transport.py`): the engine's side of it. vLLM drives
    # these through its own weight-transfer calls (`actors/engines/vllm_transfer.py`); every other engine keeps
    # the groups here and streams what they carry into `load_weight_stream`.

    _weight_groups: list[WeightGroup] | None = None

    def join_weight_groups(
        self, addresses: list[tuple[str, int]], rank: int, world_size: int, timeout_s: float, name: str
    ) -> None:
        """Join, as `rank`, every learner rank's weight group of the generation `name` (learner rank r serves its
        group at `addresses[r]`), leaving any earlier ones; returns once every member of every group joined, or
        raises having left those it had joined. NCCL on CUDA, gloo on CPU."""
        self._weight_groups = join_weight_groups(addresses, rank, world_size, timeout_s, name)

    def leave_weight_groups(self) -> None:
        """Leave every weight group, if in any."""
        groups, self._weight_groups = self._weight_groups or [], None
        for group in groups:
            group.close()

    def receive_weight_update(self, layout: BucketLayout, version: int) -> None:
        """Take the weights `version` the learner ranks send in `layout`'s buckets, streamed into the engine.

        Raises `SyncNotStarted` (the engine untouched) when the sync fails at its header, anything else (the
        engine's weights undefined) when it fails midway, `SyncNotStarted` too when not in the groups."""
        if not self._weight_groups:
            raise SyncNotStarted("receive_weight_update: not in a weight-transport group (join_weight_groups)")
        self.load_weight_stream(layout.names, receive_weights(self._weight_groups, layout, version))


def join_weight_groups(
    addresses: list[tuple[str, int]], rank: int, world_size: int, timeout_s: float, name: str
) -> list[WeightGroup]:
    """One weight group per learner rank (`Engine.join_weight_groups`), joined as `rank`; on a failure the groups
    already joined are left and the error raised."""
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    groups: list[WeightGroup] = []
    try:
        for learner_rank, (address, port) in enumerate(addresses):
            label = group_name(name, learner_rank)
            groups.append(WeightGroup(address, port, rank, world_size, backend, timeout_s, label))
    except Exception:
        for group in groups:
            group.close()
        raise
    return groups


def check_generate_args(
    engine: Engine,
    prompts: Sequence[Sequence[int]],
    num_samples: Sequence[int],
    temperature: float,
    max_new_tokens: int,
    seeds: Sequence[int],
) -> None:
    """Raise ValueError naming the first bad argument of `Engine.generate`, so that engines fail alike."""
    if not prompts:
        raise ValueError("generate: no prompts")
    if len(num_samples) != len(prompts) or len(seeds) != len(prompts):
        raise ValueError(f"generate: {len(prompts)} prompts but {len(num_samples)} num_samples and {len(seeds)} seeds")
    if not (math.isfinite(temperature) and (temperature == 0 or temperature >= MIN_SAMPLING_TEMPERATURE)):
        raise ValueError(
            f"generate: temperature={temperature}: expected 0 (greedy) or a finite value >= {MIN_SAMPLING_TEMPERATURE}"
        )
    if max_new_tokens < 1:
        raise ValueError(f"generate: max_new_tokens={max_new_tokens} < 1")
    for i, (prompt, n, seed) in enumerate(zip(prompts, num_samples, seeds, strict=True)):
        if n < 1:
            raise ValueError(f"generate: num_samples[{i}]={n} < 1")
        if seed < 0:
            raise ValueError(f"generate: seeds[{i}]={seed} < 0")
        if not prompt:
            raise ValueError(f"generate: prompts[{i}] is empty")
        if len(prompt) + max_new_tokens > engine.max_model_len:
            raise ValueError(
                f"generate: prompts[{i}] has {len(prompt)} tokens; with max_new_tokens={max_new_tokens} it "
                f"exceeds max_model_len={engine.max_model_len}"
            )
        bad = [t for t in prompt if not 0 <= t < engine.vocab_size]
        if bad:
            raise ValueError(f"generate: prompts[{i}] has token ids {bad[:5]} outside [0, {engine.vocab_size})")


def check_weight_names(given: Iterable[str], required: set[str], optional: set[str]) -> None:
    """Raise ValueError listing unknown names (in neither set) and `required` names absent from `given`.

    `optional` holds names a state dict may carry or omit, such as an output layer tied to the embeddings.
    """
    names = set(given)
    unknown = sorted(names - required - optional)
    missing = sorted(required - names)
    if unknown or missing:
        raise ValueError(
            f"load_weights: {len(unknown)} unknown weight names {unknown[:5]} and {len(missing)} missing "
            f"{missing[:5]} (of {len(required)} required)"
        )
