"""Build the arithmetic task's base policy offline: tokenizer, small Qwen2, supervised warm-start.

The result is a standard Hugging Face checkpoint directory (``config.json``, ``generation_config.json`` with
eos ``<|im_end|>``, ``model.safetensors``, tokenizer files and chat template) that transformers and vLLM
load. It is cached: :func:`ensure_base_policy` rebuilds only when the config or the building code changed,
and writes to a temp directory renamed into place, so a killed build never leaves a half model.

The warm-start never sees a question of the dataset's train / valid / test splits, and sees hard levels less
often than easy ones, so the policy starts with mixed ability: the spread that makes RL worth running.

CLI: ``python -m tasks.arithmetic.build_base --out DIR [--data-out DIR]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

from tasks.arithmetic import cache, generate, problems, reward, sft, tokenizer
from tasks.arithmetic.generate import ArithmeticDataConfig, ensure_datasets

__all__ = [
    "DEFAULT_DATA_DIR",
    "DEFAULT_MODEL_DIR",
    "BasePolicyConfig",
    "build_base_policy",
    "ensure_base_policy",
    "ensure_datasets",
]

BUILD_REPORT_FILE = "build_report.json"
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
    hidden_size: int = 256
    """Model width."""
    intermediate_size: int = 512
    """MLP width."""
    num_layers: int = 4
    """Decoder layers."""
    num_heads: int = 4
    """Attention heads."""
    num_kv_heads: int = 2
    """Key/value heads (grouped-query attention)."""
    max_position_embeddings: int = 256
    """Longest sequence (prompt + response) the model handles."""
    sft_pool_per_level: int = 4000
    """Distinct warm-start problems drawn per level (fewer where a level has fewer left)."""
    sft_level_weights: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0, 1.0, 1.0)
    """Relative share of each of ``data.levels`` in warm-start batches, in the same order."""
    sft_steps: int = 600
    """Warm-start optimizer steps."""
    batch_size: int = 64
    """Warm-start examples per step."""
    lr: float = 2e-3
    """Peak AdamW learning rate (linear warm-up, cosine decay to a tenth)."""
    warmup_steps: int = 30
    """Learning-rate warm-up steps."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    num_threads: int = 2
    """torch CPU threads while building (fixed, for reproducible results)."""

    def __post_init__(self) -> None:
        if len(self.sft_level_weights) != len(self.data.levels):
            raise ValueError(
                f"BasePolicyConfig.sft_level_weights {self.sft_level_weights} needs one weight per level "
                f"of data.levels {self.data.levels}"
            )
        if any(w < 0 for w in self.sft_level_weights) or sum(self.sft_level_weights) <= 0:
            raise ValueError(
                f"BasePolicyConfig.sft_level_weights must be >= 0, not all 0: {self.sft_level_weights}"
            )
        for name in ("sft_steps", "batch_size", "num_threads", "sft_pool_per_level", "num_layers"):
            if getattr(self, name) < 1:
                raise ValueError(f"BasePolicyConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.hidden_size % self.num_heads or self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"BasePolicyConfig: hidden_size {self.hidden_size} must be a multiple of num_heads "
                f"{self.num_heads}, and num_heads of num_kv_heads {self.num_kv_heads}"
            )


def ensure_base_policy(out_dir: Path, config: BasePolicyConfig) -> Path:
    """The base policy for ``config`` in ``out_dir``, built only when the config or the code changed."""
    key = cache.config_key(config, [problems, reward, generate, tokenizer, sft, sys.modules[__name__]])
    return cache.ensure_built(Path(out_dir), key, lambda tmp: build_base_policy(tmp, config), asdict(config))


def build_base_policy(out_dir: Path, config: BasePolicyConfig) -> dict[str, float]:
    """Build the base policy into ``out_dir`` (uncached) and return the build report (also saved there)."""
    start = time.perf_counter()
    with deterministic_torch(config.seed, config.num_threads) as generator:
        pools = warm_start_problems(config)
        corpus = [chat_text(p) for pool in pools.values() for p in pool]
        trained = tokenizer.train_tokenizer(corpus, config.vocab_size)
        hf_tokenizer = tokenizer.save_tokenizer(trained, out_dir, config.max_position_embeddings)
        model = Qwen2ForCausalLM(model_config(config, len(hf_tokenizer), hf_tokenizer))
        examples = {
            level: [sft.tokenize_problem(hf_tokenizer, p) for p in pool] for level, pool in pools.items()
        }
        schedule = sft.SftSchedule(
            steps=config.sft_steps,
            batch_size=config.batch_size,
            lr=config.lr,
            warmup_steps=config.warmup_steps,
            weight_decay=config.weight_decay,
            level_weights=dict(zip(config.data.levels, config.sft_level_weights, strict=True)),
        )
        sft_start = time.perf_counter()
        losses = sft.train(model, examples, schedule, hf_tokenizer.pad_token_id, generator)
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
        "final_loss": sum(losses[-20:]) / len(losses[-20:]),
    }
    (Path(out_dir) / BUILD_REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
    return report


def warm_start_problems(config: BasePolicyConfig) -> dict[int, list[problems.Problem]]:
    """Distinct warm-start problems per level, none of them in the dataset's splits."""
    held_out = generate.held_out_questions(config.data)
    pools = {}
    for level in config.data.levels:
        stream = problems.unique_problems(level, f"sft/{config.seed}", exclude=held_out)
        pools[level] = [p for _, p in zip(range(config.sft_pool_per_level), stream, strict=False)]
    return pools


def chat_text(problem: problems.Problem) -> str:
    """The full chat transcript of a solved problem, as the tokenizer sees it (for tokenizer training)."""
    start, end = tokenizer.IM_START, tokenizer.IM_END
    return f"{start}user\n{problem.question}{end}\n{start}assistant\n{problem.worked_solution()}{end}\n"


def model_config(config: BasePolicyConfig, vocab_size: int, hf_tokenizer: object) -> Qwen2Config:
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
    args = parser.parse_args(argv)
    config = BasePolicyConfig(seed=args.seed, sft_steps=args.sft_steps)
    if args.data_out is not None:
        for name, path in ensure_datasets(args.data_out, config.data).items():
            print(f"{name}: {path}")
    out = ensure_base_policy(args.out, config)
    report_path = out / BUILD_REPORT_FILE
    print(f"base policy: {out}")
    print(report_path.read_text().strip())


if __name__ == "__main__":
    main()
