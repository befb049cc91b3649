"""The allocators and the temperature at equal budget on the countdown testbed, with 95% intervals over seeds.

    python -m bench.countdown                        # every variant x 3 seeds, the experiment's config (below)
    python -m bench.countdown --seeds 0 1 2 3 4 --variants grpo_n8 e3_knapsack_n8
    python -m bench.countdown --levels 2 3 4         # train and evaluate on those levels' puzzles only

Variants (`VARIANTS`): at a mean of 8 responses a question, GRPO (uniform budget, fixed T), +TS (the adaptive
temperature only), E3 (all three parts) and E3 with the `informative` or the `knapsack` allocator; at a mean of 4,
GRPO, E3 and E3 with `knapsack`. For a seed every run sees the same questions in the same order, and every run at
one mean generates the same number of responses, so the budgets are equal.

Per run (`countdown_metrics`): held-out pass@k at T = 1 overall and per level (the hardest levels are where
exploration should pay), greedy accuracy, pass@1 at T in {0.6, 1.0, 1.3}, coverage (the share of training
questions solved at least once), distinct correct answers per group, the entropy of the 20% highest-entropy tokens,
the all-wrong and zero-advantage fractions; and each run's held-out greedy curve. Means, 95% Student-t intervals
and per-seed values go to `bench/results/countdown.json` and `.md`, the first seed's runs overlaid in
`countdown_report.html`. Which pairs separate (non-overlapping intervals) is listed in the Markdown.

`--levels` keeps only those levels' puzzles of the default training and validation splits (`level_subset`: a
subset keeps the splits disjoint and free of warm-start puzzles), so a step's budget goes to the levels where the
number of responses decides whether a group finds a success.

Coverage counts questions solved at least once, so more draws alone raise it. Read it against the untrained base
policy with GRPO's draws over the run: `python -m tasks.countdown.eval_base --file <the run's training file>
--first 256 --samples 24` (8 a question in each of 3 epochs) gives its pass@24, the coverage of no learning
(`bench/results/countdown_levels.md`).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections.abc import Sequence
from itertools import combinations
from pathlib import Path
from typing import Any

from bench.ablation import mean_ci95
from bench.machine import machine_line
from bench.runs import SYNCHRONOUS, grid_arguments, train_grid
from cluster.environment import keep_ray_on_loopback
from reporting.markdown import markdown_table
from tasks.arithmetic.generate import SCHEMA, level_ranks
from tasks.countdown.problems import LEVELS

VARIANTS: dict[str, list[str]] = {
    "grpo_n8": ["algo=grpo", "budget.n=8"],
    "ts_n8": ["algo=e3", "budget.n=8", "budget.allocator=uniform"],
    "e3_n8": ["algo=e3", "budget.n=8", "temperature.annealing=true"],
    "e3_informative_n8": ["algo=e3", "budget.n=8", "temperature.annealing=true", "budget.allocator=informative"],
    "e3_knapsack_n8": ["algo=e3", "budget.n=8", "temperature.annealing=true", "budget.allocator=knapsack"],
    "grpo_n4": ["algo=grpo", "budget.n=4"],
    "e3_n4": ["algo=e3", "budget.n=4", "budget.n_low=2", "budget.n_high=6", "temperature.annealing=true"],
    "e3_knapsack_n4": ["algo=e3", "budget.n=4", "budget.n_low=2", "budget.n_high=6", "temperature.annealing=true",
                       "budget.allocator=knapsack"],
}  # fmt: skip
"""Each variant's overrides on top of `EXPERIMENT_CONFIG`; the suffix is the mean responses per question. At a
mean of 4 the bounds widen to 2..6 (the default lower bound, 4, would leave an allocator no room: every question
would get exactly 4)."""

LABELS = {
    "grpo_n8": "GRPO n=8",
    "ts_n8": "+TS n=8",
    "e3_n8": "E3 n=8",
    "e3_informative_n8": "E3 informative n=8",
    "e3_knapsack_n8": "E3 knapsack n=8",
    "grpo_n4": "GRPO n=4",
    "e3_n4": "E3 n=4",
    "e3_knapsack_n4": "E3 knapsack n=4",
}

SOURCE = "countdown"
"""The held-out data sources are `countdown/L<level>`."""
KS = (1, 4, 16, 64)
"""The k of the held-out pass@k at T = 1 (64 answers sampled per held-out question)."""
TEMPERATURES = (0.6, 1.0, 1.3)
"""The temperatures of the held-out pass@1 after training."""

EXPERIMENT_CONFIG = [
    *SYNCHRONOUS,
    "+experiment=countdown",  # the task, with the prompt and response lengths its base policy answers in
    "data.max_train_questions=256",
    "data.valid_size=120",
    "train.questions_per_step=16",
    "train.epochs=3",
    "eval.every_steps=4",
    f"eval.heldout_samples={max(KS)}",
    f"eval.ks=[{','.join(map(str, KS))}]",
    f"eval.after_temperatures=[{','.join(f'{t:g}' for t in TEMPERATURES if t != 1.0)}]",
    "eval.after_temperature_samples=16",
    "eval.sample_before=false",
]
"""The demo's config on the countdown task, synchronous and smaller, so that 24 runs fit in about 90 minutes on
2 cores: 256 training questions (about 43 a level), 16 a step, three epochs (48 steps of 128 responses at a mean
n of 8, 64 at 4); greedy held-out accuracy on 120 validation puzzles (about 20 a level) every 4 steps (the
curve); after training, 64 answers per held-out question at T = 1 and 16 at each other of `TEMPERATURES`."""


def level_subset(split_path: Path, levels: Sequence[int], out_path: Path) -> Path:
    """Write to `out_path` the rows of the countdown split file `split_path` whose level is one of `levels`, in
    file order, with `rank` recomputed among them; returns `out_path`. Raises ValueError naming the file when no
    row has one of `levels`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [row for row in pq.read_table(split_path).to_pylist() if row["extra_info"]["level"] in set(levels)]
    if not rows:
        raise ValueError(f"{split_path}: no row has a level in {sorted(levels)}")
    for row, rank in zip(rows, level_ranks([row["extra_info"]["level"] for row in rows]), strict=True):
        row["rank"] = rank
    out_path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), out_path)
    return out_path


