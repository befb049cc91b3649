"""Tests for core.grpo: group advantages, the clipped policy loss, token statistics, length bias."""

from __future__ import annotations

import math
import random
import statistics

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from core.grpo import (
    entropy_from_logits,
    group_advantages,
    length_bias,
    off_policy_weights,
    policy_loss,
    token_logprobs,
)

# ---------------------------------------------------------------------------------------------- advantages


def loop_advantages(rewards: list[float], group_ids: list[object], eps: float = 1e-6) -> list[float]:
    """GRPO advantages by a plain loop (statistics.stdev is the unbiased std)."""
    groups: dict[object, list[float]] = {}
    for reward, group in zip(rewards, group_ids, strict=True):
        groups.setdefault(group, []).append(reward)
    out = []
    for reward, group in zip(rewards, group_ids, strict=True):
        members = groups[group]
        if len(members) < 2 or len(set(members)) == 1:
            out.append(0.0)
        else:
            out.append((reward - statistics.fmean(members)) / (statistics.stdev(members) + eps))
    return out


@settings(max_examples=100, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 12), min_size=1, max_size=10),
    binary=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_advantages_match_a_loop_on_variable_groups(sizes: list[int], binary: bool, seed: int) -> None:
    rng = random.Random(seed)
    group_ids: list[object] = [7 * g + 3 for g, size in enumerate(sizes) for _ in range(size)]  # non-contiguous ids
    rng.shuffle(group_ids)  # members of a group need not be adjacent
    rewards = [float(rng.randint(0, 1)) if binary else rng.uniform(-2, 2) for _ in group_ids]
    got = group_advantages(rewards, group_ids)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, loop_advantages(rewards, group_ids), rtol=1e-5, atol=1e-6)


def test_advantages_by_hand() -> None:
    rewards = [1.0, 0.0, 0.0, 0.0, 0.1, 0.1, 0.1, 0.7]
    groups = ["q1", "q1", "q1", "q1", ("q", 2), ("q", 2), ("q", 2), "single"]
    std = math.sqrt((0.75**2 + 3 * 0.25**2) / 3)  # unbiased: sum of squares / (N - 1) = 0.5
    got = group_advantages(rewards, groups)
    expected = [0.75 / (std + 1e-6)] + [-0.25 / (std + 1e-6)] * 3 + [0.0] * 4
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    assert (got[4:] == 0).all()  # all-equal (even 0.1, inexact in binary) and singleton groups are exactly 0


def test_advantage_input_validation() -> None:
    with pytest.raises(ValueError, match=r"2 group ids vs 3 rewards"):
        group_advantages([1.0, 0.0, 1.0], [0, 0])
    with pytest.raises(ValueError, match=r"finite; bad positions \[1\]"):
        group_advantages([1.0, float("nan")], [0, 0])
    assert group_advantages([], []).shape == (0,)


# ---------------------------------------------------------------------------------------------- policy loss


def loop_policy_loss(
    logprobs: torch.Tensor,
    old: torch.Tensor,
    adv: torch.Tensor,
    mask: torch.Tensor,
    normalizer: float,
    clip_low: float,
    clip_high: float,
    dual_clip: float | None,
) -> float:
    """The verl/PPO token loss, one token at a time in Python floats."""
    total = 0.0
    n, t = logprobs.shape
    for i in range(n):
        for j in range(t):
            if not mask[i, j]:
                continue
            a = float(adv[i] if adv.dim() == 1 else adv[i, j])
            ratio = math.exp(float(logprobs[i, j]) - float(old[i, j]))
            loss = max(-a * ratio, -a * min(max(ratio, 1 - clip_low), 1 + clip_high))
            if dual_clip is not None and a < 0:
                loss = min(loss, -a * dual_clip)
            total += loss
    return total / normalizer


