"""Measure a countdown policy against issue 25 §1's targets: pass@1 per level, pass@64 on the hardest level,
distinct valid expressions among 16 samples on solved puzzles; all from samples at T = 1.

Beside the distinct count it gives its reference at the policy's own accuracy (``if_uniform_over_solutions``): the
count expected if each solved puzzle's correct samples, as many as the policy drew, were spread uniformly at
random over that puzzle's distinct solutions (:func:`uniform_distinct_reference`). A puzzle with one solution has
one distinct answer however diverse the policy is, so the reference says how much of the target is reachable.

CLI: ``python -m tasks.countdown.eval_base [--model DIR] [--split S | --file F] [--per-level N | --first N]
[--samples 64] [--json-out FILE]``. Without ``--model`` it evaluates (building it first if needed) the default base
policy, on the first ``--per-level`` test puzzles of each level; ``--file`` takes another file's puzzles (with
``--first 120``, the held-out set of a run whose ``data.valid_path`` it is) and gives no verdict on the targets.
It prints one line per level, the verdict on each target and, as its last line, one JSON object (also written to
``--json-out``)::

    {"per_level": {"<level>": {"puzzles": n, "pass@1": x, "pass@8": y, "pass@64": z}, ...},
     "distinct_on_solved": {"mean": d, "puzzles": m, "first_samples": 16, "if_uniform_over_solutions": r},
     "targets": {...}, ...}
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tasks.countdown.build_base import DEFAULT_DATA_DIR, DEFAULT_MODEL_DIR, BasePolicyConfig, ensure_base_policy
from tasks.countdown.generate import ensure_datasets
from tasks.countdown.policy_eval import (
    ScoredPuzzle,
    mean_distinct_on_solved,
    pass_at_k_by_level,
    sample_and_score,
)
from tasks.countdown.reward import parse_ground_truth
from tasks.countdown.solver import solve

DISTINCT_SAMPLES = 16


def first_per_level(rows: list[dict], per_level: int) -> list[dict]:
    """The first ``per_level`` rows of each level, in file order (all of them when ``per_level`` is 0)."""
    taken: dict[int, int] = defaultdict(int)
    kept = []
    for row in rows:
        level = row["extra_info"]["level"]
        if not per_level or taken[level] < per_level:
            taken[level] += 1
            kept.append(row)
    return kept


def select_rows(rows: list[dict], per_level: int, first: int | None = None) -> list[dict]:
    """The rows to evaluate: the first ``first`` rows when it is given (the held-out set of a run whose
    ``data.valid_size`` is ``first``), else :func:`first_per_level`."""
    if first is not None:
        if first < 1:
            raise ValueError(f"--first must be >= 1, got {first}")
        return rows[:first]
    return first_per_level(rows, per_level)


def uniform_distinct_reference(scored: list[ScoredPuzzle], solution_counts: list[int], first: int) -> float:
    """Over the puzzles the first ``first`` samples solve: the mean of ``s (1 - (1 - 1/s)^k)``, the expected number
    of distinct solutions among ``k`` draws uniform over a puzzle's ``s`` solutions, with ``k`` the correct samples
    the policy drew among its first ``first`` (0.0 when none is solved)."""
    expected = [
        s * (1 - (1 - 1 / s) ** k)
        for puzzle, s in zip(scored, solution_counts, strict=True)
        if (k := sum(puzzle.correct[:first]))
    ]
    return sum(expected) / len(expected) if expected else 0.0


def targets(per_level: dict[str, dict[str, float]], distinct: float) -> dict[str, dict[str, Any]]:
    """Issue 25 §1's targets, each with the measured value and whether it is met."""
    easiest, hardest = per_level[min(per_level, key=int)], per_level[max(per_level, key=int)]
    checks = {
        "easiest pass@1 >= 0.6": (easiest["pass@1"], easiest["pass@1"] >= 0.6),
        "hardest pass@1 <= 0.1": (hardest["pass@1"], hardest["pass@1"] <= 0.1),
        "hardest pass@64 >= 0.3": (hardest["pass@64"], hardest["pass@64"] >= 0.3),
        "hardest pass@64 >= 3 x pass@1": (
            hardest["pass@64"] / hardest["pass@1"] if hardest["pass@1"] else float("inf"),
            hardest["pass@64"] >= 3 * hardest["pass@1"],
        ),
        "distinct valid among 16 on solved >= 2": (distinct, distinct >= 2.0),
    }
    return {name: {"value": round(value, 4), "met": bool(met)} for name, (value, met) in checks.items()}