def level_overrides(levels: Sequence[int], out_dir: Path) -> list[str]:
    """The overrides that train and evaluate on `levels` only: subsets of the default countdown training and
    validation splits (built first if missing), written under `out_dir`."""
    from tasks.countdown.build_base import DEFAULT_DATA_DIR, BasePolicyConfig
    from tasks.countdown.generate import ensure_datasets

    splits = ensure_datasets(DEFAULT_DATA_DIR, BasePolicyConfig().data)
    tag = "-".join(map(str, sorted(levels)))
    train = level_subset(splits["train"], levels, out_dir / f"train-L{tag}.parquet")
    valid = level_subset(splits["valid"], levels, out_dir / f"valid-L{tag}.parquet")
    return [f"data.train_path={train.resolve()}", f"data.valid_path={valid.resolve()}"]


def final(record_values: Sequence[float], share: float = 0.25) -> float:
    """The mean of the finite values among the last `share` of a run's per-step values (a step's value is noisy;
    the run's end is read from its last quarter); NaN when none is finite (a step whose groups all failed has no
    distinct-answer count)."""
    tail = [v for v in list(record_values)[-max(1, round(share * len(record_values))) :] if math.isfinite(v)]
    return statistics.fmean(tail) if tail else math.nan


def countdown_metrics(run: Any, levels: Sequence[str]) -> dict[str, float]:
    """The experiment's numbers of one finished run (`reporting.report.Run`); `levels` are the held-out levels
    (`L<k>`, data source `countdown/L<k>`), easiest first."""
    steps, after = run.steps, run.summary["heldout_after"]
    metrics: dict[str, float] = {
        "heldout_greedy_accuracy": after["accuracy"],
        **{f"pass@{k}": after[f"sampled/all/pass@{k}"] for k in KS},
        "pass@64_two_hardest": statistics.fmean(after[f"sampled/{SOURCE}/{level}/pass@64"] for level in levels[-2:]),
        **{f"pass@1_T{t:g}": after[_at(t, "all/pass@1")] for t in TEMPERATURES},
        "coverage": steps[-1].coverage,
        "distinct_correct_last_quarter": final([s.distinct_correct for s in steps]),
        "entropy_top20_last_quarter": final([s.learner.get("entropy_top20", float("nan")) for s in steps]),
        "entropy_last_quarter": final([s.entropy for s in steps]),
        "all_wrong_fraction": statistics.fmean(s.all_wrong_fraction for s in steps),
        "zero_advantage_fraction": statistics.fmean(s.zero_advantage_fraction for s in steps),
        "rollouts_to_never_solved": rollouts_to_never_solved(run),
        "final_temperature": steps[-1].next_temperature,
        "rollouts_total": sum(s.rollouts_total for s in steps),
        "wall_s": run.summary["wall_s"],
    }
    for level in levels:
        for k in (1, 64):
            metrics[f"pass@{k}/{level}"] = after[f"sampled/{SOURCE}/{level}/pass@{k}"]
    return metrics


