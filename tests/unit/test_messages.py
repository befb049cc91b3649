"""Messages reject inconsistent values with the values in the error; the train batch shards by tokens."""

import math

import pytest
import torch

from core.messages import Completion, Rollout, RolloutRequest, ScoredRollout, TemperatureUpdate, TrainBatch


def make_batch(lengths: list[int]) -> TrainBatch:
    n, width = len(lengths), max(lengths)
    attention = torch.zeros((n, width), dtype=torch.long)
    for i, length in enumerate(lengths):
        attention[i, :length] = 1
    response = attention.float()
    response[:, 0] = 0
    return TrainBatch(
        input_ids=torch.arange(n * width).reshape(n, width),
        attention_mask=attention,
        response_mask=response,
        advantages=torch.arange(n, dtype=torch.float32),
        temperatures=torch.ones(n),
    )


def test_request_rejects_bad_counts():
    with pytest.raises(ValueError, match="num_samples=0"):
        RolloutRequest("q1", (1, 2), num_samples=0, max_new_tokens=8, seed=0, step=0)
    with pytest.raises(ValueError, match="empty prompt"):
        RolloutRequest("q1", (), num_samples=1, max_new_tokens=8, seed=0, step=0)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_temperature_update_rejects_non_positive(bad):
    with pytest.raises(ValueError, match="temperature="):
        TemperatureUpdate(bad, step=3)


def test_completion_and_scored_lengths_must_agree():
    with pytest.raises(ValueError, match="2 token ids but 1 logprobs"):
        Completion((1, 2), (-0.1,), "x", "stop")
    with pytest.raises(ValueError, match="finish_reason='eos'"):
        Completion((1,), (-0.1,), "x", "eos")
    rollout = Rollout("q", 0, (1,), (Completion((1,), (-0.1,), "x", "stop"),), temperature=1.0, weights_version=0)
    with pytest.raises(ValueError, match="1 completions, 2 rewards"):
        ScoredRollout(rollout, rewards=(1.0, 0.0), correct=(True,))


@pytest.mark.parametrize("bad", [-0.5, math.nan, math.inf])
def test_a_rollout_needs_finite_nonnegative_generation_seconds(bad):
    with pytest.raises(ValueError, match=f"generate_s={bad} must be finite and >= 0"):
        Rollout("q", 0, (1,), (Completion((1,), (-0.1,), "x", "stop"),), 1.0, 0, generate_s=bad)


def test_train_batch_checks_shapes():
    batch = make_batch([3, 4])
    with pytest.raises(ValueError, match="advantages has shape"):
        TrainBatch(
            batch.input_ids,
            batch.attention_mask,
            batch.response_mask,
            torch.ones(3),
            batch.temperatures,
        )


def test_shard_balances_tokens_and_keeps_every_row_once():
    lengths = [9, 8, 7, 2, 2, 2, 1, 1]
    batch = make_batch(lengths)
    shards = batch.shard(3)
    rows = sorted(int(a) for s in shards for a in s.advantages)
    assert rows == list(range(len(lengths)))
    assert sum(s.num_response_tokens for s in shards) == batch.num_response_tokens
    loads = [int(s.attention_mask.sum()) for s in shards]
    assert max(loads) - min(loads) <= max(lengths)
    for shard in shards:  # trimmed to the longest kept row
        assert shard.input_ids.shape[1] == int(shard.attention_mask.sum(dim=1).max())


def test_shard_needs_enough_samples():
    with pytest.raises(ValueError, match="2 samples cannot fill 3 shards"):
        make_batch([2, 2]).shard(3)