def summarize(scored: list[ScoredPuzzle], samples: int, solution_counts: list[int] | None = None) -> dict[str, Any]:
    """The result object of the CLI (module docstring) from the scored puzzles and, for the distinct count's
    reference, each puzzle's number of distinct solutions. pass@k is given for k in 1, 8, 16, 64 up to `samples`,
    and for k = `samples` (the share of puzzles any sample solves: with 24, a run's coverage of its training
    questions if the base policy drew 8 a question in each of 3 epochs)."""
    ks = sorted({k for k in (1, 8, 16, 64) if k <= samples} | {samples})
    by_k = {k: pass_at_k_by_level(scored, k) for k in ks}
    counts: dict[int, int] = defaultdict(int)
    for puzzle in scored:
        counts[puzzle.level] += 1
    per_level = {
        str(level): {"puzzles": counts[level], **{f"pass@{k}": round(by_k[k][level], 4) for k in ks}}
        for level in sorted(counts)
    }
    distinct, solved = mean_distinct_on_solved(scored, min(DISTINCT_SAMPLES, samples))
    result: dict[str, Any] = {
        "per_level": per_level,
        "distinct_on_solved": {"mean": round(distinct, 4), "puzzles": solved, "first_samples": DISTINCT_SAMPLES},
    }
    if solution_counts is not None:
        reference = uniform_distinct_reference(scored, solution_counts, min(DISTINCT_SAMPLES, samples))
        result["distinct_on_solved"]["if_uniform_over_solutions"] = round(reference, 4)
    if samples >= 64:
        result["targets"] = targets(per_level, distinct)
    return result


def main(argv: list[str] | None = None) -> None:
    """CLI: see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help=f"model directory (default: build {DEFAULT_MODEL_DIR})")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA_DIR, help="dataset directory")
    parser.add_argument("--split", default="test", choices=["train", "valid", "test"])
    parser.add_argument(
        "--file",
        type=Path,
        help="instead of --data's --split: this countdown Parquet file (a run's data.valid_path); no targets verdict",
    )
    parser.add_argument("--per-level", type=int, default=86, help="puzzles per level (0: all; 86 x 6 = 516)")
    parser.add_argument(
        "--first", type=int, help="instead of --per-level: the split's first N rows, as a run's data.valid_size takes"
    )
    parser.add_argument("--samples", type=int, default=64, help="samples per puzzle at T=1")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--json-out", type=Path, help="also write the result object here")
    args = parser.parse_args(argv)
    if args.file is not None and not args.file.is_file():
        parser.error(f"--file {args.file}: no such file")
    torch.set_num_threads(args.threads)
    config = BasePolicyConfig()
    model_dir = args.model if args.model is not None else ensure_base_policy(DEFAULT_MODEL_DIR, config)
    split_path = args.file if args.file is not None else ensure_datasets(args.data, config.data)[args.split]
    rows = select_rows(pq.read_table(split_path).to_pylist(), args.per_level, args.first)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    torch.manual_seed(args.seed)
    start = time.perf_counter()
    scored = sample_and_score(
        model,
        tokenizer,
        [row["prompt"][-1]["content"] for row in rows],
        [row["reward_model"]["ground_truth"] for row in rows],
        [row["extra_info"]["level"] for row in rows],
        args.samples,
        args.temperature,
    )
    seconds = time.perf_counter() - start
    result: dict[str, Any] = {
        **summarize(
            scored, args.samples, [len(solve(*parse_ground_truth(row["reward_model"]["ground_truth"]))) for row in rows]
        ),
        "puzzles": len(rows),
        "samples": args.samples,
        "temperature": args.temperature,
        "split": str(split_path),
        "model": str(model_dir),
        "seconds": round(seconds, 1),
    }
    if args.file is not None:
        result.pop("targets", None)  # the targets are on the default splits' easiest and hardest levels
    print(f"{len(rows)} puzzles of {split_path}, {args.samples} samples each at T={args.temperature}, {seconds:.1f} s")
    for level, values in result["per_level"].items():
        print(f"level {level}: " + "  ".join(f"{name} {value}" for name, value in values.items()))
    print(f"distinct valid expressions among the first 16 samples on solved puzzles: {result['distinct_on_solved']}")
    for name, verdict in result.get("targets", {}).items():
        print(f"target {name}: {verdict['value']} {'met' if verdict['met'] else 'NOT met'}")
    if args.json_out is not None:
        args.json_out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