def rollouts_to_never_solved(run: Any) -> float:
    """The mean rollouts a step gave each question the run never solved (correct 0 in its final difficulty table,
    `difficulty.parquet`): what an allocator spends where coverage could still grow; NaN without the table or
    without such a question."""
    import pyarrow.parquet as pq

    path = Path(run.run_dir) / "difficulty.parquet"
    if not path.is_file():
        return math.nan
    never = {row["question_id"] for row in pq.read_table(path, columns=["question_id", "correct"]).to_pylist()
             if row["correct"] == 0}  # fmt: skip
    given = [n for s in run.steps for q, n in zip(s.question_ids, s.rollouts_per_question, strict=True) if q in never]
    return statistics.fmean(given) if given else math.nan


def _at(temperature: float, key: str) -> str:
    """The summary key of a held-out number sampled at `temperature` (T = 1 is the evaluation's own)."""
    return f"sampled/{key}" if temperature == 1.0 else f"sampled_t{temperature:g}/{key}"


def curve(run: Any) -> list[list[float]]:
    """The run's held-out greedy curve as [steps done, accuracy] pairs."""
    xs, ys = run.heldout_curve()
    return [[float(x), float(y)] for x, y in zip(xs, ys, strict=True)]


def saturation_step(points: Sequence[Sequence[float]], share: float = 0.9) -> float | None:
    """The first step at which a curve has `share` of its final gain over its start (None for a curve that
    gains nothing): issue 25's test that training does not saturate early."""
    start, end = points[0][1], points[-1][1]
    if end <= start:
        return None
    return next(x for x, y in points if y - start >= share * (end - start))


def separations(variants: dict[str, dict[str, Any]], metrics: Sequence[str]) -> list[str]:
    """Every pair of variants whose 95% intervals on one of `metrics` do not overlap, as lines of text."""
    lines = []
    for metric in metrics:
        for a, b in combinations(variants, 2):
            ia, ib = variants[a][metric].get("ci95"), variants[b][metric].get("ci95")
            if ia and ib and (ia[1] < ib[0] or ib[1] < ia[0]):
                high, low = (a, b) if variants[a][metric]["mean"] > variants[b][metric]["mean"] else (b, a)
                lines.append(
                    f"{metric}: {LABELS[high]} {variants[high][metric]['mean']:.3f} > {LABELS[low]} "
                    f"{variants[low][metric]['mean']:.3f}"
                )
    return lines