def random_batch(seed: int, n: int = 6, t: int = 9, per_token: bool = False) -> dict[str, torch.Tensor]:
    """Log-probs with large policy changes (ratios up to ~e^1.5) so every clip branch occurs."""
    gen = torch.Generator().manual_seed(seed)
    old = -torch.rand(n, t, generator=gen, dtype=torch.float64) * 3
    logprobs = old + (torch.rand(n, t, generator=gen, dtype=torch.float64) - 0.5) * 3
    adv_shape = (n, t) if per_token else (n,)
    adv = torch.randn(adv_shape, generator=gen, dtype=torch.float64)
    lengths = torch.randint(1, t + 1, (n,), generator=gen)
    mask = torch.arange(t).unsqueeze(0) < lengths.unsqueeze(1)
    return {"logprobs": logprobs, "old_logprobs": old, "advantages": adv, "response_mask": mask}


@pytest.mark.parametrize("per_token", [False, True])
@pytest.mark.parametrize(("clip_low", "clip_high", "dual_clip"), [(0.2, 0.2, 3.0), (0.2, 0.28, None), (0.1, 0.3, 1.5)])
def test_policy_loss_equals_token_loop(
    per_token: bool, clip_low: float, clip_high: float, dual_clip: float | None
) -> None:
    batch = random_batch(seed=1, per_token=per_token)
    normalizer = float(batch["response_mask"].sum()) + 5.0  # any positive normalizer
    loss, metrics = policy_loss(
        **batch, normalizer=normalizer, clip_low=clip_low, clip_high=clip_high, dual_clip=dual_clip
    )
    expected = loop_policy_loss(
        batch["logprobs"],
        batch["old_logprobs"],
        batch["advantages"],
        batch["response_mask"],
        normalizer,
        clip_low,
        clip_high,
        dual_clip,
    )
    assert loss.item() == pytest.approx(expected, rel=1e-10)
    assert metrics["clip_frac"] > 0
    assert (metrics["dual_clip_frac"] > 0) == (dual_clip is not None)
    mask = batch["response_mask"]
    kl = (batch["old_logprobs"] - batch["logprobs"])[mask].sum().item() / normalizer
    assert metrics["approx_kl"] == pytest.approx(kl, rel=1e-10)


def loop_off_policy_loss(
    batch: dict[str, torch.Tensor], behaviour: torch.Tensor, normalizer: float, correction: str, **bounds: float
) -> tuple[float, dict[str, float]]:
    """The corrected loss one token at a time: PPO's token loss (clip 0.2, dual clip 3) against the old log-prob,
    times the TIS weight min(r, cap) or the IcePop weight (r where low <= r <= high, else 0),
    r = exp(old - behaviour)."""
    cap, low, high = bounds.get("tis_cap", 2.0), bounds.get("icepop_low", 0.5), bounds.get("icepop_high", 5.0)
    total, ratios, masked, truncated = 0.0, [], 0, 0
    logprobs, old, adv, mask = (batch[k] for k in ("logprobs", "old_logprobs", "advantages", "response_mask"))
    for i in range(logprobs.shape[0]):
        for j in range(logprobs.shape[1]):
            if not mask[i, j]:
                continue
            a = float(adv[i])
            ratio = math.exp(float(logprobs[i, j]) - float(old[i, j]))
            loss = max(-a * ratio, -a * min(max(ratio, 0.8), 1.2))
            if a < 0:
                loss = min(loss, -a * 3.0)
            r = math.exp(float(old[i, j]) - float(behaviour[i, j]))
            ratios.append(r)
            if correction == "tis":
                weight = min(r, cap)
                truncated += r > cap
            elif correction == "icepop":
                weight = r if low <= r <= high else 0.0
                masked += weight == 0
            else:
                weight = 1.0
            total += weight * loss
    stats = {"is_ratio_sum": sum(ratios), "is_ratio_max": max(ratios), "is_masked": masked, "is_truncated": truncated}
    return total / normalizer, stats


