"""The learner's paper-scale paths: micro-batches by tokens, the chunked head, and several optimizer steps per
training step, each against the plain configuration on the same policy and batch (one gloo rank, in-process)."""

from __future__ import annotations

import dataclasses
import logging

import pytest
import torch

from actors.learner import Learner
from core.config import LearnerConfig
from tests.support.learner_case import CONFIG, FORWARD_SUMS, GRADIENT_SUMS, POLICY, free_port, make_batch, rounding


@pytest.fixture(scope="module")
def policy_dir(tiny_policy) -> str:
    """The learner tests' tiny policy (the session builds it once)."""
    return str(tiny_policy(POLICY))


def one_step(policy_dir: str, config: LearnerConfig) -> tuple[dict[str, float], Learner]:
    """Set up a one-rank learner with `config`, take one step on `make_batch()`, and shut it down."""
    learner = Learner(policy_dir, config, "float32", 0, 0, 1, "127.0.0.1", free_port())
    learner.setup()
    try:
        batch = make_batch()
        metrics = learner.train_step(batch, batch.num_response_tokens)
        steps = {int(state["step"]) for state in learner.optimizer.state.values()}
    finally:
        learner.shutdown()
    return metrics | {"optimizer_steps": float(max(steps))}, learner


@pytest.mark.slow
@pytest.mark.parametrize(
    ("budget", "chunk"),
    [
        (12, 1),  # lengths 12, 6, 5, 4: [12], [6, 5] (2 x 6 = 12), [4]; a logits chunk per token
        (8, 3),  # the 12-token sample is longer than the budget: [12], [6], [5], [4]; chunks of 3 tokens
        (1000, 4096),  # all four samples in one micro-batch (micro_batch_size 2 caps it at two)
    ],
)
def test_token_budget_and_chunks_give_the_same_step(
    policy_dir: str, budget: int, chunk: int, caplog: pytest.LogCaptureFixture
) -> None:
    plain, _ = one_step(policy_dir, CONFIG)
    with caplog.at_level(logging.WARNING, logger="actors.learner"):
        packed, _ = one_step(
            policy_dir, dataclasses.replace(CONFIG, max_tokens_per_micro_batch=budget, logits_chunk_tokens=chunk)
        )
    expected_micro_batches = {12: 3, 8: 4, 1000: 2}[budget]  # at most 2 rows each (CONFIG.micro_batch_size)
    assert packed["micro_batches"] == expected_micro_batches
    assert ("exceeds learner.max_tokens_per_micro_batch" in caplog.text) == (budget == 8)
    assert packed["tokens"] == plain["tokens"] == 15  # exact: a count
    assert packed["optimizer_steps"] == plain["optimizer_steps"] == 1
    assert packed["approx_kl"] == plain["approx_kl"] == 0.0  # one optimizer step: the ratio is exactly 1
    # Only the order of float32 sums differs (other micro-batches, other head chunks): within the rounding bounds
    # of tests/support/learner_case.py, relative to each quantity's scale.
    assert packed["entropy"] == pytest.approx(plain["entropy"], rel=rounding(FORWARD_SUMS))
    assert packed["loss"] == pytest.approx(plain["loss"], rel=rounding(FORWARD_SUMS), abs=2e-6)
    assert packed["grad_norm"] == pytest.approx(plain["grad_norm"], rel=rounding(GRADIENT_SUMS))


@pytest.mark.slow
def test_two_mini_batches_take_two_optimizer_steps(policy_dir: str) -> None:
    one, _ = one_step(policy_dir, CONFIG)
    two, _ = one_step(policy_dir, dataclasses.replace(CONFIG, ppo_mini_batches=2))
    assert one["optimizer_steps"] == 1 and two["optimizer_steps"] == 2
    # The entropy is measured before any update, by the separate no-grad pass: the same numbers as in the
    # single-pass path, summed in the same micro-batch order up to rounding.
    assert two["entropy"] == pytest.approx(one["entropy"], rel=rounding(FORWARD_SUMS))
    # The second mini-batch is trained by a policy the first one moved: its ratio is no longer 1.
    assert one["approx_kl"] == 0.0 and two["approx_kl"] != 0.0
    assert two["tokens"] == 15 and torch.isfinite(torch.tensor(two["loss"]))


def test_config_refuses_bad_scale_settings() -> None:
    from core.config import ConfigError, RunConfig, validate

    for field, value in (("logits_chunk_tokens", 0), ("ppo_mini_batches", 0), ("max_tokens_per_micro_batch", -1)):
        cfg = RunConfig()
        setattr(cfg.learner, field, value)
        with pytest.raises(ConfigError, match=f"learner.{field}"):
            validate(cfg)