def paired_separations(variants: dict[str, dict[str, Any]], metrics: Sequence[str]) -> list[dict[str, Any]]:
    """Every pair of variants whose per-seed differences on one of `metrics` have a 95% Student-t interval that
    excludes zero: the paired comparison, since at one seed every variant sees the same questions in the same
    order (more seeds than one needed). Each as `metric`, `higher`, `lower` and the difference's `mean`, `ci95`,
    `per_seed` (higher minus lower)."""
    found = []
    for metric in metrics:
        for a, b in combinations(variants, 2):
            diffs = [
                x - y for x, y in zip(variants[a][metric]["per_seed"], variants[b][metric]["per_seed"], strict=True)
            ]
            diff = mean_ci95(diffs)
            if diff["ci95"] and (diff["ci95"][0] > 0 or diff["ci95"][1] < 0):
                high, low = (a, b) if diff["mean"] > 0 else (b, a)
                sign = 1 if high == a else -1
                found.append({
                    "metric": metric, "higher": high, "lower": low, "mean": sign * diff["mean"],
                    "ci95": sorted(sign * v for v in diff["ci95"]), "per_seed": [sign * v for v in diffs],
                })  # fmt: skip
    return found


SEPARATION_METRICS = ("pass@64_two_hardest", "coverage", "pass@1", "pass@64", "heldout_greedy_accuracy")
ROWS = (
    ("held-out greedy accuracy", "heldout_greedy_accuracy", "{:.3f}"),
    *((f"held-out pass@{k}, T=1", f"pass@{k}", "{:.3f}") for k in KS),
    ("held-out pass@64, two hardest levels", "pass@64_two_hardest", "{:.3f}"),
    *((f"held-out pass@1, T={t:g}", f"pass@1_T{t:g}", "{:.3f}") for t in TEMPERATURES),
    ("coverage of the training questions", "coverage", "{:.3f}"),
    ("distinct correct answers a group, last quarter", "distinct_correct_last_quarter", "{:.2f}"),
    ("entropy of the top-20% tokens, last quarter", "entropy_top20_last_quarter", "{:.3f}"),
    ("entropy, last quarter", "entropy_last_quarter", "{:.3f}"),
    ("all-wrong fraction, whole run", "all_wrong_fraction", "{:.3f}"),
    ("zero-advantage fraction, whole run", "zero_advantage_fraction", "{:.3f}"),
    ("rollouts a step to a question never solved", "rollouts_to_never_solved", "{:.2f}"),
    ("final temperature", "final_temperature", "{:.3f}"),
    ("responses in the run", "rollouts_total", "{:.0f}"),
)


def _cell(metric: dict[str, Any], spec: str) -> str:
    """`mean [lo, hi]`, or n/a."""
    if metric.get("mean") is None:
        return "n/a"
    text = spec.format(metric["mean"])
    if metric.get("ci95"):
        text += " [" + ", ".join(spec.format(v) for v in metric["ci95"]) + "]"
    return text


def summarize(metrics: dict[str, list[dict[str, float]]]) -> dict[str, dict[str, Any]]:
    """Per variant and metric: mean, 95% interval and the per-seed values."""
    return {name: {key: mean_ci95([m[key] for m in runs]) for key in runs[0]} for name, runs in metrics.items()}