@pytest.mark.parametrize("correction", ["none", "tis", "icepop"])
@pytest.mark.parametrize("bounds", [{}, {"tis_cap": 1.5, "icepop_low": 0.8, "icepop_high": 1.25}])
def test_off_policy_corrected_loss_equals_token_loop(correction: str, bounds: dict) -> None:
    batch = random_batch(seed=4)
    gen = torch.Generator().manual_seed(5)
    # the engine's log-probs: the old policy's, moved by up to e^2 either way (a policy several versions back)
    behaviour = (
        batch["old_logprobs"] + (torch.rand(batch["old_logprobs"].shape, generator=gen, dtype=torch.float64) - 0.5) * 4
    )
    normalizer = float(batch["response_mask"].sum())
    weights, sums = off_policy_weights(batch["old_logprobs"], behaviour, batch["response_mask"], correction, **bounds)
    loss, _ = policy_loss(**batch, normalizer=normalizer, token_weights=weights)
    expected, stats = loop_off_policy_loss(batch, behaviour, normalizer, correction, **bounds)
    assert loss.item() == pytest.approx(expected, rel=1e-10)
    assert sums["is_ratio_sum"] == pytest.approx(stats["is_ratio_sum"], rel=1e-10)
    assert sums["is_ratio_max"] == pytest.approx(stats["is_ratio_max"], rel=1e-10)
    assert (sums["is_masked"], sums["is_truncated"]) == (stats["is_masked"], stats["is_truncated"])
    if correction == "tis":
        assert 0 < sums["is_truncated"] < normalizer  # the draw exercises both sides of the cap
    if correction == "icepop":
        assert 0 < sums["is_masked"] < normalizer  # and of the band
    assert not weights[~batch["response_mask"]].any()  # nothing off the response


def test_without_correction_the_loss_is_exactly_the_plain_one() -> None:
    batch = random_batch(seed=6)
    normalizer = float(batch["response_mask"].sum())
    weights, _ = off_policy_weights(batch["old_logprobs"], batch["old_logprobs"] - 1.0, batch["response_mask"], "none")
    plain, plain_metrics = policy_loss(**batch, normalizer=normalizer)
    weighted, weighted_metrics = policy_loss(**batch, normalizer=normalizer, token_weights=weights)
    assert weighted.item() == plain.item() and weighted_metrics == plain_metrics


def test_on_policy_tokens_pass_every_correction_unchanged() -> None:
    """The ratio is 1 where the engine sampled from the learner's own old policy: TIS and IcePop leave the loss
    and its gradient as they are."""
    batch = random_batch(seed=7)
    normalizer = float(batch["response_mask"].sum())
    grads = []
    for correction in ("none", "tis", "icepop"):
        weights, sums = off_policy_weights(
            batch["old_logprobs"], batch["old_logprobs"], batch["response_mask"], correction
        )
        assert sums["is_ratio_max"] == 1.0 and sums["is_masked"] == sums["is_truncated"] == 0
        logprobs = batch["logprobs"].clone().requires_grad_(True)
        loss, _ = policy_loss(**{**batch, "logprobs": logprobs}, normalizer=normalizer, token_weights=weights)
        loss.backward()
        grads.append(logprobs.grad)
    torch.testing.assert_close(grads[1], grads[0], rtol=0, atol=0)
    torch.testing.assert_close(grads[2], grads[0], rtol=0, atol=0)


def test_icepop_keeps_the_ratio_inside_its_band_and_drops_the_token_outside() -> None:
    """IcePop's M(r) = r on [0.5, 5] and 0 elsewhere (as verl, AReaL, prime-rl), not an indicator of the band."""
    ratios = [0.3, 0.8, 1.0, 1.7, 4.0, 6.0]
    old = torch.tensor([[math.log(r) for r in ratios] + [9.0]], dtype=torch.float64)  # the last: off the response
    behaviour = torch.zeros_like(old)
    mask = torch.tensor([[True] * len(ratios) + [False]])
    weights, sums = off_policy_weights(old, behaviour, mask, "icepop", icepop_low=0.5, icepop_high=5.0)
    # exp(log(r)) returns r to within a few float64 ulps: 1e-14 relative is ample
    assert weights[0].tolist() == pytest.approx([0.0, 0.8, 1.0, 1.7, 4.0, 0.0, 0.0], rel=1e-14, abs=0)
    assert sums["is_masked"] == 2 and sums["is_truncated"] == 0  # 0.3 and 6.0; the off-response 9.0 counts nowhere
    assert sums["is_ratio_sum"] == pytest.approx(sum(ratios), rel=1e-14)
    assert not weights.requires_grad


