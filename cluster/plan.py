"""Will it fit? The memory of each GPU of a run, from the model's config and the run's config (no weights loaded).

`plan_memory` estimates, per learner GPU: the float32 master weights, gradients and AdamW state (sharded over
the FSDP2 ranks), the unsharded compute-dtype copies FSDP2 gathers, the activations of the largest micro-batch
(with or without gradient checkpointing), the logits chunk of the output head (core/logprobs.py) and the head's
float32 gradient accumulator; per rollout GPU: the weights and the KV cache vLLM is left; and the bytes moved per
weight sync. `fit_problems` names each term that does not fit and the config key that would fix it. `memory_plan`
reads a run's model `config.json` (no weights loaded); `print_plan` is `mode=plan`.

Colocated (`rollout.placement=colocated`: learner rank and vLLM engine on one GPU, `colocated_phases`), the GPU
holds in turn:
- while the learner trains, the learner's terms above, and what a sleeping engine keeps (sleep level 2 frees its
  weights and KV cache; CUDA graphs and allocator pools stay: `SLEEPING_ENGINE_BYTES`, an allowance, unmeasured);
- while the engine generates, what the learner keeps between steps (float32 weights and AdamW's two moments,
  sharded, 12 B/param: the gradients are freed after each step, activations and logits handed back to the
  device), the engine's `rollout.gpu_memory_utilization` share of the GPU (its weights, activations and KV
  cache), and the handover's transient (the largest parameter gathered in float32 and cast). vLLM sizes the KV
  cache from that share, so the share must leave the learner's 12 B/param and the transient. Not counted, on
  either side: the CUDA context and the NCCL and cuBLAS workspaces (a few hundred MB each), so leave a GB or two.

Activations are an estimate, not a measurement: per token and decoder layer a Qwen2/Llama block keeps about
`ACTIVATION_HIDDEN_COPIES` hidden-sized and `ACTIVATION_INTERMEDIATE_COPIES` intermediate-sized tensors for its
backward (norm inputs and outputs, q/k/v/o, the residuals; gate, up and their product); with gradient
checkpointing only each layer's input is kept, plus one layer's full set while it is recomputed.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.config import ConfigError, RunConfig

GB = 1e9
ACTIVATION_HIDDEN_COPIES = 10
ACTIVATION_INTERMEDIATE_COPIES = 3
BYTES = {"float32": 4, "bfloat16": 2}
SLEEPING_ENGINE_BYTES = 1.0 * GB
"""What a colocated vLLM engine still holds asleep (CUDA graphs, allocator pools): an allowance, not a measurement."""
RESIDENT_TERM = "learner between steps: float32 weights and AdamW state (sharded)"
HANDOVER_TERM = "handover: the largest parameter gathered (float32) and cast"


@dataclass(frozen=True)
class ModelShape:
    """What the plan needs of a causal LM's config (a Hugging Face `config.json`)."""

    vocab: int
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    tied: bool

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ModelShape:
        """Read a Qwen2/Llama-style config dict; KeyError names a missing field."""
        heads = int(config["num_attention_heads"])
        return cls(
            vocab=int(config["vocab_size"]),
            hidden=int(config["hidden_size"]),
            intermediate=int(config["intermediate_size"]),
            layers=int(config["num_hidden_layers"]),
            heads=heads,
            kv_heads=int(config.get("num_key_value_heads") or heads),
            head_dim=int(config.get("head_dim") or config["hidden_size"] // heads),
            tied=bool(config.get("tie_word_embeddings", False)),
        )

    @property
    def layer_parameters(self) -> int:
        """Parameters of one decoder layer: q/k/v (with biases, as Qwen2), o, gate/up/down, two norms."""
        h, q, kv = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim
        return h * q + q + 2 * (h * kv + kv) + q * h + 3 * h * self.intermediate + 2 * h

    @property
    def parameters(self) -> int:
        """All parameters: embeddings, layers, final norm and (untied) output head."""
        head = 0 if self.tied else self.vocab * self.hidden
        return self.vocab * self.hidden + self.layers * self.layer_parameters + self.hidden + head


@dataclass(frozen=True)
class MemoryPlan:
    """Bytes per GPU of the learner and of a rollout worker, and per weight sync, term by term."""

    learner: dict[str, float]
    rollout: dict[str, float]
    sync_bytes: float
    tokens_per_micro_batch: int
    learner_resident: float = 0.0
    """What a learner GPU keeps between steps: float32 weights and AdamW's two moments (gradients are freed)."""
    handover_bytes: float = 0.0
    """A colocated handover's transient: the largest parameter gathered in float32 and its cast."""

    @property
    def learner_total(self) -> float:
        """Peak bytes on one learner GPU (the sum of its terms)."""
        return sum(self.learner.values())

    def kv_cache_bytes(self, gpu_bytes: float, gpu_memory_utilization: float) -> float:
        """What vLLM leaves for the KV cache on a rollout GPU: its share of the GPU minus the weights (>= 0)."""
        return max(gpu_memory_utilization * gpu_bytes - self.rollout["weights"], 0.0)


def plan_memory(shape: ModelShape, learner: Any, dtype: str, max_sequence: int) -> MemoryPlan:
    """The memory of one learner GPU (under the learner config) and one rollout GPU for `shape` in `dtype`.

    `max_sequence` is the longest prompt + response; a micro-batch holds `learner.max_tokens_per_micro_batch`
    tokens, or `micro_batch_size * max_sequence` when that is 0 (or smaller).
    """
    compute = BYTES[dtype]
    params = shape.parameters
    ranks = learner.num_ranks
    tokens = learner.micro_batch_size * max_sequence
    if learner.max_tokens_per_micro_batch:
        tokens = min(tokens, max(learner.max_tokens_per_micro_batch, max_sequence))
    per_token_layer = (
        ACTIVATION_HIDDEN_COPIES * shape.hidden + ACTIVATION_INTERMEDIATE_COPIES * shape.intermediate
    ) * compute
    if learner.gradient_checkpointing:
        activations = tokens * (shape.layers * shape.hidden * compute + per_token_layer)
    else:
        activations = tokens * shape.layers * per_token_layer
    root = shape.vocab * shape.hidden * (1 if shape.tied else 2)  # FSDP2's root unit: embeddings (and head)
    learner_terms = {
        "weights, gradients and AdamW state (float32, sharded)": 16 * params / ranks,
        "gathered compute-dtype weights (root unit + one layer)": (root + shape.layer_parameters) * compute,
        "activations of one micro-batch": float(activations),
        "logits chunk (2 x chunk x V x 4 B)": 2 * min(learner.logits_chunk_tokens, tokens) * shape.vocab * 4,
        "output head's float32 gradient": shape.vocab * shape.hidden * 4,
    }
    weights = params * compute
    kv_per_token = 2 * shape.layers * shape.kv_heads * shape.head_dim * compute
    rollout_terms = {"weights": float(weights), "kv cache bytes per token": float(kv_per_token)}
    largest = shape.vocab * shape.hidden  # the embedding (or the untied head): the largest parameter
    return MemoryPlan(
        learner_terms,
        rollout_terms,
        float(weights),
        tokens,
        learner_resident=12 * params / ranks,
        handover_bytes=float(largest * (4 + compute)),
    )


def colocated_phases(plan: MemoryPlan, gpu_bytes: float, gpu_memory_utilization: float) -> dict[str, dict[str, float]]:
    """The terms on a GPU that holds a learner rank and its engine (`rollout.placement=colocated`), in each phase
    of a step: training (the engine asleep) and generation (the learner resident beside the engine's share)."""
    return {
        "training, engine asleep": {**plan.learner, "engine asleep (allowance)": SLEEPING_ENGINE_BYTES},
        "generation": {
            RESIDENT_TERM: plan.learner_resident,
            "engine: rollout.gpu_memory_utilization x GPU (weights, activations, KV cache)": gpu_memory_utilization
            * gpu_bytes,
            HANDOVER_TERM: plan.handover_bytes,
        },
    }


def fit_problems(
    plan: MemoryPlan, gpu_bytes: float, gpu_memory_utilization: float, max_sequence: int, colocated: bool = False
) -> list[str]:
    """What does not fit a GPU of `gpu_bytes`, each with the config key that would fix it; empty if it fits. With
    `colocated`, a learner rank and its engine share each GPU (`colocated_phases`): each phase must fit."""
    problems = []
    learner_total = plan.learner_total
    if colocated:
        phases = {
            name: sum(terms.values())
            for name, terms in colocated_phases(plan, gpu_bytes, gpu_memory_utilization).items()
        }
        learner_total, generation = phases["training, engine asleep"], phases["generation"]
        if generation > gpu_bytes:
            most = max(0.0, 1 - (plan.learner_resident + plan.handover_bytes) / gpu_bytes)
            problems.append(
                f"colocated generation: the learner keeps {plan.learner_resident / GB:.1f} GB ({RESIDENT_TERM}) "
                f"and the handover needs {plan.handover_bytes / GB:.1f} GB beside the engine's "
                f"{gpu_memory_utilization:.2f} x {gpu_bytes / GB:.1f} GB: "
                f"{generation / GB:.1f} GB > {gpu_bytes / GB:.1f} GB; set rollout.gpu_memory_utilization to at most "
                f"{math.floor(most * 100) / 100:.2f} (or raise learner.num_ranks)"
            )
    if learner_total > gpu_bytes:
        largest = max(plan.learner, key=plan.learner.get)
        fix = {
            "weights, gradients and AdamW state (float32, sharded)": "learner.num_ranks",
            "gathered compute-dtype weights (root unit + one layer)": "model.dtype",
            "activations of one micro-batch": "learner.max_tokens_per_micro_batch (or learner.gradient_checkpointing)",
            "logits chunk (2 x chunk x V x 4 B)": "learner.logits_chunk_tokens",
            "output head's float32 gradient": "learner.num_ranks",
        }[largest]
        problems.append(
            f"learner: {learner_total / GB:.1f} GB per GPU > {gpu_bytes / GB:.1f} GB; the largest term is "
            f"{largest} ({plan.learner[largest] / GB:.1f} GB): lower it with {fix}"
        )
    kv_bytes = plan.kv_cache_bytes(gpu_bytes, gpu_memory_utilization)
    if kv_bytes < max_sequence * plan.rollout["kv cache bytes per token"]:
        problems.append(
            f"rollout: {gpu_memory_utilization:.2f} x {gpu_bytes / GB:.1f} GB leaves {kv_bytes / GB:.1f} GB "
            f"for the KV cache, less than one sequence of {max_sequence} tokens needs: raise "
            "rollout.gpu_memory_utilization or lower rollout.max_new_tokens"
        )
    return problems


def plan_table(plan: MemoryPlan, gpu_bytes: float, gpu_memory_utilization: float, colocated: bool = False) -> str:
    """The plan as a Markdown table for `mode=plan` (with `colocated`, the GPU's two phases too)."""
    lines = ["| per GPU | GB |", "|---|---:|"]
    lines += [f"| learner: {name} | {value / GB:.2f} |" for name, value in plan.learner.items()]
    lines.append(f"| **learner total** (micro-batch of {plan.tokens_per_micro_batch:,} tokens) | "
                 f"**{plan.learner_total / GB:.2f}** |")  # fmt: skip
    kv = plan.kv_cache_bytes(gpu_bytes, gpu_memory_utilization)
    capacity = kv / plan.rollout["kv cache bytes per token"]
    lines.append(f"| rollout: weights | {plan.rollout['weights'] / GB:.2f} |")
    lines.append(f"| rollout: KV cache ({capacity:,.0f} tokens at {gpu_memory_utilization:.2f} utilisation) | "
                 f"{kv / GB:.2f} |")  # fmt: skip
    lines.append(f"| bytes moved per weight sync, per rollout worker | {plan.sync_bytes / GB:.2f} |")
    lines.append(f"| GPU memory assumed (`learner.gpu_memory_gb`) | {gpu_bytes / GB:.1f} |")
    if colocated:
        for phase, terms in colocated_phases(plan, gpu_bytes, gpu_memory_utilization).items():
            lines.append(f"| **colocated, {phase}: total** | **{sum(terms.values()) / GB:.2f}** |")
            lines += [
                f"| &nbsp; {name} | {value / GB:.2f} |" for name, value in terms.items() if name not in plan.learner
            ]
        freed = gpu_memory_utilization * gpu_bytes - SLEEPING_ENGINE_BYTES
        lines.append(f"| colocated: what the engine's sleep frees for training | {freed / GB:.2f} |")
    return "\n".join(lines) + "\n"


def memory_plan(cfg: RunConfig, model_path: Path) -> tuple[MemoryPlan, list[str]]:
    """The run's memory per GPU from the model's `config.json` (no weights loaded), and what does not fit."""
    try:
        shape = ModelShape.from_config(json.loads((model_path / "config.json").read_text(encoding="utf-8")))
    except KeyError as err:
        raise ConfigError(
            f"{model_path / 'config.json'} lacks {err} (the memory plan reads Qwen2/Llama fields)"
        ) from err
    longest = cfg.data.max_prompt_tokens + cfg.rollout.max_new_tokens
    plan = plan_memory(shape, cfg.learner, cfg.model.dtype, longest)
    gpu_bytes = cfg.learner.gpu_memory_gb * GB
    colocated = cfg.rollout.placement == "colocated"
    return plan, fit_problems(plan, gpu_bytes, cfg.rollout.gpu_memory_utilization, longest, colocated)


def print_plan(cfg: RunConfig) -> list[str]:
    """`mode=plan`: print the memory of each GPU and whether it fits; return the problems (empty: it fits)."""
    from tasks.registry import prepare_task

    files = prepare_task(cfg)
    plan, problems = memory_plan(cfg, files.model)
    print(f"# Memory plan for {files.model}\n")
    colocated = cfg.rollout.placement == "colocated"
    print(plan_table(plan, cfg.learner.gpu_memory_gb * GB, cfg.rollout.gpu_memory_utilization, colocated))
    print("\n".join(f"does not fit: {p}" for p in problems) if problems else "fits.")
    return problems