def markdown(results: dict[str, Any]) -> str:
    """The measured tables (means [95% interval] over seeds) and the list of separated pairs; the reading is
    written by hand below them."""
    variants = results["variants"]
    names = list(variants)
    table = markdown_table(
        ["metric", *(LABELS[n] for n in names)],
        [[label, *(_cell(variants[n][key], spec) for n in names)] for label, key, spec in ROWS],
    )
    levels = results["levels"]
    per_level = markdown_table(
        ["variant", *(f"{level} pass@1 / pass@64" for level in levels)],
        [
            [LABELS[n], *(f"{variants[n][f'pass@1/{lv}']['mean']:.3f} / {variants[n][f'pass@64/{lv}']['mean']:.3f}"
                          for lv in levels)]
            for n in names
        ],
    )  # fmt: skip
    separated = results["separations"] or ["(none: every pair's intervals overlap on every metric listed)"]
    paired = [
        f"{p['metric']}: {LABELS[p['higher']]} - {LABELS[p['lower']]} = {p['mean']:+.3f} "
        f"[{p['ci95'][0]:+.3f}, {p['ci95'][1]:+.3f}]"
        for p in results.get("paired_separations", [])
    ] or ["(none)"]
    saturation = results["grpo_saturation"]
    lines = [
        "# Allocators and temperature at equal budget on countdown",
        "",
        f"Command: `{results['command']}`  ",
        f"Seeds: {results['seeds']}; config: `{' '.join(results['config'])}`; {results['machine']}; "
        f"{results['date']}; {results.get('runs_wall_s', results['bench_wall_s']) / 60:.0f} min of runs.",
        "",
        "Means over seeds with 95% Student-t intervals (per-seed values and curves in countdown.json).",
        "",
        *table,
        "",
        "Per level, means over seeds (L1 easiest):",
        "",
        *per_level,
        "",
        "Pairs whose intervals do not overlap, on " + ", ".join(f"`{m}`" for m in SEPARATION_METRICS) + ":",
        "",
        *(f"- {line}" for line in separated),
        "",
        "Pairs whose per-seed differences (same seed, same questions in the same order) have a 95% interval that "
        "excludes zero, on the same metrics:",
        "",
        *(f"- {line}" for line in paired),
        "",
        "GRPO's held-out greedy curve reaches 90% of its final gain at step(s) "
        f"{saturation['per_seed']} of {saturation['steps']} (issue 25: no earlier than half-way).",
        "",
        "Overlay of the first seed's runs: [countdown_report.html](countdown_report.html).",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run every (seed, variant) pair, write `countdown.json`, `countdown.md` and `countdown_report.html` under
    `--out` (`bench/results/`), and return the results; runs go to `--runs` (`runs/countdown/`, not committed)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    grid_arguments(parser, list(VARIANTS), Path("runs/countdown"))
    parser.add_argument("--levels", type=int, nargs="+", help="train and evaluate on these levels only")
    args = parser.parse_args(argv)
    if "grpo_n8" not in args.variants:
        parser.error("--variants must include grpo_n8 (the reference of the saturation check)")
    unknown = sorted(set(args.levels or ()) - set(LEVELS))
    if unknown:
        parser.error(f"--levels {unknown}: unknown; the countdown levels are {sorted(LEVELS)}")
    keep_ray_on_loopback()  # before Ray is imported

    from reporting.report import load_run, write_report

    started = time.perf_counter()
    data = level_overrides(args.levels, args.runs / "data") if args.levels else []
    config = [*EXPERIMENT_CONFIG, *data, *args.overrides]
    variants = {name: [*config, *VARIANTS[name]] for name in args.variants}
    run_dirs = train_grid(args.runs, args.seeds, variants, reuse=args.reuse)

    runs = {name: [load_run(d) for d in dirs] for name, dirs in run_dirs.items()}
    first = runs[args.variants[0]][0]
    levels = sorted(
        {key.split("/")[2] for key in first.summary["heldout_after"] if key.startswith(f"sampled/{SOURCE}")}
    )
    metrics = {name: [countdown_metrics(run, levels) for run in variant_runs] for name, variant_runs in runs.items()}
    grpo_curves = [curve(run) for run in runs["grpo_n8"]]
    results: dict[str, Any] = {
        "variants": summarize(metrics),
        "seeds": args.seeds,
        "levels": levels,
        "curves": {
            name: {str(seed): curve(run) for seed, run in zip(args.seeds, rs, strict=True)} for name, rs in runs.items()
        },
        "grpo_saturation": {
            "per_seed": [saturation_step(points) for points in grpo_curves],
            "steps": first.summary["steps"],
        },
        "config": config,
        "variant_overrides": {name: VARIANTS[name] for name in args.variants},
        "machine": machine_line(),
        "date": time.strftime("%Y-%m-%d"),
        "bench_wall_s": time.perf_counter() - started,
        "runs_wall_s": sum(m["wall_s"] for variant in metrics.values() for m in variant),
        "command": ("python -m bench.countdown " + " ".join(sys.argv[1:] if argv is None else argv)).strip(),
    }
    results["separations"] = separations(results["variants"], SEPARATION_METRICS)
    results["paired_separations"] = paired_separations(results["variants"], SEPARATION_METRICS)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "countdown.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
    (args.out / "countdown.md").write_text(markdown(results), encoding="utf-8")
    write_report([dirs[0] for dirs in run_dirs.values()], out=args.out / "countdown_report.html")
    print(markdown(results))
    return results


if __name__ == "__main__":
    main()
