"""Tempered log-probs and entropy of response tokens from final hidden states, without the full logits.

The learner needs, for every response token, `log softmax(logits / T)[token]` (the loss) and the entropy of
`softmax(logits / T)` (the temperature controller). Computing them from a `[n, L, V]` float32 logits tensor is
what bounds the learner at the paper's scale: with a micro-batch of 4 x 8,192 tokens and V = 151,936 one such
tensor is 19.9 GB, and the plain autograd graph keeps about four of them alive (logits, their float32 copy, the
tempered copy, the softmax). Here the head `hidden @ W.T` is applied to response positions only, in chunks of
`chunk_tokens` rows, and the backward pass recomputes each chunk's logits instead of keeping them:

    peak extra memory ~ 2 * chunk_tokens * V * 4 bytes (a chunk's logits and its softmax, or its gradient)
    e.g. 2 x 4,096 tokens x 151,936 x 4 B = 5.0 GB at most, whatever the micro-batch's length,

against `4 * n * L * V * 4 B` before (80 GB at 4 x 8,192). The price is one more head matmul per token in the
backward pass (the head's FLOPs go from 3 to 4 matmuls of `T x H x V`).

Same numbers as the unchunked computation: the head runs in the weight's dtype (bf16 on GPUs, as FSDP2's mixed
precision gives it), logits are then cast to float32 and divided by each token's temperature, exactly as the
learner did before; gradients are the analytic ones of the same float32 expressions.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


def _chunk_logits(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, temperature: torch.Tensor
) -> torch.Tensor:
    """Tempered logits `[t, V]` of one chunk: the head in the weight's dtype, then float32 (float64 stays) / T."""
    logits = torch.nn.functional.linear(hidden, weight, bias).to(_float_dtype(weight))
    return logits.div_(temperature[:, None])  # in place: only called where autograd records nothing


def _float_dtype(weight: torch.Tensor) -> torch.dtype:
    """float32, or float64 for float64 weights (so that gradcheck can check the analytic gradients)."""
    return torch.promote_types(weight.dtype, torch.float32)


def _rowwise_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """`(a * b).sum(-1)` for [t, V] tensors as a batched matmul, without a [t, V] product in memory."""
    return (a[:, None, :] @ b[:, :, None]).reshape(-1)


