"""Build the countdown task's base policy offline: tokenizer, small Qwen2, supervised warm-start.

Built as the arithmetic task's base policy is (:mod:`tasks.arithmetic.build_base`: the same local byte-level BPE
tokenizer, Qwen2 architecture, warm-start loop and build cache). The warm-start responses are search traces
(:mod:`tasks.countdown.search`: random attempts, each checked against the target, until one reaches it), up to
``solutions_per_puzzle`` distinct ones a puzzle, so the policy finds answers by sampling and finds different ones;
``response_format="worked"`` shows one solution's steps instead (the policy that gave: pass@1 0.07 on the easiest
level, below a random expression's 0.13). The warm-start never sees a puzzle of the dataset's splits. It stops at
the first probe (one sample at T=1 per fresh puzzle) whose easiest-level accuracy reaches ``stop_accuracy``, or
after ``sft_steps``: short of mastery, with the harder levels rarely solved: the edge of competence RL needs.

CLI: ``python -m tasks.countdown.build_base --out DIR [--data-out DIR]``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import GenerationConfig, PreTrainedTokenizerBase, Qwen2ForCausalLM

from tasks.arithmetic import cache, sft, tokenizer
from tasks.arithmetic.build_base import deterministic_torch, model_config
from tasks.arithmetic.cache import BUILD_REPORT_FILE
from tasks.countdown import expression, generate, policy_eval, problems, reward, search, solver
from tasks.countdown.generate import CountdownDataConfig, ensure_datasets
from tasks.countdown.problems import Puzzle, worked_solution

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DATA_DIR = REPO_ROOT / ".cache" / "countdown" / "data"
"""Where the countdown task keeps its dataset splits (gitignored)."""
RESPONSE_FORMATS = ("search", "worked")
"""The warm-start response formats (:attr:`BasePolicyConfig.response_format`)."""
DEFAULT_MODEL_DIR = REPO_ROOT / ".cache" / "countdown" / "base-policy"
"""Where the countdown task keeps its base policy (gitignored)."""


@dataclass(frozen=True)
class BasePolicyConfig:
    """Everything that decides the countdown base policy's weights; its hash keys the cache."""

    seed: int = 0
    """Seed of the warm-start data, the weight init and the batch order."""
    data: CountdownDataConfig = field(default_factory=CountdownDataConfig)
    """The task's dataset; its splits are kept out of the warm-start data."""
    vocab_size: int = 320
    """Most BPE tokens: 3 special tokens + 256 bytes + merges."""
    hidden_size: int = 128
    """Model width."""
    intermediate_size: int = 512
    """MLP width."""
    num_layers: int = 4
    """Decoder layers."""
    num_heads: int = 4
    """Attention heads (head size 32: vLLM's CPU backend needs >= 32)."""
    num_kv_heads: int = 2
    """Key/value heads (grouped-query attention)."""
    max_position_embeddings: int = 256
    """Longest sequence (prompt + response) the model handles."""
    sft_pool_per_level: int = 1000
    """Distinct warm-start puzzles drawn per level (fewer where a level has fewer left)."""
    response_format: str = "search"
    """What a warm-start response shows: ``search`` (attempts checked against the target until one reaches it,
    :mod:`tasks.countdown.search`) or ``worked`` (one solution's steps, :func:`problems.worked_solution`)."""
    max_steps: int = 10
    """``search``: most steps in a response (five attempts on three numbers, three on four, and at least one attempt;
    then it answers with its last attempt). The build refuses responses longer than ``policy_eval.MAX_NEW_TOKENS``,
    which the probe and ``eval_base`` would cut off."""
    solutions_per_puzzle: int = 4
    """Responses per warm-start puzzle: distinct search traces, or distinct integer-step worked solutions."""
    sft_level_weights: tuple[float, ...] = (2.0, 1.0, 1.0, 1.0, 1.0, 1.0)
    """Relative share of each of ``data.levels`` in warm-start batches, in that order; empty: equal shares."""
    sft_steps: int = 1600
    """Most warm-start optimizer steps (the learning-rate schedule spans them; a probe may stop sooner). 1600 took
    638 s of warm-start (676 s in all) on 2 quiet cores with ``num_threads=2``, on a machine 25% slower than one that
    took 586 s for the traces before they copied the target; they gave pass@1 0.56 on the easiest level."""
    stop_accuracy: float = 0.7
    """The warm-start stops at the first probe whose accuracy on the easiest level reaches this."""
    probe_every: int = 100
    """Warm-start steps between probes."""
    probe_per_level: int = 48
    """Probe puzzles per level: fresh puzzles outside the dataset splits and the warm-start pool."""
    batch_size: int = 32
    """Warm-start examples per step (levels mixed in every batch)."""
    lr: float = 4e-3
    """Peak AdamW learning rate (linear warm-up, cosine decay to a tenth)."""
    warmup_steps: int = 30
    """Learning-rate warm-up steps."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    num_threads: int = 2
    """torch CPU threads while building (fixed: results are reproducible for a given thread count): 0.37 s a step on
    2 quiet cores, where one thread beside another busy process took 0.6 s."""

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
        if self.response_format not in RESPONSE_FORMATS:
            raise ValueError(
                f"BasePolicyConfig.response_format must be one of {RESPONSE_FORMATS}, got {self.response_format!r}"
            )
        counts = ("sft_steps", "batch_size", "num_threads", "sft_pool_per_level", "num_layers", "solutions_per_puzzle")
        counts += ("max_steps", "probe_every", "probe_per_level", "hidden_size", "num_heads", "num_kv_heads")
        for name in counts:
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
    modules = [
        expression,
        solver,
        reward,
        problems,
        search,
        generate,
        tokenizer,
        sft,
        policy_eval,
        sys.modules[__name__],
    ]
    key = cache.config_key(config, modules)
    return cache.ensure_built(Path(out_dir), key, lambda tmp: build_base_policy(tmp, config), asdict(config))


def warm_start_puzzles(config: BasePolicyConfig) -> tuple[dict[int, list[Puzzle]], list[Puzzle]]:
    """Distinct warm-start puzzles per level and the probe puzzles, none of them in the dataset's splits and no
    probe puzzle in the warm-start pool. A level short of puzzles gives up pool puzzles first."""
    held_out = generate.held_out_questions(config.data)
    pools, probe_set = {}, []
    for level in config.data.levels:
        stream = problems.unique_puzzles(level, f"sft/{config.seed}", exclude=held_out)
        drawn = list(itertools.islice(stream, config.probe_per_level + config.sft_pool_per_level))
        if len(drawn) <= config.probe_per_level:
            raise ValueError(f"level {level} has only {len(drawn)} puzzles outside the dataset splits")
        probe_set += drawn[: config.probe_per_level]
        pools[level] = drawn[config.probe_per_level :]
    return pools, probe_set


def training_responses(puzzle: Puzzle, config: BasePolicyConfig) -> list[str]:
    """The warm-start responses of ``puzzle``: up to ``config.solutions_per_puzzle`` distinct search traces
    (seeded by the config's seed and the question) or worked solutions of distinct solutions."""
    limit = config.solutions_per_puzzle
    if config.response_format == "worked":
        return [worked_solution(tree) for tree in puzzle.integer_solutions()[:limit]]
    rng = random.Random(f"trace/{config.seed}/{puzzle.question}")
    traces = [search.search_trace(puzzle.numbers, puzzle.target, rng, config.max_steps) for _ in range(limit)]
    return list(dict.fromkeys(traces))


def chat_text(question: str, response: str) -> str:
    """A full chat transcript, as the tokenizer sees it (for tokenizer training)."""
    start, end = tokenizer.IM_START, tokenizer.IM_END
    return f"{start}user\n{question}{end}\n{start}assistant\n{response}{end}\n"


def sft_example(hf_tokenizer: PreTrainedTokenizerBase, question: str, response: str) -> sft.SftExample:
    """The warm-start example of one (question, response): the chat prompt, then the response and eos."""
    response_ids = hf_tokenizer(response, add_special_tokens=False)["input_ids"]
    return sft.SftExample(tuple(sft.prompt_ids(hf_tokenizer, question)), (*response_ids, hf_tokenizer.eos_token_id))


def probe(
    model: Qwen2ForCausalLM, hf_tokenizer: PreTrainedTokenizerBase, probe_set: list[Puzzle], seed: int
) -> dict[str, float]:
    """Accuracy of one sample at T=1 per probe puzzle, per level (``"L<level>"``) and ``"overall"``; seeded with
    ``seed``, leaving the global torch random state as it was."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        scored = policy_eval.sample_and_score(
            model,
            hf_tokenizer,
            [p.question for p in probe_set],
            [p.ground_truth for p in probe_set],
            [p.level for p in probe_set],
            samples=1,
            temperature=1.0,
        )
    by_level = policy_eval.accuracy_by_level(scored)
    overall = sum(sum(p.correct) for p in scored) / len(scored)
    return {**{f"L{level}": round(acc, 4) for level, acc in by_level.items()}, "overall": round(overall, 4)}


def build_base_policy(out_dir: Path, config: BasePolicyConfig) -> dict[str, Any]:
    """Build the base policy into ``out_dir`` (uncached) and return the build report (also saved there)."""
    start = time.perf_counter()
    with deterministic_torch(config.seed, config.num_threads) as generator:
        pools, probe_set = warm_start_puzzles(config)
        responses = {
            level: [(p.question, r) for p in pool for r in training_responses(p, config)]
            for level, pool in pools.items()
        }
        data_seconds = time.perf_counter() - start
        corpus = [chat_text(q, r) for pairs in responses.values() for q, r in pairs]
        trained = tokenizer.train_tokenizer(corpus, config.vocab_size)
        hf_tokenizer = tokenizer.save_tokenizer(trained, out_dir, config.max_position_embeddings)
        model = Qwen2ForCausalLM(model_config(config, len(hf_tokenizer), hf_tokenizer))
        examples = {level: [sft_example(hf_tokenizer, q, r) for q, r in pairs] for level, pairs in responses.items()}
        longest = max(len(e.response_ids) for pairs in examples.values() for e in pairs)
        if longest > policy_eval.MAX_NEW_TOKENS:
            raise ValueError(
                f"a warm-start response takes {longest} tokens, more than the {policy_eval.MAX_NEW_TOKENS} the "
                f"policy samples (policy_eval.MAX_NEW_TOKENS): lower BasePolicyConfig.max_steps"
            )
        schedule = sft.SftSchedule(
            steps=config.sft_steps,
            batch_size=config.batch_size,
            lr=config.lr,
            warmup_steps=config.warmup_steps,
            weight_decay=config.weight_decay,
            level_weights=dict(zip(config.data.levels, config.level_weights(), strict=True)),
        )
        easiest = f"L{min(config.data.levels)}"
        probes: list[dict[str, float]] = []

        def stop(step: int) -> bool:
            probes.append({"step": step, **probe(model, hf_tokenizer, probe_set, seed=config.seed + step)})
            print(f"probe at step {step}: {probes[-1]}", flush=True)
            return probes[-1][easiest] >= config.stop_accuracy

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
        "sft_examples": {f"L{level}": len(pairs) for level, pairs in examples.items()},
        "longest_response_tokens": longest,
        "data_seconds": round(data_seconds, 2),
        "sft_seconds": round(sft_seconds, 2),
        "build_seconds": round(time.perf_counter() - start, 2),
        "sft_steps_run": len(losses),
        "final_loss": sum(losses[-20:]) / len(losses[-20:]),
        "probes": probes,
    }
    (Path(out_dir) / BUILD_REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
    return report


def main(argv: list[str] | None = None) -> None:
    """CLI: build (or reuse) the default countdown base policy in ``--out`` and, with ``--data-out``, the
    datasets."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_MODEL_DIR, help="model directory")
    parser.add_argument("--data-out", type=Path, help="also write the dataset splits here")
    parser.add_argument("--seed", type=int, default=BasePolicyConfig.seed)
    parser.add_argument("--sft-steps", type=int, default=BasePolicyConfig.sft_steps)
    parser.add_argument("--threads", type=int, default=BasePolicyConfig.num_threads, help="torch threads")
    args = parser.parse_args(argv)
    config = BasePolicyConfig(seed=args.seed, sft_steps=args.sft_steps, num_threads=args.threads)
    if args.data_out is not None:
        for name, path in ensure_datasets(args.data_out, config.data).items():
            print(f"{name}: {path}")
    out = ensure_base_policy(args.out, config)
    print(f"base policy: {out}")
    print((out / BUILD_REPORT_FILE).read_text().strip())


if __name__ == "__main__":
    main()
