"""Per-level accuracy of a policy on an arithmetic split, greedy and sampled at temperature 1.

CLI: ``python -m tasks.arithmetic.eval_base [--model DIR] [--data DIR] [--split test] [--samples N]``.
Without ``--model`` it evaluates (building it first if needed) the default base policy. It prints one line per
level and, as its last line, one JSON object::

    {"per_level": {"<level>": {"greedy": x, "sampled": y}, ...}, "overall_greedy": g, "overall_sampled": z}
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from tasks.arithmetic.build_base import (
    DEFAULT_DATA_DIR,
    DEFAULT_MODEL_DIR,
    BasePolicyConfig,
    ensure_base_policy,
    ensure_datasets,
)
from tasks.arithmetic.policy_eval import accuracy_by_level


def evaluate(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, rows: list[dict], samples: int) -> dict:
    """Accuracy per level, greedy and sampled at T=1 with ``samples`` per question, of ``rows`` (dataset rows
    in the RLVR schema), plus overall accuracies: the result object the CLI prints."""
    questions = [row["prompt"][-1]["content"] for row in rows]
    truths = [row["reward_model"]["ground_truth"] for row in rows]
    levels = [row["extra_info"]["level"] for row in rows]
    greedy = accuracy_by_level(model, tokenizer, questions, truths, levels, 1, None)
    sampled = accuracy_by_level(model, tokenizer, questions, truths, levels, samples, 1.0)
    counts = Counter(levels)
    return {
        "per_level": {str(level): {"greedy": greedy[level], "sampled": sampled[level]} for level in greedy},
        "overall_greedy": sum(greedy[level] * counts[level] for level in greedy) / len(rows),
        "overall_sampled": sum(sampled[level] * counts[level] for level in sampled) / len(rows),
    }


def main(argv: list[str] | None = None) -> None:
    """CLI: see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help=f"model directory (default: build {DEFAULT_MODEL_DIR})")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA_DIR, help="dataset directory")
    parser.add_argument("--split", default="test", choices=["train", "valid", "test"])
    parser.add_argument("--samples", type=int, default=4, help="samples per question at T=1")
    parser.add_argument("--limit", type=int, help="evaluate only the first N questions")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    config = BasePolicyConfig()
    model_dir = args.model if args.model is not None else ensure_base_policy(DEFAULT_MODEL_DIR, config)
    split_path = ensure_datasets(args.data, config.data)[args.split]
    rows = pq.read_table(split_path).to_pylist()[: args.limit]
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    torch.manual_seed(args.seed)
    start = time.perf_counter()
    result = evaluate(model, tokenizer, rows, args.samples)
    seconds = time.perf_counter() - start
    print(f"{len(rows)} questions of {split_path}, {args.samples} samples each at T=1, {seconds:.1f} s")
    for level, acc in result["per_level"].items():
        print(f"level {level}: greedy {acc['greedy']:.3f}  sampled(T=1) {acc['sampled']:.3f}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
