"""The rollout allocators at known success rates: how many groups carry a gradient, and how often the hard
questions get solved at all (issue 25 §2). Seconds, CPU only, no model.

    python -m bench.allocators_sim                       # writes bench/results/allocators_sim.{md,json}
    python -m bench.allocators_sim --seeds 0 1 2 --out /tmp/sim

A population of questions with fixed, known success rates p (a mix like a base policy short of mastery: a fifth
never solvable, hard ones with p < 0.1, a middle band, easy ones) is trained on for a few epochs of steps, without
learning: each step samples its questions, the allocator shares `n * B` rollouts among them from the difficulty
table (the real `core.difficulty.DifficultyTable`, its window `p_window` and, for `e3`, its ranks recomputed at
each epoch end), the outcomes are drawn at the true p and observed into the table. Measured over the steps after
the first epoch (once the table has seen every question), as expectations given the allocation, so the only noise
is which statistics the table holds:

- `gradient`: the share of groups that hold a right and a wrong answer, `1 - p^n - (1 - p)^n` (GRPO learns only
  from those);
- `hard_solved`: on questions with 0 < p < 0.1, the chance that the group solves it at least once,
  `1 - (1 - p)^n` (where exploration pays);
- `hard_rollouts`: the mean rollouts those questions get.

Bounds are fixed (wide from the start): `narrow` is `[n/2, 3n/2]`, the shape of the default `n_low..n_high` =
4..12 at n = 8; `wide` is `[1, 4n]`, nearer Knapsack RL's (which lets a question take many times the mean).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.allocators import ALLOCATORS, QuestionStats
from core.difficulty import DifficultyTable

ALLOCATOR_NAMES = ("uniform", "e3", "informative", "knapsack")
BOUNDS = {"narrow": lambda n: (max(1, n // 2), n + n // 2), "wide": lambda n: (1, 4 * n)}
"""`(n_min, n_max)` at a mean of n, by name."""
HARD_P = 0.1
RESULTS_DIR = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class SimConfig:
    """The simulated training run."""

    questions: int = 1024
    """Questions in the population."""
    questions_per_step: int = 32
    """Questions sampled per step (B)."""
    epochs: int = 4
    """Passes over the population; the first one is left out of the measurement."""
    p_window: int = 16
    """Outcomes the difficulty table keeps per question (knapsack's p)."""


def population(rng: np.random.Generator, size: int) -> np.ndarray:
    """Known success rates: 20% never solvable (p = 0), 30% hard (p in (0, 0.1)), 30% middle (0.1 to 0.9), 20% easy
    (0.9 to 1)."""
    kinds = rng.choice(4, size=size, p=[0.2, 0.3, 0.3, 0.2])
    low = np.array([0.0, 0.005, 0.1, 0.9])[kinds]
    high = np.array([0.0, HARD_P, 0.9, 1.0])[kinds]
    return low + (high - low) * rng.random(size)


def simulate(allocator: str, n: int, bounds: str, seed: int, config: SimConfig) -> dict[str, float]:
    """One run of ``allocator`` at a mean of ``n`` rollouts per question within ``BOUNDS[bounds]``; the measured
    means (module docstring)."""
    rng = np.random.default_rng(seed)
    p = population(rng, config.questions)
    ids = [f"q{i}" for i in range(config.questions)]
    table = DifficultyTable(ids, window=config.p_window)
    n_min, n_max = BOUNDS[bounds](n)
    gradient, hard_solved, hard_rollouts = [], [], []
    steps_per_epoch = config.questions // config.questions_per_step
    for epoch in range(config.epochs):
        order = rng.permutation(config.questions)
        for step in range(steps_per_epoch):
            batch = order[step * config.questions_per_step : (step + 1) * config.questions_per_step]
            batch_ids = [ids[i] for i in batch]
            stats = [
                QuestionStats(a, c, r, wa, wc)
                for (a, c), (wa, wc), r in zip(
                    table.counts(batch_ids), table.window_counts(batch_ids), table.ranks(batch_ids), strict=True
                )
            ]
            counts = np.array(ALLOCATORS[allocator](stats, n * len(batch), n_min, n_max))
            rates = p[batch]
            if epoch > 0:
                gradient.extend(1 - rates**counts - (1 - rates) ** counts)
                hard = (rates > 0) & (rates < HARD_P)
                hard_solved.extend(1 - (1 - rates[hard]) ** counts[hard])
                hard_rollouts.extend(counts[hard])
            outcomes = rng.random(int(counts.sum())) < np.repeat(rates, counts)
            table.observe(list(np.repeat(batch_ids, counts)), outcomes.astype(int).tolist(), step=step)
        table.recompute_ranks()
    return {
        "gradient": float(np.mean(gradient)),
        "hard_solved": float(np.mean(hard_solved)),
        "hard_rollouts": float(np.mean(hard_rollouts)),
    }


def summary(values: list[float]) -> dict:
    """The mean over seeds and the per-seed values."""
    return {"mean": statistics.fmean(values), "per_seed": values}


def run(seeds: list[int], means: list[int], config: SimConfig) -> dict:
    """Every allocator at every mean n over ``seeds``: per metric the mean over seeds and the per-seed values."""
    results: dict[str, dict] = {}
    for bounds in BOUNDS:
        for n in means:
            for allocator in ALLOCATOR_NAMES:
                per_seed = [simulate(allocator, n, bounds, seed, config) for seed in seeds]
                results[f"{allocator}@n={n},{bounds}"] = {
                    "allocator": allocator,
                    "n": n,
                    "bounds": bounds,
                    "n_min_max": list(BOUNDS[bounds](n)),
                    **{metric: summary([r[metric] for r in per_seed]) for metric in per_seed[0]},
                }
    return results


def markdown(results: dict, config: SimConfig, command: str, seconds: float) -> str:
    """The results as a Markdown table with the command that made them."""
    lines = [
        "# Rollout allocators at known success rates (`bench/allocators_sim.py`)",
        "",
        f"Command: `{command}` ({seconds:.1f} s). {config.questions} questions (20% p = 0, 30% 0 < p < 0.1, 30% "
        f"0.1-0.9, 20% 0.9-1), {config.questions_per_step} a step, {config.epochs} epochs, the first left out; "
        f"bounds narrow [n/2, 3n/2] or wide [1, 4n]; `p_window` = {config.p_window}. Means over seeds (per-seed "
        "values in the JSON).",
        "",
        "| allocator | mean n | bounds | groups with a gradient | P(>= 1 success), 0 < p < 0.1 "
        "| rollouts, 0 < p < 0.1 |",
        "|---|---|---|---|---|---|",
    ]
    for row in results.values():
        lines.append(
            f"| {row['allocator']} | {row['n']} | {row['bounds']} {row['n_min_max']} | {row['gradient']['mean']:.3f} "
            f"| {row['hard_solved']['mean']:.3f} "
            f"| {row['hard_rollouts']['mean']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    """CLI: see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--means", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    config = SimConfig()
    start = time.perf_counter()
    results = run(args.seeds, args.means, config)
    seconds = time.perf_counter() - start
    command = "python -m bench.allocators_sim" + (" " + " ".join(argv if argv is not None else sys.argv[1:])).rstrip()
    args.out.mkdir(parents=True, exist_ok=True)
    text = markdown(results, config, command.strip(), seconds)
    (args.out / "allocators_sim.md").write_text(text)
    payload = {"command": command.strip(), "seconds": round(seconds, 2), "seeds": args.seeds, "config": vars(config)}
    (args.out / "allocators_sim.json").write_text(json.dumps({**payload, "results": results}, indent=2) + "\n")
    print(text)


if __name__ == "__main__":
    main()
