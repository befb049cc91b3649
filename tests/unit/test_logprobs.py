"""core.logprobs: chunked tempered log-probs and entropy equal the unchunked computation, in values and gradients,
and keep no logits alive for the backward pass."""

from __future__ import annotations

import math

import pytest
import torch

from core.grpo import entropy_from_logits, token_logprobs
from core.logprobs import token_logprobs_and_entropy

UNIT_ROUNDOFF = {torch.float32: 2.0**-24, torch.bfloat16: 2.0**-8}


def problem(tokens: int, hidden: int, vocab: int, dtype: torch.dtype, seed: int = 0, bias: bool = False):
    """Random hidden states, head, targets and per-token temperatures (0.6 .. 1.4), as a learner sees them."""
    generator = torch.Generator().manual_seed(seed)
    h = torch.randn(tokens, hidden, generator=generator, dtype=torch.float64).to(dtype)
    w = (torch.randn(vocab, hidden, generator=generator, dtype=torch.float64) / math.sqrt(hidden) * 2).to(dtype)
    b = torch.randn(vocab, generator=generator, dtype=torch.float64).to(dtype) if bias else None
    targets = torch.randint(vocab, (tokens,), generator=generator)
    temperature = 0.6 + 0.8 * torch.rand(tokens, generator=generator, dtype=torch.float64)
    return h, w, b, targets, temperature


def unchunked(h, w, b, targets, temperature):
    """The learner's computation before chunking: full float32 logits / T, then log-softmax and entropy."""
    dtype = torch.promote_types(w.dtype, torch.float32)
    logits = torch.nn.functional.linear(h, w, b).to(dtype) / temperature.to(dtype)[:, None]
    return token_logprobs(logits, targets), entropy_from_logits(logits).to(dtype)


