"""Build the arithmetic task's base policy offline: tokenizer, small Qwen2, supervised warm-start.

The result is a standard Hugging Face checkpoint directory (``config.json``, ``generation_config.json`` with
eos ``<|im_end|>``, ``model.safetensors``, tokenizer files and chat template) that transformers and vLLM
load. It is cached: :func:`ensure_base_policy` rebuilds only when the config or the building code changed,
and writes to a temp directory renamed into place, so a killed build never leaves a half model.

The warm-start never sees a question of the dataset's train / valid / test splits. It stops early, at the
first probe (sampling at T=1 on fresh problems) that solves ``stop_accuracy`` of them, so the policy starts
with mixed ability: easy levels mostly solved, the hardest rarely: the spread that makes RL worth running.

CLI: ``python -m tasks.arithmetic.build_base --out DIR [--data-out DIR]``.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import itertools
import json
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import GenerationConfig, PreTrainedTokenizerBase, Qwen2Config, Qwen2ForCausalLM

from tasks.arithmetic import cache, generate, policy_eval, problems, reward, sft, tokenizer
from tasks.arithmetic.cache import BUILD_REPORT_FILE
from tasks.arithmetic.generate import ArithmeticDataConfig, ensure_datasets

__all__ = [
    "DEFAULT_DATA_DIR",
    "DEFAULT_MODEL_DIR",
    "BasePolicyConfig",
    "build_base_policy",
    "ensure_base_policy",
    "ensure_datasets",
]

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DATA_DIR = REPO_ROOT / ".cache" / "arithmetic" / "data"
"""Where the demo keeps the dataset splits (gitignored); callers pass directories explicitly."""
DEFAULT_MODEL_DIR = REPO_ROOT / ".cache" / "arithmetic" / "base-policy"
"""Where the demo keeps the base policy (gitignored)."""


@dataclass(frozen=True)
class BasePolicyConfig:
    """Everything that decides the base policy's weights; its hash keys the cache."""

    seed: int = 0
    """Seed of the warm-start data, the weight init and the batch order."""
    data: ArithmeticDataConfig = field(default_factory=ArithmeticDataConfig)
    """The task's dataset; its splits are kept out of the warm-start data."""
    vocab_size: int = 384
    """Most BPE tokens: 3 special tokens + 256 bytes + merges (training may stop earlier)."""
    hidden_size: int = 128
    """Model width."""
    intermediate_size: int = 512
    """MLP width."""
    num_layers: int = 4
    """Decoder layers."""
    num_heads: int = 4
    """Attention heads (head size = hidden_size / num_heads; vLLM's CPU backend needs >= 32). Four heads of 32
    learn to fetch digits much faster than two of 64."""
    num_kv_heads: int = 2
    """Key/value heads (grouped-query attention)."""
    max_position_embeddings: int = 256
    """Longest sequence (prompt + response) the model handles."""
    sft_pool_per_level: int = 3000
    """Distinct warm-start problems drawn per level (fewer where a level has fewer left)."""
    sft_level_weights: tuple[float, ...] = (2.0, 1.0, 1.0, 1.0, 1.0, 1.0)
    """Relative share of each of ``data.levels`` in warm-start batches, in that order; empty: equal shares.
    The easiest level gets double, else sampling at T=1 solves it less often than the next one."""
    sft_steps: int = 1200
    """Most warm-start optimizer steps (the learning-rate schedule spans them; a probe often stops sooner)."""
    stop_accuracy: float = 0.5
    """The warm-start stops at the first probe whose accuracy (one sample at T=1 per probe question, levels
    pooled) reaches this, leaving the mixed ability RL needs. When the policy gets the knack of fetching
    digits varies a lot with the seed, so a fixed step count gives anything from 20% to 70%."""
    probe_every: int = 50
    """Warm-start steps between probes."""
    probe_per_level: int = 32
    """Probe questions per level: fresh problems outside the dataset splits and the warm-start pool."""
    batch_size: int = 32
    """Warm-start examples per step (levels mixed in every batch; single-level batches learned far slower)."""
    lr: float = 4e-3
    """Peak AdamW learning rate (linear warm-up, cosine decay to a tenth)."""
    warmup_steps: int = 30
    """Learning-rate warm-up steps."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    num_threads: int = 2
    """torch CPU threads while building (fixed: results are reproducible for a given thread count). On cores
    shared with other busy processes, 1 is much faster than 2."""

    def __post_init__(self) -> None:
        if self.sft_level_weights and len(self.sft_level_weights) != len(self.data.levels):
            raise ValueError(
                f"BasePolicyConfig.sft_level_weights {self.sft_level_weights} needs one weight per level "
                f"of data.levels {self.data.levels}"
            )
        weights = self.level_weights()
        if any(w < 0 for w in weights) or sum(weights) <= 0:
            raise ValueError(f"BasePolicyConfig.sft_level_weights must be >= 0, not all 0: {self.sft_level_weights}")
        if not 0.0 <= self.stop_accuracy <= 1.0:
            raise ValueError(f"BasePolicyConfig.stop_accuracy must be in [0, 1], got {self.stop_accuracy}")
        counts = ("sft_steps", "batch_size", "num_threads", "sft_pool_per_level", "num_layers")
        for name in counts + ("probe_every", "probe_per_level", "hidden_size", "num_heads", "num_kv_heads"):
            if getattr(self, name) < 1:
                raise ValueError(f"BasePolicyConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.hidden_size % self.num_heads or self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"BasePolicyConfig: hidden_size {self.hidden_size} must be a multiple of num_heads "
                f"{self.num_heads}, and num_heads of num_kv_heads {self.num_kv_heads}"
            )

    def level_weights(self) -> tuple[float, ...]:
        """The warm-start share of each of ``data.levels`` (equal when ``sft_level_weights`` is empty)."""
        return self.sft_level_weights or tuple(1.0 for _ in self.data.levels)


def ensure_base_policy(out_dir: Path, config: BasePolicyConfig) -> Path:
    """The base policy for ``config`` in ``out_dir``, built only when the config or the code changed."""
    modules = [problems, reward, generate, tokenizer, sft, policy_eval, sys.modules[__name__]]
    key = cache.config_key(config, modules)
    return cache.ensure_built(Path(out_dir), key, lambda tmp: build_base_policy(tmp, config), asdict(config))


def build_base_policy(out_dir: Path, config: BasePolicyConfig) -> dict[str, Any]:
    """Build the base policy into ``out_dir`` (uncached) and return the build report (also saved there)."""
    start = time.perf_counter()
    with deterministic_torch(config.seed, config.num_threads) as generator:
        pools, probe_set = warm_start_problems(config)
        corpus = [chat_text(p) for pool in pools.values() for p in pool]
        trained = tokenizer.train_tokenizer(corpus, config.vocab_size)
        hf_tokenizer = tokenizer.save_tokenizer(trained, out_dir, config.max_position_embeddings)
        model = Qwen2ForCausalLM(model_config(config, len(hf_tokenizer), hf_tokenizer))
        examples = {level: [sft.tokenize_problem(hf_tokenizer, p) for p in pool] for level, pool in pools.items()}
        schedule = sft.SftSchedule(
            steps=config.sft_steps,
            batch_size=config.batch_size,
            lr=config.lr,
            warmup_steps=config.warmup_steps,
            weight_decay=config.weight_decay,
            level_weights=dict(zip(config.data.levels, config.level_weights(), strict=True)),
        )
        probes: list[dict[str, float]] = []

        def stop(step: int) -> bool:
            probes.append({"step": step, **probe(model, hf_tokenizer, probe_set, seed=config.seed + step)})
            print(f"probe at step {step}: {probes[-1]}", flush=True)
            return probes[-1]["overall"] >= config.stop_accuracy

        sft_start = time.perf_counter()
        losses = sft.train(model, examples, schedule, hf_tokenizer.pad_token_id, generator, stop, config.probe_every)
        sft_seconds = time.perf_counter() - sft_start
    model.generation_config = GenerationConfig(
        eos_token_id=hf_tokenizer.eos_token_id, pad_token_id=hf_tokenizer.pad_token_id
    )
    model.save_pretrained(out_dir)
    report = {
        "parameters": sum(p.numel() for p in model.parameters()),
        "vocab_size": len(hf_tokenizer),
        "sft_seconds": round(sft_seconds, 2),
        "build_seconds": round(time.perf_counter() - start, 2),
        "sft_steps_run": len(losses),
        "final_loss": sum(losses[-20:]) / len(losses[-20:]),
        "probes": probes,
    }
    (Path(out_dir) / BUILD_REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
    return report


def warm_start_problems(
    config: BasePolicyConfig,
) -> tuple[dict[int, list[problems.Problem]], list[problems.Problem]]:
    """Distinct warm-start problems per level and the probe problems, none of them in the dataset's splits
    and no probe problem in the warm-start pool. A level short of problems gives up pool problems first."""
    held_out = generate.held_out_questions(config.data)
    pools, probe_set = {}, []
    for level in config.data.levels:
        stream = problems.unique_problems(level, f"sft/{config.seed}", exclude=held_out)
        drawn = list(itertools.islice(stream, config.probe_per_level + config.sft_pool_per_level))
        if len(drawn) <= config.probe_per_level:
            raise ValueError(f"level {level} has only {len(drawn)} problems outside the dataset splits")
        probe_set += drawn[: config.probe_per_level]
        pools[level] = drawn[config.probe_per_level :]
    return pools, probe_set


def probe(
    model: Qwen2ForCausalLM,
    hf_tokenizer: PreTrainedTokenizerBase,
    probe_set: list[problems.Problem],
    seed: int,
) -> dict[str, float]:
    """Accuracy of one sample at T=1 per probe problem, per level (``"L<level>"``) and ``"overall"``; the
    sampling is seeded with ``seed`` and leaves the global torch random state as it was."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        by_level = policy_eval.accuracy_by_level(
            model,
            hf_tokenizer,
            [p.question for p in probe_set],
            [str(p.answer) for p in probe_set],
            [p.level for p in probe_set],
            samples=1,
            temperature=1.0,
        )
    counts = collections.Counter(p.level for p in probe_set)
    overall = sum(by_level[level] * counts[level] for level in by_level) / len(probe_set)
    return {**{f"L{level}": round(acc, 4) for level, acc in by_level.items()}, "overall": round(overall, 4)}


