"""cluster.plan: the memory arithmetic of `mode=plan`, against hand-computed cases and the learner benchmark."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from cluster.plan import GB, SLEEPING_ENGINE_BYTES, ModelShape, colocated_phases, fit_problems, plan_memory
from core.config import LearnerConfig
from tests.support.paper_models import QWEN_1P5B, QWEN_7B


def test_parameter_counts_of_the_paper_models() -> None:
    # Published sizes: 1.78B (1.5B + untied 151,936 x 1,536 embeddings twice) and 7.62B.
    assert ModelShape.from_config(QWEN_1P5B).parameters == pytest.approx(1.777e9, rel=1e-3)
    assert ModelShape.from_config(QWEN_7B).parameters == pytest.approx(7.616e9, rel=1e-3)


def test_hand_computed_terms_of_the_1p5b_recipe() -> None:
    shape = ModelShape.from_config(QWEN_1P5B)
    learner = LearnerConfig(
        num_ranks=2, micro_batch_size=4, gradient_checkpointing=True, max_tokens_per_micro_batch=32768,
        logits_chunk_tokens=4096,
    )  # fmt: skip
    plan = plan_memory(shape, learner, "bfloat16", max_sequence=8192)
    terms = plan.learner
    assert plan.tokens_per_micro_batch == 32768
    assert terms["weights, gradients and AdamW state (float32, sharded)"] == 16 * shape.parameters / 2  # 14.2 GB
    assert terms["logits chunk (2 x chunk x V x 4 B)"] == 2 * 4096 * 151936 * 4  # 4.98 GB
    assert terms["output head's float32 gradient"] == 151936 * 1536 * 4
    # checkpointed layer inputs 28 x 1,536 x 2 B per token, plus one layer recomputed (10 H + 3 I) x 2 B per token
    assert terms["activations of one micro-batch"] == 32768 * (28 * 1536 * 2 + (10 * 1536 + 3 * 8960) * 2)
    assert 20 * GB < plan.learner_total < 35 * GB  # the recipe's comment: about 27 GB
    assert fit_problems(plan, 80 * GB, 0.85, 8192) == []
    assert plan.sync_bytes == shape.parameters * 2  # bf16 weights to every rollout worker


def test_what_does_not_fit_is_named_with_the_key_that_fixes_it() -> None:
    shape = ModelShape.from_config(QWEN_7B)
    learner = LearnerConfig(num_ranks=1, micro_batch_size=4, gradient_checkpointing=True)
    plan = plan_memory(shape, learner, "bfloat16", max_sequence=8192)
    (problem,) = fit_problems(plan, 80 * GB, 0.85, 8192)
    assert "weights, gradients and AdamW state" in problem and "learner.num_ranks" in problem  # 122 GB on 1 rank
    wide = plan_memory(shape, replace(learner, num_ranks=8, gradient_checkpointing=False), "bfloat16", 8192)
    assert "learner.max_tokens_per_micro_batch" in fit_problems(wide, 80 * GB, 0.85, 8192)[0]
    # a rollout GPU whose utilisation leaves no room for one sequence's KV cache
    assert "rollout.gpu_memory_utilization" in fit_problems(plan, 16 * GB, 0.9, 8192)[-1]


def test_plan_agrees_with_the_learner_benchmark() -> None:
    # bench.learner measured the step's peak on a 2-layer, hidden-64 Qwen2 with V = 151,936 (4 x 512 tokens,
    # chunks of 256). The plan's step terms (logits chunk, head gradient, activations without checkpointing,
    # gradients) must account for that measurement within a factor of two: they are the terms that grow with it.
    measured = json.loads((Path(__file__).parents[2] / "bench" / "results" / "learner.json").read_text())
    shape = ModelShape(vocab=151936, hidden=64, intermediate=128, layers=2, heads=4, kv_heads=2, head_dim=16,
                       tied=False)  # fmt: skip
    learner = LearnerConfig(num_ranks=1, micro_batch_size=4, logits_chunk_tokens=256)
    plan = plan_memory(shape, learner, "float32", max_sequence=512)
    predicted = (
        plan.learner["logits chunk (2 x chunk x V x 4 B)"]
        + plan.learner["output head's float32 gradient"]
        + plan.learner["activations of one micro-batch"]
        + 4 * shape.parameters  # the step's float32 gradients (AdamW's state exists before it)
    )
    peak = measured["peak_memory_ratio_after"] * measured["logits_tensor_bytes"]
    assert predicted / 2 <= peak <= predicted * 2, (predicted / GB, peak / GB)


def test_colocated_phases_of_one_gpu_hand_computed() -> None:
    shape = ModelShape.from_config(QWEN_1P5B)
    learner = LearnerConfig(num_ranks=1, micro_batch_size=4, gradient_checkpointing=True)
    plan = plan_memory(shape, learner, "bfloat16", max_sequence=8192)
    phases = colocated_phases(plan, 80 * GB, 0.65)
    # training: the learner's terms and the sleeping engine's allowance; generation: float32 weights and AdamW's
    # two moments (12 B/param, gradients freed) beside the engine's share of the GPU
    assert sum(phases["training, engine asleep"].values()) == plan.learner_total + SLEEPING_ENGINE_BYTES
    assert plan.learner_resident == 12 * shape.parameters  # 21.3 GB
    handover = 151936 * 1536 * (4 + 2)  # the embedding gathered in float32 and cast to bf16: 1.4 GB
    assert sum(phases["generation"].values()) == pytest.approx(12 * shape.parameters + 0.65 * 80 * GB + handover)
    assert fit_problems(plan, 80 * GB, 0.65, 8192, colocated=True) == []
    # the split layout would take 0.85 of a rollout GPU; colocated, that share crowds out the learner's state
    (problem,) = fit_problems(plan, 80 * GB, 0.85, 8192, colocated=True)
    assert "colocated generation" in problem and "rollout.gpu_memory_utilization to at most 0.71" in problem
    assert fit_problems(plan, 80 * GB, 0.85, 8192) == []
