"""The learner tests' case (tests/integration/test_learner.py, test_learner_scale.py): the tiny policy, the batch,
the learner configuration, and how far float32 rounding may move what they compute (the bounds the tests compare
within)."""

from __future__ import annotations

import math
import socket

import torch

from bench.random_policy import PolicyShape
from core.config import LearnerConfig
from core.messages import TrainBatch
from tests.support.tiny_policy import WIDE_INIT

VOCAB = 300
CONFIG = LearnerConfig(micro_batch_size=2, torch_threads=1, lr=1e-3, grad_clip=1.0, num_cpus=1.0)

# ------------------------------------------------------------------------ how far float32 rounding moves a result
#
# Probabilistic rounding-error analysis (Higham & Mary, SIAM J. Sci. Comput. 41(5), 2019): with rounding errors
# independent and of random sign, a float32 sum of n terms is within lambda * sqrt(n) * u of the exact sum,
# relative to the magnitudes of its terms, except with probability 2 exp(-lambda^2 / 2); along a chain of sums the
# errors add the same way, so a result that n summands feed errs by lambda * sqrt(n) * u relative to its scale.
# u = 2^-24; lambda = 5 (odds 7e-6 per bound); two computations of one result differ by at most twice that.
# (Worst-case bounds, n * u, are sqrt(n) / lambda = 7 to 11 times larger here. Measured differences stay below 5%
# of these bounds with the native AVX-512/AMX kernels, with ATEN_CPU_CAPABILITY=avx2 or default, and with MKL
# and oneDNN limited to AVX2 or less. ATEN_CPU_CAPABILITY=default with MKL_ENABLE_INSTRUCTIONS=SSE4_2 moves an
# up_proj weight whose gradient is near 0 by 6.6e-5, as on AMD EPYC: see test_learner's `assert_adamw_step_matches`.)
FLOAT32_U = 2.0**-24
ROUNDING_LAMBDA = 5.0
HIDDEN, INTERMEDIATE, HEAD_DIM, LAYERS = 64, 128, 16, 2
POSITIONS = 12  # the batch's width (make_batch): attention sums over at most 12 positions
# The summands from the embeddings to a tempered logit: per decoder layer its input norm, the q/k/v projections,
# the attention scores, the softmax and the weighted values, the output projection, the second norm, gate/up and
# down; then the final norm, the output head, and the vocabulary's logsumexp (or entropy).
LAYER_SUMS = HIDDEN + HIDDEN + HEAD_DIM + 2 * POSITIONS + HIDDEN + HIDDEN + HIDDEN + INTERMEDIATE
FORWARD_SUMS = LAYERS * LAYER_SUMS + HIDDEN + HIDDEN + VOCAB  # 1,404
# A weight's gradient: the forward pass, then back through the vocabulary (softmax and output head), the final
# norm and the layers (the same sums transposed), then the sum over the batch's 4 x 12 positions.
GRADIENT_SUMS = FORWARD_SUMS + 2 * VOCAB + HIDDEN + LAYERS * LAYER_SUMS + 4 * POSITIONS  # 3,092


def rounding(summands: int) -> float:
    """How far two float32 computations of one result that `summands` terms feed can differ, relative to its
    scale (see above)."""
    return 2 * ROUNDING_LAMBDA * math.sqrt(summands) * FLOAT32_U


# A tiny random Qwen2 (tied embeddings, as the project's base policy) with peaked logits (wide init), so that the
# temperature visibly changes the entropy; its vocabulary padded to VOCAB rows.
POLICY = PolicyShape(
    vocab_size=VOCAB,
    hidden_size=HIDDEN,
    intermediate_size=INTERMEDIATE,
    num_layers=LAYERS,
    num_heads=4,
    num_kv_heads=2,
    head_dim=HEAD_DIM,
    max_positions=64,
    initializer_range=WIDE_INIT,
)


def make_batch() -> TrainBatch:
    """One long sample and three short ones, right-padded, each with its own advantage and temperature.

    With two ranks the long sample fills one shard and the three short ones the other, so at micro-batch size
    2 the ranks need different numbers of micro-batches (1 and 2): the learner must pad the first rank.
    """
    generator = torch.Generator().manual_seed(1)
    lengths = [(4, 8), (3, 2), (3, 3), (2, 2)]  # (prompt, response) tokens
    width = max(p + r for p, r in lengths)
    assert width == POSITIONS  # the rounding bounds above count on it
    input_ids = torch.zeros((len(lengths), width), dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    response_mask = torch.zeros((len(lengths), width), dtype=torch.float32)
    for i, (p, r) in enumerate(lengths):
        input_ids[i, : p + r] = torch.randint(1, VOCAB, (p + r,), generator=generator)
        attention_mask[i, : p + r] = 1
        response_mask[i, p : p + r] = 1.0
    return TrainBatch(
        input_ids=input_ids,
        attention_mask=attention_mask,
        response_mask=response_mask,
        advantages=torch.tensor([1.0, -0.8, 0.5, -1.2]),
        temperatures=torch.tensor([1.0, 0.6, 1.4, 0.9]),
    )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
