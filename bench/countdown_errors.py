"""Where a countdown policy's search traces go wrong: each sampled response replayed step by step.

    python -m bench.countdown_errors                              # the default base policy, levels 1 2 4 6
    python -m bench.countdown_errors --model DIR --per-level 32 --samples 8 --levels 1 6

A response is a list of attempt lines (``8-3=5,5*5=25 vs 25``, ``... vs 25 no`` on a miss) and an answer line
(:mod:`tasks.countdown.search`). Per level it counts, over the first ``--per-level`` test puzzles x ``--samples``
answers at T = 1: steps that compute wrong (``wrong_arith``), that use a number not left (``not_left``) or do not
parse (``malformed_step``); attempts whose every step is right (``clean_attempts``), of those the ones that reach the
target (``clean_hits``), say ``no`` after reaching it (``hit_said_no``) or claim a hit after missing
(``miss_claimed_hit``), whose last step is not the one nearest the target (``last_not_nearest``) and whose copied
target is wrong (``target_copied_wrong``); responses whose last attempt is a clean hit that says so
(``last_attempt_clean_hit``) and of those the ones whose answer line is wrong (``render_wrong``). It prints one JSON
line per level. The counts say which local skill the warm-start should teach next (bench/results/countdown_base.md).
"""

from __future__ import annotations

import argparse
import json
import re
from collections import Counter
from pathlib import Path

from tasks.countdown.reward import ANSWER_PREFIX, format_ground_truth, is_correct
from tasks.countdown.search import CHECK, MISS, integer_steps

STEP = re.compile(r"(\d+)([-+*/])(\d+)=(\d+)")


def _computes(a: int, op: str, b: int) -> float | None:
    """The exact value of ``a op b`` (None for a division by zero)."""
    if op == "/":
        return a / b if b else None
    return {"+": a + b, "-": a - b, "*": a * b}[op]


def replay_attempt(numbers: tuple[int, ...], target: int, line: str, counts: Counter) -> bool:
    """Count one attempt line's errors into ``counts``; True when it is a clean hit that does not say ``no``."""
    counts["attempts"] += 1
    missed = line.endswith(f" {MISS}")
    body = line.removesuffix(f" {MISS}")
    if f" {CHECK} " in body:
        body, copied = body.rsplit(f" {CHECK} ", 1)
        counts["target_copied_wrong"] += copied.strip() != str(target)
    left, clean, value = list(numbers), True, None
    steps = body.split(",")
    for k, text in enumerate(steps):
        counts["steps"] += 1
        match = STEP.fullmatch(text.strip())
        if not match:
            counts["malformed_step"] += 1
            return False
        a, op, b, value = int(match[1]), match[2], int(match[3]), int(match[4])
        if _computes(a, op, b) != value:
            counts["wrong_arith"] += 1
            clean = False
        for used in (a, b):
            if used in left:
                left.remove(used)
            else:
                counts["not_left"] += 1
                clean = False
        left.append(value)
        if k == len(steps) - 1 and clean and len(left) == 1:
            nearest = min(abs(v - target) for _, (v, _tree) in integer_steps((a, a), (b, b)))
            counts["last_not_nearest"] += abs(value - target) > nearest
    if not clean or len(left) != 1:
        return False
    counts["clean_attempts"] += 1
    hit = value == target
    counts["clean_hits"] += hit
    counts["hit_said_no"] += hit and missed
    counts["miss_claimed_hit"] += not hit and not missed
    return hit and not missed


def replay_response(numbers: tuple[int, ...], target: int, text: str, counts: Counter) -> None:
    """Count one response's errors into ``counts`` (see the module docstring for the names)."""
    lines = [line for line in text.strip().split("\n") if line and not line.startswith(ANSWER_PREFIX)]
    counts["responses"] += 1
    correct = is_correct(text, format_ground_truth(numbers, target))
    counts["correct"] += correct
    last_clean_hit = False
    for line in lines:
        last_clean_hit = replay_attempt(numbers, target, line, counts)
    if last_clean_hit:
        counts["last_attempt_clean_hit"] += 1
        counts["render_wrong"] += not correct


def main(argv: list[str] | None = None) -> dict[int, dict[str, int]]:
    """Sample the policy on each level's first test puzzles, replay every response, print and return the counts."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tasks.arithmetic.policy_eval import generate
    from tasks.countdown.build_base import DEFAULT_MODEL_DIR, BasePolicyConfig, ensure_base_policy
    from tasks.countdown.generate import generate_splits
    from tasks.countdown.policy_eval import MAX_NEW_TOKENS

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="policy directory (default: the default base policy)")
    parser.add_argument("--per-level", type=int, default=32)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 2, 4, 6])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    config = BasePolicyConfig()
    model_dir = args.model or ensure_base_policy(DEFAULT_MODEL_DIR, config)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    test = generate_splits(config.data)["test"]
    results = {}
    for level in args.levels:
        puzzles = [p for p in test if p.level == level][: args.per_level]
        outputs = generate(
            model, tokenizer, [p.question for p in puzzles], args.samples, 1.0, max_new_tokens=MAX_NEW_TOKENS
        )
        counts: Counter = Counter()
        for puzzle, texts in zip(puzzles, outputs, strict=True):
            for text in texts:
                replay_response(puzzle.numbers, puzzle.target, text, counts)
        results[level] = dict(sorted(counts.items()))
        print(json.dumps({"level": level, **results[level]}), flush=True)
    return results


if __name__ == "__main__":
    main()
