"""The train batch builder: padding, response masks, group advantages, temperatures and statistics."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from core.batch import build_train_batch, distinct_correct_per_group, pack_micro_batches
from core.messages import Completion, Rollout, ScoredRollout


def scored(qid: str, prompt: tuple[int, ...], responses: list[tuple[int, ...]], rewards: list[float], temperature=1.0):
    completions = tuple(Completion(r, tuple(-0.5 for _ in r), "t", "stop") for r in responses)
    rollout = Rollout(qid, 0, prompt, completions, temperature=temperature, weights_version=3)
    return ScoredRollout(rollout, tuple(rewards), tuple(r >= 1.0 for r in rewards))


def test_layout_advantages_and_stats():
    groups = [
        scored("a", (5, 6), [(7,), (8, 9, 10)], [1.0, 0.0], temperature=1.2),
        scored("b", (5,), [(11, 12), (13,), (14,)], [0.0, 0.0, 0.0], temperature=0.8),
        scored("c", (5, 6, 7), [(15,)], [1.0]),
    ]
    batch, stats = build_train_batch(groups, length_bias_ranks=[0.2, 0.9, 0.5], pad_token_id=0)
    assert batch.input_ids.shape == (6, 5)
    assert batch.input_ids[1].tolist() == [5, 6, 8, 9, 10]
    assert batch.response_mask[1].tolist() == [0, 0, 1, 1, 1]
    assert batch.attention_mask[2].tolist() == [1, 1, 1, 0, 0]
    assert batch.input_ids[2].tolist() == [5, 11, 12, 0, 0]
    assert batch.temperatures.tolist() == pytest.approx([1.2, 1.2, 0.8, 0.8, 0.8, 1.0])
    # group a: rewards (1, 0): mean 0.5, unbiased std 0.7071 -> +-0.7071; b all equal -> 0; c singleton -> 0
    assert batch.advantages.tolist() == pytest.approx([0.70710, -0.70710, 0, 0, 0, 0], abs=1e-4)
    assert batch.sampler_logprobs[1, 2:].tolist() == [-0.5, -0.5, -0.5]
    assert batch.sampler_logprobs[1, :2].tolist() == [0, 0]
    assert batch.num_response_tokens == 1 + 3 + 2 + 1 + 1 + 1
    assert stats.accuracy == pytest.approx(2 / 6)
    assert stats.all_wrong_fraction == pytest.approx(1 / 3)
    assert stats.all_correct_fraction == pytest.approx(1 / 3)
    assert stats.zero_advantage_fraction == pytest.approx(4 / 6)
    assert stats.response_length_mean == pytest.approx(9 / 6)


def test_sequence_mean_gives_every_response_the_same_weight_whatever_its_length():
    from core.grpo import policy_loss

    # one group: a short correct response (1 token) and a long wrong one (5 tokens), advantages +-0.7071
    groups = [scored("a", (5,), [(7,), (8, 9, 10, 11, 12)], [1.0, 0.0])]
    gradients = {}
    for sequence_mean in (False, True):
        batch, stats = build_train_batch(groups, length_bias_ranks=[0.5], pad_token_id=0, sequence_mean=sequence_mean)
        assert stats.zero_advantage_fraction == 0.0
        mask = batch.response_mask[:, 1:]
        logprobs = torch.full(mask.shape, -0.5, requires_grad=True)
        loss, _ = policy_loss(logprobs, logprobs.detach(), batch.advantages, mask, normalizer=batch.num_response_tokens)
        loss.backward()
        gradients[sequence_mean] = [logprobs.grad[row][mask[row].bool()].sum().item() for row in range(2)]
    # token mean: each response's pull is its advantage times its share of the 6 tokens, so the long one wins
    assert gradients[False] == pytest.approx([-0.70710 / 6, 0.70710 * 5 / 6], abs=1e-5)
    # sequence mean: 1/2 sum_i A_i (each response's tokens share its weight): equal and opposite pulls
    assert gradients[True] == pytest.approx([-0.70710 / 2, 0.70710 / 2], abs=1e-5)


def test_length_bias_shapes_easy_correct_rewards_only():
    groups = [scored("easy", (1,), [(2, 3, 4, 5), (2,)], [1.0, 0.0]), scored("hard", (1,), [(2, 3), (2,)], [1.0, 0.0])]
    _, plain = build_train_batch(groups, length_bias_ranks=[0.05, 0.9], pad_token_id=0)
    _, biased = build_train_batch(groups, length_bias_ranks=[0.05, 0.9], pad_token_id=0, length_bias_mu=0.25)
    # easy correct answer of 4 tokens: 1 / (1 + 0.25 * 4) = 0.5; the hard one keeps 1
    assert plain.reward_mean == pytest.approx(0.5)
    assert biased.reward_mean == pytest.approx((0.5 + 0 + 1 + 0) / 4)
    assert biased.accuracy == plain.accuracy  # accuracy is correctness, never the shaped reward


def test_mismatched_ranks_raise():
    with pytest.raises(ValueError, match="1 scored groups but 2 ranks"):
        build_train_batch([scored("a", (1,), [(2,)], [1.0])], length_bias_ranks=[0.1, 0.2], pad_token_id=0)


def test_batch_dtypes():
    batch, _ = build_train_batch([scored("a", (1,), [(2,), (3,)], [1.0, 0.0])], length_bias_ranks=[0.5], pad_token_id=0)
    assert batch.input_ids.dtype == torch.long and batch.advantages.dtype == torch.float32
    assert np.isfinite(batch.advantages.numpy()).all()


def test_length_bias_with_index_ranks_reaches_tied_easy_questions():
    # Five questions tied at accuracy 1 among ten: their averaged rank 0.2 is above the threshold 0.1, their index
    # ranks 0.0 and 0.1 select the easiest two (positions 0 and 1), as E3_SPEC section 5 asks.
    from core.difficulty import DifficultyTable

    ids = [f"q{i}" for i in range(10)]
    table = DifficultyTable(ids)
    table.observe(ids, [1] * 5 + [0] * 5)
    table.recompute_ranks()
    groups = [scored(qid, (1,), [(2, 3, 4, 5)], [1.0]) for qid in ids[:5]]
    batch_ids = ids[:5]
    _, averaged = build_train_batch(
        groups, length_bias_ranks=table.ranks(batch_ids), pad_token_id=0, length_bias_mu=0.25
    )
    _, by_index = build_train_batch(
        groups, length_bias_ranks=table.index_ranks(batch_ids), pad_token_id=0, length_bias_mu=0.25
    )
    assert averaged.reward_mean == pytest.approx(1.0)  # nobody biased
    assert by_index.reward_mean == pytest.approx((0.5 + 0.5 + 1 + 1 + 1) / 5)  # 1 / (1 + 0.25 * 4) for two


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.integers(1, 300), max_size=60),
    st.integers(0, 1200),
    st.integers(1, 16),
)
def test_micro_batches_hold_every_sample_once_within_the_budget(lengths, max_tokens, max_rows):
    groups = pack_micro_batches(lengths, max_tokens, max_rows)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    for group in groups:
        assert 1 <= len(group) <= max_rows
        assert group == sorted(group)
        padded = len(group) * max(lengths[i] for i in group)
        # within the budget, unless it is one sample that alone exceeds it
        assert not max_tokens or padded <= max_tokens or len(group) == 1


def test_micro_batches_put_similar_lengths_together():
    lengths = [100, 10, 100, 12, 11, 98]
    # budget 300 tokens: the three long ones fill one micro-batch (3 x 100), the three short ones another (3 x 12)
    assert pack_micro_batches(lengths, max_tokens=300, max_rows=8) == [[0, 2, 5], [1, 3, 4]]
    # a sample longer than the budget gets a micro-batch of its own
    assert pack_micro_batches([500, 10, 10], max_tokens=100, max_rows=8) == [[0], [1, 2]]
    # no token budget: rows only
    assert pack_micro_batches(lengths, max_tokens=0, max_rows=4) == [[0, 2, 3, 5], [1, 4]]


def test_distinct_correct_answers_are_counted_per_group_with_any_correct():
    def group(texts: list[str], correct: list[bool]) -> ScoredRollout:
        completions = tuple(Completion((1,), (-0.5,), text, "stop") for text in texts)
        rewards = tuple(float(c) for c in correct)
        return ScoredRollout(Rollout("q", 0, (5,), completions, 1.0, weights_version=0), rewards, tuple(correct))

    key = {"a": 1, "a'": 1, "b": 2, "none": None}.get  # "a'" is "a" in canonical form
    groups = [
        group(["a", "a'", "b", "c"], [True, True, True, False]),  # {1, 2}: 2 (the wrong "c" does not count)
        group(["a", "none"], [True, True]),  # a correct answer without a key is not counted: 1
        group(["b", "b"], [False, False]),  # no correct answer: left out of the mean
    ]
    assert distinct_correct_per_group(groups, key) == 1.5
    assert np.isnan(distinct_correct_per_group(groups[2:], key))