def chat_text(problem: problems.Problem) -> str:
    """The full chat transcript of a solved problem, as the tokenizer sees it (for tokenizer training)."""
    start, end = tokenizer.IM_START, tokenizer.IM_END
    return f"{start}user\n{problem.question}{end}\n{start}assistant\n{problem.worked_solution()}{end}\n"


def model_config(config: BasePolicyConfig, vocab_size: int, hf_tokenizer: PreTrainedTokenizerBase) -> Qwen2Config:
    """The Qwen2 architecture of the base policy."""
    return Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_kv_heads,
        head_dim=config.hidden_size // config.num_heads,
        max_position_embeddings=config.max_position_embeddings,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=hf_tokenizer.eos_token_id,
        pad_token_id=hf_tokenizer.pad_token_id,
        dtype="float32",
    )


@contextlib.contextmanager
def deterministic_torch(seed: int, num_threads: int) -> Iterator[torch.Generator]:
    """Seed torch, fix its thread count and turn on deterministic algorithms for the block; restores the
    previous thread count and determinism setting after. Yields a generator seeded with ``seed``."""
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(num_threads)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(seed)
    try:
        yield torch.Generator().manual_seed(seed)
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)


def main(argv: list[str] | None = None) -> None:
    """CLI: build (or reuse) the default base policy in ``--out`` and, with ``--data-out``, the datasets."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_MODEL_DIR, help="model directory")
    parser.add_argument("--data-out", type=Path, help="also write the dataset splits here")
    parser.add_argument("--seed", type=int, default=BasePolicyConfig.seed)
    parser.add_argument("--sft-steps", type=int, default=BasePolicyConfig.sft_steps)
    parser.add_argument(
        "--threads",
        type=int,
        default=BasePolicyConfig.num_threads,
        help="torch threads (changes the weights)",
    )
    args = parser.parse_args(argv)
    config = BasePolicyConfig(seed=args.seed, sft_steps=args.sft_steps, num_threads=args.threads)
    if args.data_out is not None:
        for name, path in ensure_datasets(args.data_out, config.data).items():
            print(f"{name}: {path}")
    out = ensure_base_policy(args.out, config)
    report_path = out / BUILD_REPORT_FILE
    print(f"base policy: {out}")
    print(report_path.read_text().strip())


if __name__ == "__main__":
    main()