@pytest.mark.parametrize("chunk_tokens", [1, 3, 7, 50])
@pytest.mark.parametrize("bias", [False, True])
def test_analytic_gradients_pass_gradcheck(chunk_tokens: int, bias: bool) -> None:
    h, w, b, targets, temperature = problem(tokens=7, hidden=5, vocab=11, dtype=torch.float64, bias=bias)
    inputs = [h.requires_grad_(), w.requires_grad_()] + ([b.requires_grad_()] if bias else [])

    def both(hidden, weight, *maybe_bias):
        return token_logprobs_and_entropy(
            hidden, weight, targets, temperature, chunk_tokens, bias=maybe_bias[0] if maybe_bias else None
        )

    assert torch.autograd.gradcheck(both, tuple(inputs), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("chunk_tokens", [5, 64, 1000])
def test_equals_the_unchunked_computation_in_values_and_gradients(dtype: torch.dtype, chunk_tokens: int) -> None:
    tokens, hidden, vocab = 64, 32, 1000
    h, w, b, targets, temperature = problem(tokens, hidden, vocab, dtype, seed=1, bias=True)
    upstream_lp = torch.randn(tokens, generator=torch.Generator().manual_seed(2))
    upstream_ent = torch.randn(tokens, generator=torch.Generator().manual_seed(3))

    results = []
    for fn in (unchunked, lambda *a: token_logprobs_and_entropy(*a[:2], a[3], a[4], chunk_tokens, bias=a[2])):
        leaves = [t.detach().clone().requires_grad_() for t in (h, w, b)]
        logprobs, entropy = fn(leaves[0], leaves[1], leaves[2], targets, temperature)
        ((logprobs * upstream_lp).sum() + (entropy * upstream_ent).sum()).backward()
        results.append((logprobs.detach(), entropy.detach(), *(leaf.grad.float() for leaf in leaves)))

    # Tolerance from the arithmetic. Both paths compute each logit by a length-H dot product; rows are batched
    # differently (chunk by chunk), so kernels may round differently. A GEMM accumulates in float32 (u32 = 2^-24),
    # so each logit is within H*u32*sum|h_i w_i| of exact, plus one final rounding to bf16 (u = 2^-8, relative)
    # when the head runs in bf16. A log-softmax or an entropy over V float32 terms adds at most V*u32*(1+max|z|).
    # The two paths differ by at most twice the sum.
    u32 = UNIT_ROUNDOFF[torch.float32]
    scaled = torch.nn.functional.linear(h.double(), w.double(), b.double()) / temperature[:, None]
    dot_bound = float((h.abs().double() @ w.abs().double().T + b.abs().double()).max()) / float(temperature.min())
    logits_max = float(scaled.abs().max())
    logit_error = hidden * u32 * dot_bound + (UNIT_ROUNDOFF[dtype] * logits_max if dtype == torch.bfloat16 else 0.0)
    value_tol = 2 * (logit_error + vocab * u32 * (1 + logits_max))
    (lp_a, ent_a, *grads_a), (lp_b, ent_b, *grads_b) = results
    assert (lp_a - lp_b).abs().max() <= value_tol
    assert (ent_a - ent_b).abs().max() <= value_tol
    assert torch.isfinite(lp_b).all() and (lp_b <= 0).all() and (ent_b >= 0).all()
    # Gradients: a logit error e moves softmax terms by a relative ~e, so each gradient moves by about value_tol
    # relative to its scale; in bf16 the gradient matmuls themselves round once more (2 u relative), and the
    # weight gradient sums T products (T*u32 relative).
    for name, ga, gb in zip(("hidden", "weight", "bias"), grads_a, grads_b, strict=True):
        scale = float(ga.abs().max())
        matmul = 2 * UNIT_ROUNDOFF[dtype] if dtype == torch.bfloat16 else tokens * u32
        assert float((ga - gb).abs().max()) <= (value_tol + matmul) * scale, name


def test_no_logits_are_kept_for_the_backward_pass() -> None:
    tokens, hidden, vocab, chunk = 64, 4, 500, 8
    h, w, _, targets, temperature = problem(tokens, hidden, vocab, torch.float32)
    h.requires_grad_()
    w.requires_grad_()
    saved: list[int] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        logprobs, entropy = token_logprobs_and_entropy(h, w, targets, temperature, chunk)
    # The inputs (hidden [64, 4], head [500, 4], targets, temperatures) are all that is saved: nothing of the size
    # of one chunk's logits [8, 500], let alone all of them [64, 500].
    assert max(saved) == vocab * hidden < chunk * vocab
    (logprobs.sum() + entropy.sum()).backward()
    assert h.grad is not None and w.grad is not None


def test_bad_shapes_raise_naming_them() -> None:
    h, w, _, targets, temperature = problem(4, 3, 5, torch.float32)
    with pytest.raises(ValueError, match=r"hidden \[T, H\] and weight \[V, H\]"):
        token_logprobs_and_entropy(h, w[:, :2], targets, temperature, 2)
    with pytest.raises(ValueError, match=r"must be \[T\] = \[4\]"):
        token_logprobs_and_entropy(h, w, targets[:3], temperature, 2)
    with pytest.raises(ValueError, match="chunk_tokens must be >= 1"):
        token_logprobs_and_entropy(h, w, targets, temperature, 0)


@pytest.mark.parametrize("tied", [True, False])
def test_response_head_in_a_qwen2_model_equals_the_full_logits_path(tied: bool) -> None:
    from bench.random_policy import PolicyShape, random_policy
    from core.logprobs import ResponseHead

    shape = PolicyShape(
        vocab_size=97, hidden_size=16, intermediate_size=32, num_layers=2, num_heads=2, num_kv_heads=1,
        max_positions=64, tie_embeddings=tied,
    )  # fmt: skip
    model = random_policy(shape)  # float32, seeded with 0
    input_ids = torch.randint(97, (3, 10))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[2, 7:] = 0  # a shorter, right-padded row
    response = torch.zeros(3, 10)
    response[0, 4:10], response[1, 2:6], response[2, 5:7] = 1, 1, 1
    temperatures = torch.tensor([0.7, 1.0, 1.3])
    rows, positions = torch.nonzero(response[:, 1:], as_tuple=True)  # position j predicts token j + 1

    def loss_of(values: torch.Tensor) -> torch.Tensor:
        return (values[:, 0] * torch.linspace(-1, 1, len(values))).sum() + 0.3 * values[:, 1].sum()

    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1].float()
    logits = logits / temperatures[:, None, None]
    full = torch.stack(
        [token_logprobs(logits, input_ids[:, 1:])[rows, positions], entropy_from_logits(logits)[rows, positions]], -1
    )
    loss_of(full).backward()
    full_grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    names_before = list(model.state_dict())
    model.zero_grad()

    model.lm_head = ResponseHead(model.lm_head, chunk_tokens=4)
    assert list(model.state_dict()) == names_before  # same parameter names: checkpoints and syncs unchanged
    assert (model.lm_head.weight is model.model.embed_tokens.weight) == tied
    with model.lm_head.scoring(rows, positions, input_ids[rows, positions + 1], temperatures[rows]):
        chunked = model(input_ids=input_ids, attention_mask=attention_mask).logits
    loss_of(chunked).backward()
    # float32 throughout and the same kernels but for the head's row batching: rounding-level differences only
    torch.testing.assert_close(chunked, full, rtol=1e-5, atol=1e-5)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, full_grads[name], rtol=1e-4, atol=1e-6, msg=name)
    # outside scoring(...) the head is the plain linear head again
    assert model(input_ids=input_ids).logits.shape == (3, 10, 97)