def test_icepop_scales_each_in_band_tokens_gradient_by_its_ratio_and_zeroes_the_rest() -> None:
    """The weight is a detached coefficient, as TIS's: d(loss)/d(logprob) is the plain one times the weight."""
    batch = random_batch(seed=9)
    gen = torch.Generator().manual_seed(10)
    behaviour = (
        batch["old_logprobs"] + (torch.rand(batch["old_logprobs"].shape, generator=gen, dtype=torch.float64) - 0.5) * 4
    )
    normalizer = float(batch["response_mask"].sum())
    weights, _ = off_policy_weights(batch["old_logprobs"], behaviour, batch["response_mask"], "icepop")
    grads = []
    for token_weights in (None, weights):
        logprobs = batch["logprobs"].clone().requires_grad_(True)
        loss, _ = policy_loss(**{**batch, "logprobs": logprobs}, normalizer=normalizer, token_weights=token_weights)
        loss.backward()
        grads.append(logprobs.grad)
    in_band = batch["response_mask"] & (weights > 0)
    assert (weights[in_band] != 1).all()  # the ratios are not 1: an indicator weight would fail the next line
    # (w * g) / n against w * (g / n): one rounding apart in float64
    torch.testing.assert_close(grads[1], weights * grads[0], rtol=1e-13, atol=0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"correction": "is"}, "expected one of"),
        ({"tis_cap": 0.0}, "tis_cap > 0"),
        ({"icepop_high": 0.9}, "icepop_high"),
    ],
)
def test_off_policy_weights_validation(kwargs: dict, message: str) -> None:
    batch = random_batch(seed=8)
    args = {"correction": "tis", **kwargs}
    with pytest.raises(ValueError, match=message):
        off_policy_weights(batch["old_logprobs"], batch["old_logprobs"], batch["response_mask"], **args)


def test_micro_batches_with_global_normalizer_sum_to_full_batch() -> None:
    batch = random_batch(seed=2, n=8)
    normalizer = float(batch["response_mask"].sum())
    full_input = batch["logprobs"].clone().requires_grad_(True)
    full_loss, full_metrics = policy_loss(**{**batch, "logprobs": full_input}, normalizer=normalizer)
    full_loss.backward()

    split_input = batch["logprobs"].clone().requires_grad_(True)
    total_loss = torch.zeros((), dtype=torch.float64)
    summed = dict.fromkeys(full_metrics, 0.0)
    for rows in (slice(0, 3), slice(3, 8)):
        part = {key: value[rows] for key, value in batch.items()}
        part["logprobs"] = split_input[rows]
        loss, metrics = policy_loss(**part, normalizer=normalizer)
        loss.backward()
        total_loss = total_loss + loss.detach()
        for key, value in metrics.items():
            summed[key] += value
    assert total_loss.item() == pytest.approx(full_loss.item(), rel=1e-12)
    assert summed == pytest.approx(full_metrics, rel=1e-12)
    torch.testing.assert_close(split_input.grad, full_input.grad)


def test_on_policy_gradient_is_minus_advantage_over_normalizer() -> None:
    logprobs = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -0.5, -0.5]], requires_grad=True)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    adv = torch.tensor([2.0, -1.0])
    loss, metrics = policy_loss(logprobs, logprobs.detach(), adv, mask, normalizer=5)
    loss.backward()
    # ratio = 1: loss = -sum(A * mask) / 5 and d loss / d logprob = -A * mask / 5.
    assert loss.item() == pytest.approx(-(2.0 * 2 - 1.0 * 3) / 5)
    expected_grad = torch.tensor([[-0.4, -0.4, 0.0], [0.2, 0.2, 0.2]])
    torch.testing.assert_close(logprobs.grad, expected_grad)
    assert metrics == {"clip_frac": 0.0, "dual_clip_frac": 0.0, "approx_kl": 0.0}


