"""GRPO as E3 ran it (E3_SPEC sections 4 and 5): group advantages, the clipped policy loss, token statistics.

How this departs from the GRPO paper (Shao et al. 2024, DeepSeekMath):
- Groups have different sizes (the dynamic rollout budget gives each question its own count). A group of one
  sample gets advantage 0: it has no baseline. (The E3 reference code gives it its raw reward.)
- Advantage `(r - mean) / (std + 1e-6)` with the unbiased (N-1) std, as in verl; an all-equal group gives 0.
- No KL-to-reference term in the loss and no entropy bonus: the paper's runs used coefficient 0 for both, and
  the reference-model pass is skipped altogether.
- The loss is the token mean over all response tokens of the global batch (the paper averages per sequence,
  then over the group). `policy_loss` divides by a caller-given `normalizer` (the global token count), so
  per-rank, per-micro-batch losses sum to the global token mean.
- PPO clip with separate low/high ranges (equal, 0.2, by default) plus verl's dual clip: for negative advantages
  the token loss is capped at `dual_clip * |A|`, so a huge ratio on a bad token cannot blow up the update.
- The log-ratio is clamped to [-20, 20] before `exp` (as verl) so that a garbage log-prob cannot overflow.
- Optional off-policy correction (`off_policy_weights`: TIS or IcePop, a detached per-token weight against the
  rollout engine's log-probs, the PPO ratio still against the learner's old log-probs; docs/generation-ahead.md).
- Optional length bias on rewards (`length_bias`, from the E3 reference code, not in the paper): correct
  answers to the easiest questions are rewarded `1 / (1 + mu * length)`.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np
import torch

_LOG_RATIO_LIMIT = 20.0


def group_advantages(rewards: Sequence[float], group_ids: Sequence[Hashable], eps: float = 1e-6) -> np.ndarray:
    """Return per-sample GRPO advantages `(r - mean_g) / (std_g + eps)` as float32, in input order.

    `group_ids[i]` names the group of sample i (any hashable; groups need not be contiguous or equal-sized).
    The std is unbiased (N-1). Groups of one sample and groups whose rewards are all equal get exactly 0.
    """
    r = np.asarray(rewards, dtype=np.float64)
    if r.ndim != 1:
        raise ValueError(f"rewards must be 1-D, got shape {r.shape}")
    if len(group_ids) != len(r):
        raise ValueError(f"need one group id per reward: {len(group_ids)} group ids vs {len(r)} rewards")
    if not np.isfinite(r).all():
        raise ValueError(f"rewards must be finite; bad positions {np.flatnonzero(~np.isfinite(r))[:10].tolist()}")
    if eps <= 0:
        raise ValueError(f"eps must be > 0, got eps={eps}")
    if len(r) == 0:
        return np.zeros(0, dtype=np.float32)
    index: dict[Hashable, int] = {}
    group = np.fromiter((index.setdefault(g, len(index)) for g in group_ids), dtype=np.int64, count=len(r))
    n_groups = len(index)
    counts = np.bincount(group, minlength=n_groups)
    mean = np.bincount(group, weights=r, minlength=n_groups) / counts
    deviation = r - mean[group]
    squares = np.bincount(group, weights=deviation**2, minlength=n_groups)
    std = np.sqrt(squares / np.maximum(counts - 1, 1))
    highest = np.full(n_groups, -np.inf)
    lowest = np.full(n_groups, np.inf)
    np.maximum.at(highest, group, r)
    np.minimum.at(lowest, group, r)
    degenerate = (counts < 2) | (highest == lowest)
    advantages = np.where(degenerate[group], 0.0, deviation / (std[group] + eps))
    return advantages.astype(np.float32)


def _check_policy_inputs(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    normalizer: float,
    clip_low: float,
    clip_high: float,
    dual_clip: float | None,
) -> None:
    """Raise ValueError naming the bad argument when shapes or hyper-parameters do not fit."""
    if logprobs.dim() != 2:
        raise ValueError(f"logprobs must be [N, T], got shape {tuple(logprobs.shape)}")
    for name, tensor in (("old_logprobs", old_logprobs), ("response_mask", response_mask)):
        if tensor.shape != logprobs.shape:
            raise ValueError(f"{name} shape {tuple(tensor.shape)} != logprobs shape {tuple(logprobs.shape)}")
    if advantages.shape not in (logprobs.shape[:1], logprobs.shape):
        raise ValueError(
            f"advantages must be [N] or [N, T] = {tuple(logprobs.shape)}, got shape {tuple(advantages.shape)}"
        )
    if not normalizer > 0:
        raise ValueError(f"normalizer must be > 0 (the global response-token count), got normalizer={normalizer}")
    if not 0 <= clip_low < 1 or clip_high < 0:
        raise ValueError(f"need 0 <= clip_low < 1 and clip_high >= 0, got clip_low={clip_low}, clip_high={clip_high}")
    if dual_clip is not None and dual_clip <= 1:
        raise ValueError(f"dual_clip must be > 1 (or None to disable), got dual_clip={dual_clip}")


CORRECTIONS = ("none", "tis", "icepop")
"""The off-policy corrections `off_policy_weights` knows."""


def off_policy_weights(
    old_logprobs: torch.Tensor,
    behaviour_logprobs: torch.Tensor,
    response_mask: torch.Tensor,
    correction: str,
    tis_cap: float = 2.0,
    icepop_low: float = 0.5,
    icepop_high: float = 5.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Return per-token loss weights [N, T] (no gradient) correcting for tokens sampled by another policy, and
    their sums over the response tokens (`is_ratio_sum`, `is_ratio_max`, `is_masked` and `is_truncated` counts).

    With `r = exp(old_logprobs - behaviour_logprobs)` (the log-ratio clamped to [-20, 20]): `tis` gives each
    token `min(r, tis_cap)`, `icepop` gives `r` itself where `icepop_low <= r <= icepop_high` and 0 elsewhere
    (IcePop's `M(r)`: the importance ratio, with the tokens outside the band dropped), `none` gives 1 everywhere.
    Positions off `response_mask` get 0 and count in no statistic. `is_masked` counts the response tokens
    outside IcePop's band (`icepop` only), `is_truncated` those with `r > tis_cap` (`tis` only).

    What for: a pipeline where the sampling policy lags the trained one, and the engine's own numerics. The PPO
    ratio is taken against the learner's old log-probs (the proximal policy, as in decoupled PPO), and each
    token's loss is then weighted by the importance ratio `r = pi_old / pi_behaviour`, truncated as `min(r, C)`
    (TIS, Yao et al. 2025) or kept as `r` while it stays in `[low, high]` and set to 0 outside (IcePop, Ring-1T
    2025, as verl, AReaL and prime-rl implement it), `pi_behaviour` being the rollout engine's tempered log-prob
    of the token. Either weight is a detached coefficient: the gradient flows through the PPO ratio only.
    """
    if correction not in CORRECTIONS:
        raise ValueError(f"correction={correction!r}: expected one of {', '.join(CORRECTIONS)}")
    if behaviour_logprobs.shape != old_logprobs.shape or response_mask.shape != old_logprobs.shape:
        raise ValueError(
            f"behaviour_logprobs {tuple(behaviour_logprobs.shape)}, old_logprobs {tuple(old_logprobs.shape)} and "
            f"response_mask {tuple(response_mask.shape)} must have one shape"
        )
    if not tis_cap > 0 or not 0 < icepop_low < 1 < icepop_high:
        raise ValueError(
            f"need tis_cap > 0 and 0 < icepop_low < 1 < icepop_high, got tis_cap={tis_cap}, "
            f"icepop_low={icepop_low}, icepop_high={icepop_high}"
        )
    mask = response_mask.bool()
    with torch.no_grad():
        log_ratio = torch.clamp(old_logprobs - behaviour_logprobs, -_LOG_RATIO_LIMIT, _LOG_RATIO_LIMIT)
        ratio = torch.where(mask, torch.exp(log_ratio), torch.zeros_like(log_ratio))
        in_band = (ratio >= icepop_low) & (ratio <= icepop_high)  # a NaN ratio is outside: dropped
        if correction == "tis":
            weights = torch.clamp(ratio, max=tis_cap)
        elif correction == "icepop":
            weights = torch.where(in_band, ratio, torch.zeros_like(ratio))
        else:
            weights = torch.ones_like(ratio)
        weights = torch.where(mask, weights, torch.zeros_like(weights))
        sums = {
            "is_ratio_sum": float(ratio.sum().item()),
            "is_ratio_max": float(ratio.max().item()) if mask.any() else 0.0,
            "is_masked": float((mask & ~in_band).sum().item()) if correction == "icepop" else 0.0,
            "is_truncated": float((mask & (ratio > tis_cap)).sum().item()) if correction == "tis" else 0.0,
        }
    return weights, sums


def policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    normalizer: float,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    dual_clip: float | None = 3.0,
    token_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Return the PPO clipped-surrogate loss `sum(token_loss * mask) / normalizer` and its metrics.

    Shapes: `logprobs`, `old_logprobs`, `response_mask` are [N, T]; `advantages` [N] (one per sample) or [N, T].
    Per token, with `ratio = exp(logprobs - old_logprobs)`:
    `loss = max(-A * ratio, -A * clamp(ratio, 1 - clip_low, 1 + clip_high))`, and for `A < 0` additionally
    `min(loss, dual_clip * |A|)`. Gradients flow through `logprobs` only; masked-out positions contribute
    nothing (even if they hold inf/NaN).

    Pass the response-token count of the whole global batch as `normalizer`: the losses of all ranks and
    micro-batches then sum to the global token mean. The metrics use the same normalizer, so they too are
    additive across micro-batches and ranks (summing them gives global token means):
    `clip_frac` (tokens where the ratio clip is active), `dual_clip_frac` (tokens where the dual clip is active)
    and `approx_kl` (the k1 estimate `old_logprob - logprob`).

    `token_weights` [N, T] (no gradient; `off_policy_weights` makes them) multiply each token's loss; None (the
    default) leaves the loss exactly as without it.
    """
    _check_policy_inputs(logprobs, old_logprobs, advantages, response_mask, normalizer, clip_low, clip_high, dual_clip)
    mask = response_mask.bool()
    adv = advantages.detach().to(logprobs.dtype)
    if adv.dim() == 1:
        adv = adv.unsqueeze(-1)
    log_ratio = torch.clamp(logprobs - old_logprobs.detach(), -_LOG_RATIO_LIMIT, _LOG_RATIO_LIMIT)
    ratio = torch.exp(log_ratio)
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    token_loss = torch.maximum(unclipped, clipped)
    dual_active = torch.zeros_like(mask)
    if dual_clip is not None:
        cap = -adv * dual_clip
        dual_active = (adv < 0) & (token_loss > cap)
        token_loss = torch.where(adv < 0, torch.minimum(token_loss, cap), token_loss)
    if token_weights is not None:
        if token_weights.shape != logprobs.shape:
            raise ValueError(
                f"token_weights shape {tuple(token_weights.shape)} != logprobs shape {tuple(logprobs.shape)}"
            )
        token_loss = token_loss * token_weights.detach().to(token_loss.dtype)
    zero = torch.zeros((), dtype=token_loss.dtype, device=token_loss.device)
    loss = torch.where(mask, token_loss, zero).sum() / normalizer
    with torch.no_grad():
        metrics = {
            "clip_frac": ((clipped > unclipped) & mask).sum().item() / normalizer,
            "dual_clip_frac": (dual_active & mask).sum().item() / normalizer,
            "approx_kl": torch.where(mask, -log_ratio, zero).sum().item() / normalizer,
        }
    return loss, metrics


def token_logprobs(logits: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """Return `log_softmax(logits)[..., token_ids]` as float32, shape `token_ids.shape`, differentiable.

    `logits` is [..., V] with leading dims equal to `token_ids`' (callers divide by the temperature first).
    Avoids materialising the full log-softmax: float32/float64 logits use `gather - logsumexp`; lower
    precision logits are processed one leading row at a time in float32 (for accuracy with bf16).
    """
    if logits.shape[:-1] != token_ids.shape:
        raise ValueError(
            f"logits shape {tuple(logits.shape)} must be token_ids shape {tuple(token_ids.shape)} + [vocab]"
        )
    index = token_ids.long().unsqueeze(-1)
    if logits.dtype in (torch.float32, torch.float64):
        picked = torch.gather(logits, -1, index).squeeze(-1)
        return (picked - torch.logsumexp(logits, dim=-1)).float()
    rows = [
        torch.gather(torch.log_softmax(row.float(), dim=-1), -1, row_index).squeeze(-1)
        for row, row_index in zip(logits, index, strict=True)
    ]
    return torch.stack(rows) if rows else logits.new_zeros(token_ids.shape, dtype=torch.float32)


def entropy_from_logits(logits: torch.Tensor, chunk_size: int = 1024) -> torch.Tensor:
    """Return the entropy in nats of `softmax(logits)` at every position: shape `logits.shape[:-1]`, float32.

    Callers divide logits by the sampling temperature first, to measure the tempered distribution. Works in
    float32 on chunks of `chunk_size` positions so that memory stays bounded for large vocabularies; stays
    differentiable.
    """
    if logits.dim() < 1 or logits.shape[-1] == 0:
        raise ValueError(f"logits must have a non-empty last (vocabulary) dim, got shape {tuple(logits.shape)}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got chunk_size={chunk_size}")
    flat = logits.reshape(-1, logits.shape[-1])
    pieces = []
    for chunk in torch.split(flat, chunk_size):
        chunk = chunk.float()
        probs = torch.softmax(chunk, dim=-1)
        pieces.append(torch.logsumexp(chunk, dim=-1) - (probs * chunk).sum(dim=-1))
    entropy = torch.cat(pieces) if pieces else flat.new_zeros(0, dtype=torch.float32)
    return entropy.reshape(logits.shape[:-1])


def length_bias(
    rewards: Sequence[float],
    correct: Sequence[bool],
    lengths: Sequence[int],
    ranks: Sequence[float],
    mu: float,
    threshold: float,
) -> np.ndarray:
    """Return rewards with the E3 length bias applied (E3_SPEC section 5), as float64, one per response.

    Per response: `ranks[i]` is its question's difficulty rank and `lengths[i]` its length in tokens. A correct
    response to a question with `rank <= threshold` gets `1 / (1 + mu * length)` instead of its reward; all
    others keep their reward. `mu = 0` returns the rewards unchanged.
    """
    r = np.asarray(rewards, dtype=np.float64)
    ok = np.asarray(correct, dtype=bool)
    length = np.asarray(lengths, dtype=np.float64)
    rank = np.asarray(ranks, dtype=np.float64)
    if not r.ndim == 1 or not (ok.shape == length.shape == rank.shape == r.shape):
        raise ValueError(
            "rewards, correct, lengths and ranks must be 1-D of equal length, got shapes "
            f"{r.shape}, {ok.shape}, {length.shape}, {rank.shape}"
        )
    if not (mu >= 0 and np.isfinite(mu)):
        raise ValueError(f"mu must be finite and >= 0, got mu={mu}")
    if not 0 <= threshold <= 1:
        raise ValueError(f"threshold must be in [0, 1], got threshold={threshold}")
    if (length < 0).any():
        raise ValueError(f"lengths must be >= 0; bad positions {np.flatnonzero(length < 0)[:10].tolist()}")
    if mu == 0:
        return r.copy()
    biased = ok & (rank <= threshold)
    return np.where(biased, 1.0 / (1.0 + mu * length), r)
