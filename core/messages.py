"""The messages the actors exchange, as frozen dataclasses (and `RewardResult`, a NamedTuple, so that a reward
function may answer with a plain `(reward, correct)` tuple).

Each class says who sends it to whom. Every field is named with its unit where it has one, and
`__post_init__` rejects inconsistent values with an error that prints them. Only `TrainBatch` carries tensors.
Rollouts are stamped with the temperature and weights version that actually produced them, so that the learner
never has to guess (and generation may later overlap training without changing any message).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch

from core.balance import balance

FINISH_REASONS = ("stop", "length")


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


@dataclass(frozen=True)
class RolloutRequest:
    """Scheduler -> rollout worker: sample `num_samples` completions of one question's prompt."""

    question_id: str
    prompt_token_ids: tuple[int, ...]
    num_samples: int
    max_new_tokens: int
    seed: int
    step: int

    def __post_init__(self) -> None:
        _require(len(self.prompt_token_ids) > 0, f"RolloutRequest {self.question_id!r}: empty prompt")
        _require(self.num_samples >= 1, f"RolloutRequest {self.question_id!r}: num_samples={self.num_samples} < 1")
        _require(
            self.max_new_tokens >= 1,
            f"RolloutRequest {self.question_id!r}: max_new_tokens={self.max_new_tokens} < 1",
        )
        _require(self.step >= 0, f"RolloutRequest {self.question_id!r}: step={self.step} < 0")


@dataclass(frozen=True)
class TemperatureUpdate:
    """Scheduler -> every rollout worker: sample with `temperature` from now on (decided after `step`)."""

    temperature: float
    step: int

    def __post_init__(self) -> None:
        _require(
            math.isfinite(self.temperature) and self.temperature > 0,
            f"TemperatureUpdate: temperature={self.temperature} must be finite and > 0",
        )


@dataclass(frozen=True)
class Completion:
    """One sampled response: its tokens, the sampler's log-prob of each, its text and why it ended.

    `logprobs` are under the distribution actually sampled from (logits / temperature), one per token.
    `finish_reason` is "stop" (an end-of-sequence token was produced) or "length" (max_new_tokens reached).
    """

    token_ids: tuple[int, ...]
    logprobs: tuple[float, ...]
    text: str
    finish_reason: str

    def __post_init__(self) -> None:
        _require(
            len(self.token_ids) == len(self.logprobs),
            f"Completion: {len(self.token_ids)} token ids but {len(self.logprobs)} logprobs",
        )
        _require(
            self.finish_reason in FINISH_REASONS,
            f"Completion: finish_reason={self.finish_reason!r}, expected one of {FINISH_REASONS}",
        )


@dataclass(frozen=True)
class Rollout:
    """Rollout worker -> scheduler: the group of completions of one question in one step.

    Stamped with the sampling temperature and the policy weights version actually used.
    """

    question_id: str
    step: int
    prompt_token_ids: tuple[int, ...]
    completions: tuple[Completion, ...]
    temperature: float
    weights_version: int
    worker: str = ""
    generate_s: float = 0.0
    """Seconds of the engine call that generated it, on its worker (the rollouts of one call all carry that
    call's seconds); 0 when not measured."""

    def __post_init__(self) -> None:
        _require(len(self.completions) >= 1, f"Rollout {self.question_id!r}: no completions")
        _require(
            math.isfinite(self.generate_s) and self.generate_s >= 0,
            f"Rollout {self.question_id!r}: generate_s={self.generate_s} must be finite and >= 0",
        )
        _require(
            math.isfinite(self.temperature) and self.temperature > 0,
            f"Rollout {self.question_id!r}: temperature={self.temperature} must be finite and > 0",
        )
        _require(self.weights_version >= 0, f"Rollout {self.question_id!r}: weights_version={self.weights_version} < 0")


class RewardResult(NamedTuple):
    """Reward function -> reward scorer (and the scorer's `score_texts` -> evaluation): one completion's verdict.

    `reward` is what the policy is trained on (it may give partial credit or a bonus); `correct` says whether the
    answer is right, which is what accuracy, the difficulty table and pass@k count. A reward function may return
    this, a plain `(reward, correct)` tuple, or just a number (then `reward.correct_threshold` decides).
    """

    reward: float
    correct: bool