def test_masked_garbage_does_not_leak() -> None:
    logprobs = torch.tensor([[-1.0, float("-inf")], [-1.0, float("nan")]], requires_grad=True)
    old = torch.tensor([[-1.0, 0.0], [-1.0, float("nan")]])
    mask = torch.tensor([[True, False], [True, False]])
    loss, metrics = policy_loss(logprobs, old, torch.tensor([1.0, -1.0]), mask, normalizer=2)
    loss.backward()
    assert loss.item() == 0.0 and math.isfinite(metrics["approx_kl"])
    assert torch.isfinite(logprobs.grad).all()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"old_logprobs": torch.zeros(2, 4)}, r"old_logprobs shape \(2, 4\) != logprobs shape \(2, 3\)"),
        ({"advantages": torch.zeros(3)}, r"advantages must be \[N\] or \[N, T\] = \(2, 3\), got shape \(3,\)"),
        ({"normalizer": 0}, r"normalizer=0"),
        ({"dual_clip": 1.0}, r"dual_clip=1.0"),
        ({"clip_low": 1.0}, r"clip_low=1.0"),
        ({"logprobs": torch.zeros(6)}, r"\[N, T\], got shape \(6,\)"),
    ],
)
def test_policy_loss_validation(change: dict, message: str) -> None:
    args = {
        "logprobs": torch.zeros(2, 3),
        "old_logprobs": torch.zeros(2, 3),
        "advantages": torch.zeros(2),
        "response_mask": torch.ones(2, 3),
        "normalizer": 6,
        **change,
    }
    with pytest.raises(ValueError, match=message):
        policy_loss(**args)


# ---------------------------------------------------------------------------------------------- token stats


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)])
def test_token_logprobs_match_log_softmax(dtype: torch.dtype, tol: float) -> None:
    gen = torch.Generator().manual_seed(0)
    logits = (torch.randn(3, 5, 50, generator=gen) * 4).to(dtype)
    ids = torch.randint(0, 50, (3, 5), generator=gen)
    expected = torch.log_softmax(logits.float(), -1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    got = token_logprobs(logits, ids)
    assert got.dtype == torch.float32 and got.shape == (3, 5)
    torch.testing.assert_close(got, expected, atol=tol, rtol=tol)
    with pytest.raises(ValueError, match=r"token_ids shape \(3, 4\)"):
        token_logprobs(logits, ids[:, :4])


def test_token_logprobs_are_differentiable() -> None:
    logits = torch.randn(2, 3, 7, requires_grad=True)
    token_logprobs(logits, torch.zeros(2, 3, dtype=torch.long)).sum().backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()


def test_entropy_from_logits() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 5, 30, generator=gen, dtype=torch.float64) * 3
    probs = torch.softmax(logits, -1)
    expected = -(probs * torch.log(probs)).sum(-1)
    got = entropy_from_logits(logits, chunk_size=3)  # chunks that do not divide 20 positions
    assert got.shape == (4, 5) and got.dtype == torch.float32
    torch.testing.assert_close(got, expected.float(), atol=1e-5, rtol=1e-5)
    uniform = entropy_from_logits(torch.zeros(2, 1000))
    torch.testing.assert_close(uniform, torch.full((2,), math.log(1000)))
    # Higher temperature (logits / T) means higher entropy.
    assert (entropy_from_logits(logits / 2.0) > entropy_from_logits(logits)).all()


# ---------------------------------------------------------------------------------------------- length bias


def test_length_bias_by_hand() -> None:
    rewards = [1.0, 1.0, 0.0, 1.0, 1.0]
    correct = [True, True, False, True, True]
    lengths = [1000, 500, 1000, 1000, 0]
    ranks = [0.05, 0.1, 0.05, 0.5, 0.0]
    got = length_bias(rewards, correct, lengths, ranks, mu=1e-3, threshold=0.1)
    np.testing.assert_allclose(got, [0.5, 1 / 1.5, 0.0, 1.0, 1.0])
    assert length_bias(rewards, correct, lengths, ranks, mu=0.0, threshold=0.1).tolist() == rewards


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mu": -1.0}, r"mu=-1.0"),
        ({"threshold": 1.5}, r"threshold=1.5"),
        ({"lengths": [-1, 2]}, r"bad positions \[0\]"),
        ({"ranks": [0.1]}, r"equal length"),
    ],
)
def test_length_bias_validation(kwargs: dict, message: str) -> None:
    args = {"rewards": [1.0, 0.0], "correct": [True, False], "lengths": [3, 4], "ranks": [0.1, 0.2], "mu": 1e-3}
    args = {"threshold": 0.1, **args, **kwargs}
    with pytest.raises(ValueError, match=message):
        length_bias(**args)
