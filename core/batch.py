"""From scored rollouts to the learner's train batch: rewards, length bias, group advantages, padding.

Pure: the scheduler calls `build_train_batch` once per step; everything it needs arrives as arguments.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from core.grpo import group_advantages, length_bias
from core.messages import ScoredRollout, TrainBatch


@dataclass(frozen=True)
class BatchStats:
    """What the step's samples looked like, for the step's metrics."""

    reward_mean: float
    """Mean shaped reward over all samples (after the length bias)."""
    accuracy: float
    """Share of correct samples."""
    all_wrong_fraction: float
    """Share of the step's questions with no correct sample."""
    all_correct_fraction: float
    """Share of the step's questions whose samples are all correct."""
    zero_advantage_fraction: float
    """Share of samples whose advantage is exactly 0 (no learning signal)."""
    response_length_mean: float
    """Mean response length in tokens."""
    truncated_fraction: float
    """Share of samples that hit the response length limit."""


def build_train_batch(
    scored: list[ScoredRollout],
    length_bias_ranks: list[float],
    pad_token_id: int,
    length_bias_mu: float = 0.0,
    length_bias_threshold: float = 0.1,
    sequence_mean: bool = False,
) -> tuple[TrainBatch, BatchStats]:
    """Turn one step's scored groups into a right-padded `TrainBatch` and its statistics.

    `length_bias_ranks[i]` is the rank of `scored[i]`'s question that the length bias compares with its threshold:
    pass `DifficultyTable.index_ranks`, ties broken by table order, so that `rank <= threshold` selects exactly the
    easiest `threshold` fraction of the questions (E3_SPEC section 5) whatever the tie policy. Each question's
    samples form one GRPO group for the advantages. Samples keep the temperature stamped
    on their rollout, and the sampler's per-token log-probs are kept for the learner's mismatch metric. With
    `sequence_mean` the advantages are scaled by `sequence_mean_scale` (`learner.loss_aggregation`).
    """
    if len(scored) != len(length_bias_ranks):
        raise ValueError(f"build_train_batch: {len(scored)} scored groups but {len(length_bias_ranks)} ranks")
    if not scored:
        raise ValueError("build_train_batch: no scored rollouts")

    prompts, responses, sampler_logprobs = [], [], []
    rewards, correct, lengths, sample_ranks, group_ids, temperatures, truncated = [], [], [], [], [], [], []
    for group, (item, rank) in enumerate(zip(scored, length_bias_ranks, strict=True)):
        rollout = item.rollout
        for completion, reward, ok in zip(rollout.completions, item.rewards, item.correct, strict=True):
            prompts.append(rollout.prompt_token_ids)
            responses.append(completion.token_ids)
            sampler_logprobs.append(completion.logprobs)
            rewards.append(reward)
            correct.append(ok)
            lengths.append(len(completion.token_ids))
            sample_ranks.append(rank)
            group_ids.append(group)
            temperatures.append(rollout.temperature)
            truncated.append(completion.finish_reason == "length")

    shaped = length_bias(rewards, correct, lengths, sample_ranks, length_bias_mu, length_bias_threshold)
    advantages = group_advantages(shaped, group_ids)
    trained_advantages = advantages * sequence_mean_scale(lengths) if sequence_mean else advantages

    width = max(len(p) + len(r) for p, r in zip(prompts, responses, strict=True))
    n = len(prompts)
    input_ids = torch.full((n, width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((n, width), dtype=torch.long)
    response_mask = torch.zeros((n, width), dtype=torch.float32)
    logprobs = torch.zeros((n, width), dtype=torch.float32)
    for i, (prompt, response, lp) in enumerate(zip(prompts, responses, sampler_logprobs, strict=True)):
        p, r = len(prompt), len(response)
        input_ids[i, :p] = torch.tensor(prompt, dtype=torch.long)
        input_ids[i, p : p + r] = torch.tensor(response, dtype=torch.long)
        attention_mask[i, : p + r] = 1
        response_mask[i, p : p + r] = 1.0
        logprobs[i, p : p + r] = torch.tensor(lp, dtype=torch.float32)

    batch = TrainBatch(
        input_ids=input_ids,
        attention_mask=attention_mask,
        response_mask=response_mask,
        advantages=torch.as_tensor(trained_advantages, dtype=torch.float32),
        temperatures=torch.tensor(temperatures, dtype=torch.float32),
        sampler_logprobs=logprobs,
    )
    group_correct = [np.asarray(item.correct, dtype=bool) for item in scored]
    stats = BatchStats(
        reward_mean=float(np.mean(shaped)),
        accuracy=float(np.mean(correct)),
        all_wrong_fraction=float(np.mean([not g.any() for g in group_correct])),
        all_correct_fraction=float(np.mean([g.all() for g in group_correct])),
        zero_advantage_fraction=float(np.mean(advantages == 0)),
        response_length_mean=float(np.mean(lengths)),
        truncated_fraction=float(np.mean(truncated)),
    )
    return batch, stats


def sequence_mean_scale(lengths: Sequence[int]) -> np.ndarray:
    """Per response, the factor `tokens / (responses * length)` that turns the learner's token mean into a
    sequence mean: with advantages scaled by it, `sum_i sum_t A_i s_i ratio_it / tokens` is
    `1/n sum_i 1/|o_i| sum_t A_i ratio_it`. The PPO clip and the dual clip only look at the advantage's sign and
    scale with it, so the loss is exactly the sequence mean (with one optimizer step a training step; with
    several, each mini-batch divides by its own tokens, so it holds for the step as a whole only on average). An
    empty response counts as one token."""
    counts = np.maximum(np.asarray(lengths, dtype=np.float64), 1.0)
    return (counts.sum() / (len(counts) * counts)).astype(np.float32)


def pack_micro_batches(lengths: list[int], max_tokens: int, max_rows: int) -> list[list[int]]:
    """Group sample indices into micro-batches whose padded size `rows * longest` stays within `max_tokens`.

    `lengths[i]` is sample i's prompt + response tokens; a micro-batch is padded to its longest sample, so its
    cost is `rows * longest`, padding counted. Samples are taken longest first and each micro-batch is filled
    while it fits and has fewer than `max_rows` rows, so that samples of similar length land together (least
    padding). A sample longer than `max_tokens` gets a micro-batch of its own. `max_tokens=0` means no token
    budget (micro-batches of `max_rows` samples, longest first). Every index appears exactly once; each
    micro-batch lists its indices in ascending order.
    """
    if max_rows < 1:
        raise ValueError(f"max_rows must be >= 1, got {max_rows}")
    if max_tokens < 0:
        raise ValueError(f"max_tokens must be >= 0 (0: no token budget), got {max_tokens}")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    groups: list[list[int]] = []
    for i in order:
        current = groups[-1] if groups else None
        # the current micro-batch's longest sample is its first one (longest first), so its width is known
        fits = current is not None and len(current) < max_rows
        if fits and max_tokens:
            fits = (len(current) + 1) * lengths[current[0]] <= max_tokens
        if fits:
            current.append(i)
        else:
            groups.append([i])
    return [sorted(group) for group in groups]


def distinct_correct_per_group(scored: Sequence[ScoredRollout], answer_key: Callable[[str], object]) -> float:
    """Distinct correct answers per group (`answer_key` of each correct completion; None keys not counted),
    averaged over the groups with at least one correct answer; NaN when no group has one."""
    counts = [
        len({answer_key(c.text) for c, ok in zip(s.rollout.completions, s.correct, strict=True) if ok} - {None})
        for s in scored
        if any(s.correct)
    ]
    return sum(counts) / len(counts) if counts else math.nan
