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
from collections import defaultdict
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
from tasks.arithmetic.reward import is_correct


def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    questions: list[str],
    samples: int,
    temperature: float | None,
    max_new_tokens: int = 64,
    batch_size: int = 256,
) -> list[list[str]]:
    """``samples`` completions per question (greedy when ``temperature`` is None, else pure sampling at that
    temperature: no top-k or top-p), decoded without special tokens; batched with left padding."""
    tokenizer.padding_side = "left"
    prompts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": q}], add_generation_prompt=True, tokenize=False
        )
        for q in questions
    ]
    sampling = (
        {"do_sample": False} if temperature is None else {"do_sample": True, "temperature": temperature}
    )
    per_batch = max(1, batch_size // samples)
    completions: list[list[str]] = []
    for start in range(0, len(prompts), per_batch):
        batch = tokenizer(prompts[start : start + per_batch], return_tensors="pt", padding=True)
        with torch.inference_mode():
            output = model.generate(
                **batch,
                max_new_tokens=max_new_tokens,
                num_return_sequences=samples,
                top_k=0,
                top_p=1.0,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
                **sampling,
            )
        texts = tokenizer.batch_decode(output[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
        completions.extend(texts[i : i + samples] for i in range(0, len(texts), samples))
    return completions


def evaluate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    rows: list[dict],
    samples: int,
    seed: int = 0,
) -> dict:
    """Accuracy per level (greedy, and sampled at T=1 with ``samples`` per question) of ``rows`` (dataset
    rows in the RLVR schema), plus overall accuracies: the result object the CLI prints."""
    torch.manual_seed(seed)
    questions = [row["prompt"][-1]["content"] for row in rows]
    greedy = generate(model, tokenizer, questions, 1, None)
    sampled = generate(model, tokenizer, questions, samples, 1.0)
    scores: dict[int, dict[str, list[float]]] = defaultdict(lambda: {"greedy": [], "sampled": []})
    for row, greedy_out, sampled_out in zip(rows, greedy, sampled, strict=True):
        truth = row["reward_model"]["ground_truth"]
        level = scores[row["extra_info"]["level"]]
        level["greedy"].append(float(is_correct(greedy_out[0], truth)))
        level["sampled"].extend(float(is_correct(text, truth)) for text in sampled_out)
    per_level = {
        str(level): {kind: sum(values) / len(values) for kind, values in scores[level].items()}
        for level in sorted(scores)
    }
    all_greedy = [v for level in scores.values() for v in level["greedy"]]
    all_sampled = [v for level in scores.values() for v in level["sampled"]]
    return {
        "per_level": per_level,
        "overall_greedy": sum(all_greedy) / len(all_greedy),
        "overall_sampled": sum(all_sampled) / len(all_sampled),
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
    start = time.perf_counter()
    result = evaluate(model, tokenizer, rows, args.samples, args.seed)
    seconds = time.perf_counter() - start
    print(f"{len(rows)} questions of {split_path}, {args.samples} samples each at T=1, {seconds:.1f} s")
    for level, acc in result["per_level"].items():
        print(f"level {level}: greedy {acc['greedy']:.3f}  sampled(T=1) {acc['sampled']:.3f}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