@dataclass(frozen=True)
class ScoredRollout:
    """Reward scorer -> scheduler: a rollout with one reward and one correctness flag per completion.

    `timeouts` counts the completions whose reward computation was killed at its time limit, `errors` those whose
    reward function raised (both scored 0, not correct).
    """

    rollout: Rollout
    rewards: tuple[float, ...]
    correct: tuple[bool, ...]
    timeouts: int = 0
    errors: int = 0

    def __post_init__(self) -> None:
        n = len(self.rollout.completions)
        _require(
            len(self.rewards) == n and len(self.correct) == n,
            f"ScoredRollout {self.rollout.question_id!r}: {n} completions, "
            f"{len(self.rewards)} rewards, {len(self.correct)} correctness flags",
        )
        _require(
            all(math.isfinite(r) for r in self.rewards),
            f"ScoredRollout {self.rollout.question_id!r}: non-finite reward in {self.rewards}",
        )


@dataclass(frozen=True)
class TrainBatch:
    """Scheduler -> learner group: one step's samples, right-padded, ready for the policy's forward pass.

    N samples, L = longest prompt + response. Position t of `response_mask` is 1 when token t is a response token
    (so the logits at t - 1 predict it). Advantages are per sample (computed within each question's group);
    temperatures are the ones that produced each sample.
    """

    input_ids: torch.Tensor  # [N, L] int64, prompt then response then pad
    attention_mask: torch.Tensor  # [N, L] int64, 1 on prompt and response tokens
    response_mask: torch.Tensor  # [N, L] float32, 1 on response tokens
    advantages: torch.Tensor  # [N] float32
    temperatures: torch.Tensor  # [N] float32, the sampling temperature of each sample
    sampler_logprobs: torch.Tensor | None = None  # [N, L] float32: the rollout engine's log-probs, if kept

    def __post_init__(self) -> None:
        n, length = self.input_ids.shape
        for name in ("attention_mask", "response_mask", "sampler_logprobs"):
            value = getattr(self, name)
            if value is not None:
                _require(
                    tuple(value.shape) == (n, length),
                    f"TrainBatch: {name} has shape {tuple(value.shape)}, expected {(n, length)}",
                )
        for name in ("advantages", "temperatures"):
            value = getattr(self, name)
            _require(tuple(value.shape) == (n,), f"TrainBatch: {name} has shape {tuple(value.shape)}, expected {(n,)}")
        _require(bool((self.temperatures > 0).all()), f"TrainBatch: non-positive temperature in {self.temperatures}")
        _require(n >= 1, "TrainBatch: no samples")

    @property
    def num_samples(self) -> int:
        """Number of samples (rows)."""
        return int(self.input_ids.shape[0])

    @property
    def num_response_tokens(self) -> int:
        """Number of response tokens over the whole batch: the loss normaliser for a global token mean."""
        return int(self.response_mask.sum().item())

    def select(self, rows: list[int] | torch.Tensor) -> TrainBatch:
        """The batch restricted to `rows`, trimmed of columns that are padding in every kept row."""
        index = torch.as_tensor(rows, dtype=torch.long)
        width = max(1, int(self.attention_mask[index].sum(dim=1).max().item())) if len(index) else 1
        pick = lambda t: None if t is None else t[index]  # noqa: E731
        trim = lambda t: None if t is None else t[index, :width]  # noqa: E731
        return TrainBatch(
            input_ids=trim(self.input_ids),
            attention_mask=trim(self.attention_mask),
            response_mask=trim(self.response_mask),
            advantages=pick(self.advantages),
            temperatures=pick(self.temperatures),
            sampler_logprobs=trim(self.sampler_logprobs),
        )

    def shard(self, num_shards: int) -> list[TrainBatch]:
        """Split into `num_shards` batches with nearly equal numbers of tokens (`core.balance`, weighted by each
        sample's prompt and response tokens); every shard gets at least one sample. Raises if there are fewer
        samples than shards.
        """
        _require(num_shards >= 1, f"TrainBatch.shard: num_shards={num_shards} < 1")
        _require(
            self.num_samples >= num_shards,
            f"TrainBatch.shard: {self.num_samples} samples cannot fill {num_shards} shards",
        )
        tokens = [max(1, int(t)) for t in self.attention_mask.sum(dim=1).tolist()]
        return [self.select(rows) for rows in balance(tokens, num_shards)]


@dataclass(frozen=True)
class LearnerResult:
    """Learner group -> scheduler: the outcome of one training step.

    `entropy` is the token-mean entropy (nats) of the tempered policy over all response tokens of the global
    batch, measured before the update. `weights_version` is the version of the weights after the update.
    """

    weights_version: int
    entropy: float
    metrics: dict[str, float]

    def __post_init__(self) -> None:
        _require(math.isfinite(self.entropy), f"LearnerResult: entropy={self.entropy} is not finite")