class _ChunkedTokenLogprobs(torch.autograd.Function):
    """Autograd function behind `token_logprobs_and_entropy`: keeps only the inputs, recomputes per chunk."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, temperature, chunk_tokens):  # type: ignore[override]
        logprobs = hidden.new_empty(hidden.shape[0], dtype=_float_dtype(weight))
        entropy = torch.empty_like(logprobs)
        for start in range(0, hidden.shape[0], chunk_tokens):
            rows = slice(start, start + chunk_tokens)
            logits = _chunk_logits(hidden[rows], weight, bias, temperature[rows])
            normalizer = torch.logsumexp(logits, dim=-1)
            logprobs[rows] = logits.gather(-1, targets[rows, None]).squeeze(-1) - normalizer
            probs = (logits - normalizer[:, None]).exp_()
            entropy[rows] = normalizer - _rowwise_dot(probs, logits)
            del logits, probs  # at most two [chunk, V] tensors at a time
        ctx.save_for_backward(hidden, weight, bias, targets, temperature)
        ctx.chunk_tokens = chunk_tokens
        return logprobs, entropy

    @staticmethod
    def backward(ctx, grad_logprobs, grad_entropy):  # type: ignore[override]
        hidden, weight, bias, targets, temperature = ctx.saved_tensors
        grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        accumulate = _float_dtype(weight)
        grad_weight = torch.zeros(weight.shape, dtype=accumulate, device=weight.device)
        grad_bias = torch.zeros(weight.shape[0], dtype=accumulate, device=weight.device) if bias is not None else None
        for start in range(0, hidden.shape[0], ctx.chunk_tokens):
            rows = slice(start, start + ctx.chunk_tokens)
            logits = _chunk_logits(hidden[rows], weight, bias, temperature[rows])
            probs = torch.softmax(logits, dim=-1)
            # d logprob / d z = onehot(target) - p;  d entropy / d z = p * (E_p[z] - z); computed in place in the
            # logits' buffer, so that two [chunk, V] tensors exist at a time here too
            expected = _rowwise_dot(probs, logits)[:, None]
            grad_z = logits.neg_().add_(expected).mul_(grad_entropy[rows, None]).sub_(grad_logprobs[rows, None])
            grad_z.mul_(probs)
            del probs
            grad_z.scatter_add_(-1, targets[rows, None], grad_logprobs[rows, None])
            # z = float(x) / T, so dx = dz / T, in the head's dtype as autograd would hand it back
            grad_x = grad_z.div_(temperature[rows, None])
            if grad_hidden is not None:
                grad_hidden[rows] = grad_x.to(weight.dtype) @ weight
            grad_weight += grad_x.T @ hidden[rows].to(accumulate)
            if grad_bias is not None:
                grad_bias += grad_x.sum(dim=0)
        grad_weight = grad_weight.to(weight.dtype) if ctx.needs_input_grad[1] else None
        if grad_bias is not None:
            grad_bias = grad_bias.to(bias.dtype) if ctx.needs_input_grad[2] else None
        return grad_hidden, grad_weight, grad_bias, None, None, None


def token_logprobs_and_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    temperature: torch.Tensor,
    chunk_tokens: int,
    bias: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return `(logprobs, entropy)`, float32 `[T]` each (float64 for float64 weights), differentiable in both.

    `hidden` `[T, H]` are the final hidden states that predict the tokens `targets` `[T]`, `weight` `[V, H]`
    (and optional `bias` `[V]`) the output head, `temperature` `[T]` the temperature that sampled each token.
    `logprobs[t] = log_softmax(z_t)[targets[t]]` and `entropy[t] = H(softmax(z_t))` in nats, with
    `z_t = float32(hidden[t] @ weight.T + bias) / temperature[t]`. At most `chunk_tokens` rows of logits exist at a
    time, in the forward and in the backward pass.
    """
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"need hidden [T, H] and weight [V, H], got {tuple(hidden.shape)} and {tuple(weight.shape)}")
    if targets.shape != hidden.shape[:1] or temperature.shape != hidden.shape[:1]:
        raise ValueError(
            f"targets {tuple(targets.shape)} and temperature {tuple(temperature.shape)} must be [T] = "
            f"[{hidden.shape[0]}]"
        )
    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be >= 1, got {chunk_tokens}")
    temperature = temperature.to(device=hidden.device, dtype=_float_dtype(weight))
    return _ChunkedTokenLogprobs.apply(hidden, weight, bias, targets.long(), temperature, chunk_tokens)


class ResponseHead(torch.nn.Module):
    """A causal LM's output head that, while `scoring(...)` is active, returns the tempered log-probs and entropy
    of the given response tokens (`[T, 2]`) instead of logits for every position (`[n, L, V]`).

    It takes the place of `model.lm_head` and keeps its parameters under the same names (`lm_head.weight`, tied to
    the input embedding when the model ties them), so checkpoints, weight syncs and FSDP2 sharding see the same
    model. Because it runs inside the model's own forward, FSDP2 gathers its weight and reduces its gradient as
    for any other layer. Outside `scoring(...)` it is the plain linear head.
    """

    def __init__(self, head: torch.nn.Linear, chunk_tokens: int) -> None:
        super().__init__()
        if chunk_tokens < 1:
            raise ValueError(f"chunk_tokens must be >= 1, got {chunk_tokens}")
        self.weight = head.weight
        self.bias = head.bias
        self.chunk_tokens = chunk_tokens
        self._request: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    @contextlib.contextmanager
    def scoring(
        self, rows: torch.Tensor, positions: torch.Tensor, targets: torch.Tensor, temperature: torch.Tensor
    ) -> Iterator[None]:
        """Within the block, a forward returns `[T, 2]`: log-prob and entropy of token `targets[t]` predicted by
        the hidden state at `(rows[t], positions[t])`, at `temperature[t]`."""
        self._request = (rows, positions, targets, temperature)
        try:
            yield
        finally:
            self._request = None

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits `[..., V]`, or `[T, 2]` (log-prob, entropy) while `scoring(...)` is active."""
        if self._request is None:
            return torch.nn.functional.linear(hidden, self.weight, self.bias)
        rows, positions, targets, temperature = self._request
        logprobs, entropy = token_logprobs_and_entropy(
            hidden[rows, positions], self.weight, targets, temperature, self.chunk_tokens, bias=self.bias
        )
        return torch.stack([logprobs, entropy], dim=-1)
