"""Checks on what rollout workers generate, shared by the rollout pool's tests (tests/integration/
test_rollout_pool.py, test_weight_transport.py): requests, transformers' log-probs of a rollout, whether a rollout
was generated with the given weights, and waiting for a killed worker's process to be gone."""

from __future__ import annotations

import os
import time

import torch

from core.messages import Rollout, RolloutRequest

LOGPROB_ATOL = 1e-4
"""Per token, |engine log-prob - transformers log-prob| for the same float32 weights. Both compute the same
float32 forward in a different order (vLLM's packed oneDNN GEMMs and fused attention against PyTorch's matmuls):
rounding of ~1e-7 relative per operation, over a 4-layer model with logits of order 10, measured at most 2e-5 and
2e-6 on average. An engine generating with other weights (a stale output head after a sync, measured) is off by
1e-2 and more; the perturbation below moves log-probs by far more than that."""

PERTURBATION = 0.05
"""Each parameter moves by this many of its own standard deviations times a standard normal draw."""


def requests(counts: list[int], step: int = 0) -> list[RolloutRequest]:
    """Questions q0, q1, ... asking for `counts` samples each: one 4-token prompt, 24 new tokens, fixed seeds."""
    prompt = (1, 2, 3, 4)
    return [RolloutRequest(f"q{i}", prompt, n, 24, seed=100 + i, step=step) for i, n in enumerate(counts)]


def reference_logprobs(model, rollout: Rollout, temperature: float) -> list[torch.Tensor]:
    """log softmax(logits / T) of each completion token, by a transformers forward over prompt + completion."""
    prompt = list(rollout.prompt_token_ids)
    out = []
    with torch.no_grad():
        for c in rollout.completions:
            ids = torch.tensor([prompt + list(c.token_ids)])
            logits = model(ids).logits[0, len(prompt) - 1 : -1].float()
            out.append(torch.log_softmax(logits / temperature, dim=-1).gather(-1, ids[0, len(prompt) :, None])[:, 0])
    return out


def assert_generated_with(rollouts: list[Rollout], model, other_model, temperature: float) -> None:
    """Every sampled token's log-prob is `model`'s within LOGPROB_ATOL, and `other_model`'s is far from it."""
    gaps, others = [], []
    for rollout in rollouts:
        engine = [torch.tensor(c.logprobs) for c in rollout.completions]
        for got, want, other in zip(
            engine,
            reference_logprobs(model, rollout, temperature),
            reference_logprobs(other_model, rollout, temperature),
            strict=True,
        ):
            gaps.append((got - want).abs().max())
            others.append((got - other).abs().max())
    assert max(gaps) <= LOGPROB_ATOL, f"largest log-prob gap to the synced weights: {max(gaps):.2e}"
    assert max(others) > 100 * LOGPROB_ATOL  # the base weights would not pass


def wait_until_gone(pid: int, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    raise AssertionError(f"process {pid} still alive after SIGKILL")
