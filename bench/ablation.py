"""The paper's ablation at equal budget on the embedded default, with 95% intervals over seeds.

    python -m bench.ablation                          # 6 variants x 3 seeds, the ablation's config (below)
    python -m bench.ablation --seeds 0 1 2 3 -- train.epochs=4

Variants (`VARIANTS`; E3 = DR + TS + AN): `grpo`, `dr`, `ts`, `ts_an`, `e3` (the paper's "All") and
`e3_informative` (all three, with the `informative` allocator). For a seed every run sees the same questions in
the same order and generates the same number of responses every step, so the total budget is equal too; the
config is the demo's, shortened to 48 steps (`ABLATION_CONFIG`).

Per run (`run_metrics`, `summarize`): held-out greedy accuracy and pass@k, the all-wrong and zero-advantage
fractions, the entropy's drift, where each allocator puts the budget, and the efficiency figure (rollouts until
the held-out curve first reaches GRPO's final accuracy). Means and 95% Student-t intervals over seeds go to
`ablation.json` and `ablation.md` in `bench/results/`, with `ablation_report.html` (`main`).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.machine import machine_line
from bench.runs import SYNCHRONOUS, grid_arguments, train_grid
from cluster.environment import keep_ray_on_loopback
from reporting.markdown import markdown_table

VARIANTS: dict[str, list[str]] = {
    "grpo": ["algo=grpo"],
    "dr": ["algo=e3", "temperature.enabled=false"],
    "ts": ["algo=e3", "budget.allocator=uniform"],
    "ts_an": ["algo=e3", "budget.allocator=uniform", "temperature.annealing=true"],
    "e3": ["algo=e3", "temperature.annealing=true"],
    "e3_informative": ["algo=e3", "temperature.annealing=true", "budget.allocator=informative"],
}
"""Each variant's config overrides, on top of `ABLATION_CONFIG` (E3 = DR + TS + AN):
- `grpo`: uniform budget, fixed temperature (`algo=grpo`);
- `dr`: E3's dynamic rollout budget only (temperature fixed);
- `ts`: the adaptive temperature only (uniform budget, no annealing of the target);
- `ts_an`: the adaptive temperature with the cosine annealing of its target;
- `e3`: all three (DR + TS + AN), the paper's "All";
- `e3_informative`: all three, the budget shared by the `informative` allocator instead of E3's rank rule.
"""

LABELS = {
    "grpo": "GRPO",
    "dr": "+DR",
    "ts": "+TS",
    "ts_an": "+TS&AN",
    "e3": "All (E3)",
    "e3_informative": "All, informative",
}

KS = (1, 4, 16, 64)
"""The k of the held-out pass@k (64 answers sampled per question)."""

ABLATION_CONFIG = [
    *SYNCHRONOUS,  # the loop the committed results ran
    "data.max_train_questions=512",
    "eval.every_steps=4",
    f"eval.heldout_samples={max(KS)}",
    f"eval.ks=[{','.join(map(str, KS))}]",
    "eval.sample_before=false",
]
"""The demo's config, synchronous, shortened to 48 steps (about 3.2 min a run on 2 cores of an Intel Xeon).

Every run sees the same questions in the same order for a seed and generates the same number of responses every
step (`budget.n` x `train.questions_per_step`), so the total budget is equal too. The config is the demo's with
512 training questions (16 steps an epoch, 48 steps: three epochs of widening bounds 8..8, 6..10, 4..12), greedy
held-out accuracy every 4 steps (the curve the efficiency figure is read from), and 64 answers sampled at T = 1
per held-out question after training for pass@k at k = 1, 4, 16, 64 (the unbiased estimator, `core/passk.py`).
The base policy's pass@k is sampled once, in the first run (`main`).
"""

RANK_BINS = 4
"""Equal difficulty-rank bins of the allocation profile, the quarters of [0, 1] (rank 0: easiest, 1: hardest)."""

T_975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228)
"""Student-t 0.975 quantiles for 1..10 degrees of freedom (the 95% interval of a mean over 2..11 seeds)."""


def mean_ci95(values: Sequence[float]) -> dict[str, Any]:
    """Mean, 95% Student-t interval (None for fewer than two values) and the values themselves."""
    values = [float(v) for v in values]
    mean = statistics.fmean(values)
    if len(values) < 2:
        return {"mean": mean, "ci95": None, "per_seed": values}
    df = len(values) - 1
    t = T_975[df - 1] if df <= len(T_975) else 1.96
    half = t * statistics.stdev(values) / math.sqrt(len(values))
    return {"mean": mean, "ci95": [mean - half, mean + half], "per_seed": values}


def rollouts_to_reach(run: Any, target: float) -> int | None:
    """Rollouts generated until `run`'s held-out greedy curve (before training, every evaluating step, after)
    first reaches `target`; None if it never does."""
    spent = [0]
    for record in run.steps:
        spent.append(spent[-1] + record.rollouts_total)
    steps_done, accuracy = run.heldout_curve()
    for done, value in zip(steps_done, accuracy, strict=True):
        if value >= target - 1e-12:
            return spent[min(int(done), len(run.steps))]
    return None


def rollouts_by_rank(run: Any, epoch: int) -> list[float]:
    """Mean rollouts a question got in `epoch` of `run`, per quarter of the difficulty ranks it had when its step
    was allocated (NaN for a quarter no question fell in)."""
    from reporting.report import allocation_of_epoch, bin_index

    ranks, counts = allocation_of_epoch(run, epoch)
    which = bin_index(ranks, RANK_BINS)
    return [float(counts[which == b].mean()) if (which == b).any() else math.nan for b in range(RANK_BINS)]


def target_noise(runs: Sequence[Any], init_steps: Sequence[int] = (1, 4, 8)) -> dict[str, Any]:
    """How steady the temperature controller's input is, from runs at a fixed temperature (GRPO's): the relative
    standard deviation of one step's entropy about its run's first-epoch mean, and for each `k` of `init_steps`
    the root-mean-square relative error of a target fixed as the mean of k consecutive first-epoch steps (every
    window start) against that first-epoch mean, the entropy the policy has at T = 1 before training moves it
    (a k longer than the first epoch is left out)."""
    per_step: list[float] = []
    errors: dict[int, list[float]] = {k: [] for k in init_steps}
    for run in runs:
        first = [r.entropy for r in run.steps if r.epoch == run.steps[0].epoch]
        level = statistics.fmean(first)
        per_step += [h / level - 1 for h in first]
        for k in init_steps:
            errors[k] += [statistics.fmean(first[i : i + k]) / level - 1 for i in range(len(first) - k + 1)]
    rms = lambda xs: math.sqrt(statistics.fmean(x * x for x in xs))  # noqa: E731
    return {
        "per_step_relative_std": rms(per_step),
        "target_relative_rms_error": {str(k): rms(errors[k]) for k in init_steps if errors[k]},
    }


def run_metrics(run: Any) -> dict[str, Any]:
    """The ablation's numbers of one finished run (`reporting.report.Run`), but the efficiency figure (which needs
    GRPO's final accuracy).

    Per run: held-out greedy accuracy after training; held-out pass@k; the all-wrong fraction in the last epoch;
    the zero-advantage fraction over the run (groups whose rewards are all equal, so they carry no gradient); the
    last epoch's mean entropy against the first epoch's; the mean rollouts a question got in each quarter of the
    difficulty ranks in the last epoch (where each allocator puts the budget).
    """
    steps, after = run.steps, run.summary["heldout_after"]
    first = [r for r in steps if r.epoch == steps[0].epoch]
    last = [r for r in steps if r.epoch == steps[-1].epoch]
    entropy_first, entropy_last = (statistics.fmean(r.entropy for r in part) for part in (first, last))
    return {
        "heldout_greedy_accuracy": after["accuracy"],
        **{f"pass@{k}": after[f"sampled/all/pass@{k}"] for k in KS},
        "all_wrong_last_epoch": statistics.fmean(r.all_wrong_fraction for r in last),
        "zero_advantage_fraction": statistics.fmean(r.zero_advantage_fraction for r in steps),
        "entropy_first_epoch": entropy_first,
        "entropy_last_epoch": entropy_last,
        "entropy_last_vs_first_epoch": entropy_last / entropy_first - 1,
        "final_temperature": steps[-1].next_temperature,
        "rollouts_total": sum(r.rollouts_total for r in steps),
        "rollouts_by_rank_quarter_last_epoch": rollouts_by_rank(run, steps[-1].epoch),
        "wall_s": run.summary["wall_s"],
    }


def summarize(runs: dict[str, list[Any]]) -> dict[str, Any]:
    """Per-variant means and intervals over seeds of every metric, with the efficiency figure: rollouts until
    the held-out curve first reaches GRPO's final accuracy (mean over its seeds), over GRPO's budget per run.

    The efficiency figure is the rollouts spent until the held-out greedy curve first reaches GRPO's final
    accuracy, as a fraction of a run's budget (1.0: GRPO's whole budget; missing: never reached).
    """
    metrics = {name: [run_metrics(run) for run in variant_runs] for name, variant_runs in runs.items()}
    grpo_final = statistics.fmean(m["heldout_greedy_accuracy"] for m in metrics["grpo"])
    grpo_budget = statistics.fmean(m["rollouts_total"] for m in metrics["grpo"])
    variants: dict[str, Any] = {}
    for name, variant_runs in runs.items():
        per_seed = metrics[name]
        out: dict[str, Any] = {}
        for key in per_seed[0]:
            values = [m[key] for m in per_seed]
            if key == "rollouts_by_rank_quarter_last_epoch":
                out[key] = [statistics.fmean(v[i] for v in values) for i in range(RANK_BINS)]
            else:
                out[key] = mean_ci95(values)
        reached = [rollouts_to_reach(run, grpo_final) for run in variant_runs]
        fractions = [r / grpo_budget for r in reached if r is not None]
        out["rollouts_to_grpo_final"] = {
            **(mean_ci95(fractions) if fractions else {"mean": None, "ci95": None}),
            "per_seed": [None if r is None else r / grpo_budget for r in reached],
            "reached": f"{len(fractions)}/{len(reached)}",
        }
        variants[name] = out
    return {
        "grpo_final_accuracy": grpo_final,
        "grpo_rollouts_per_run": grpo_budget,
        "controller_input_noise": target_noise(runs["grpo"]),
        "variants": variants,
    }


ROWS = (
    ("held-out greedy accuracy, after", "heldout_greedy_accuracy", "{:.3f}"),
    *((f"held-out pass@{k} at T=1, after", f"pass@{k}", "{:.3f}") for k in KS),
    ("all-wrong fraction, last epoch", "all_wrong_last_epoch", "{:.3f}"),
    ("zero-advantage fraction, whole run", "zero_advantage_fraction", "{:.3f}"),
    ("entropy, last epoch / first epoch - 1", "entropy_last_vs_first_epoch", "{:+.1%}"),
    ("final temperature", "final_temperature", "{:.3f}"),
    ("rollouts to GRPO's final accuracy / GRPO's budget", "rollouts_to_grpo_final", "{:.2f}"),
)


def _cell(metric: dict[str, Any], spec: str) -> str:
    """`mean [lo, hi]` (and `k/n reached` for the efficiency figure), or n/a."""
    if metric.get("mean") is None:
        return f"n/a ({metric['reached']} reached)" if "reached" in metric else "n/a"
    text = spec.format(metric["mean"])
    if metric.get("ci95"):
        text += " [" + ", ".join(spec.format(v) for v in metric["ci95"]) + "]"
    if "reached" in metric:
        text += f" ({metric['reached']} reached)"
    return text


def markdown(results: dict[str, Any], command: str) -> str:
    """The ablation as Markdown tables (means [95% interval] over seeds), with the command and the machine."""
    variants = results["variants"]
    names = list(variants)
    table = markdown_table(
        ["metric", *(LABELS[n] for n in names)],
        [[label, *(_cell(variants[n][key], spec) for n in names)] for label, key, spec in ROWS],
    )
    profile = markdown_table(
        ["variant", *(f"ranks {b / RANK_BINS:.2f}-{(b + 1) / RANK_BINS:.2f}" for b in range(RANK_BINS))],
        [[LABELS[n], *(f"{v:.2f}" for v in variants[n]["rollouts_by_rank_quarter_last_epoch"])] for n in names],
    )
    base = results.get("base_policy") or {}
    lines = [
        "# The ablation at equal budget (embedded default)",
        "",
        f"Command: `{command}`  ",
        f"Seeds: {results['seeds']}; config: `{' '.join(results['config'])}`; {results['machine']}; "
        f"{results['date']}; {results['bench_wall_s'] / 60:.0f} min in all.",
        "",
        f"Means over seeds with 95% Student-t intervals (per-seed values in ablation.json). GRPO's final held-out "
        f"greedy accuracy (the efficiency figure's target): {results['grpo_final_accuracy']:.3f}, reached after "
        f"{results['grpo_rollouts_per_run']:.0f} rollouts.",
        "",
        *table,
        "",
        "Mean rollouts per question by its difficulty rank when allocated (0: easiest), last epoch:",
        "",
        *profile,
        "",
    ]
    if base:
        lines += [
            "Base policy before training (seed "
            f"{results['seeds'][0]}): greedy {base['accuracy']:.3f}, "
            + ", ".join(f"pass@{k} {base[f'sampled/all/pass@{k}']:.3f}" for k in KS)
            + ".",
            "",
        ]
    noise = results["controller_input_noise"]
    errors = noise["target_relative_rms_error"]
    lines += [
        "Controller input (GRPO's first epoch, T = 1): one step's entropy is off its epoch mean by "
        f"{noise['per_step_relative_std']:.1%} (RMS); a target fixed from "
        + ", ".join(f"{k} step{'s' if k != '1' else ''} is off by {v:.1%}" for k, v in errors.items())
        + ".",
        "",
    ]
    lines += ["Overlay of the first seed's runs: [ablation_report.html](ablation_report.html).", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run every (seed, variant) pair, write the results and return them.

    Means and 95% Student-t intervals over seeds go to `ablation.json` and `ablation.md` (under `--out`,
    `bench/results/`); the first seed's runs are overlaid in `ablation_report.html`; the runs themselves go to
    `runs/ablation/` (`--runs`, not committed).
    """
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    grid_arguments(parser, list(VARIANTS), Path("runs/ablation"))
    args = parser.parse_args(argv)
    if "grpo" not in args.variants:
        parser.error("--variants must include grpo (the efficiency figure's reference)")
    keep_ray_on_loopback()  # before Ray is imported

    from reporting.report import load_run, write_report

    started = time.perf_counter()
    config = [*ABLATION_CONFIG, *args.overrides]
    run_dirs = train_grid(
        args.runs,
        args.seeds,
        {name: [*config, *VARIANTS[name]] for name in args.variants},
        reuse=args.reuse,
        first_only=["eval.sample_before=true"],  # the base policy's pass@k, once
    )

    runs = {name: [load_run(d) for d in dirs] for name, dirs in run_dirs.items()}
    results: dict[str, Any] = summarize(runs)
    for variant in results["variants"].values():
        variant["seeds"] = args.seeds
    results["base_policy"] = runs[args.variants[0]][0].heldout_before
    results["seeds"] = args.seeds
    results["config"] = config
    results["variant_overrides"] = {name: VARIANTS[name] for name in args.variants}
    results["machine"] = machine_line()
    results["date"] = time.strftime("%Y-%m-%d")
    results["bench_wall_s"] = time.perf_counter() - started
    command = ("python -m bench.ablation " + " ".join(sys.argv[1:] if argv is None else argv)).strip()
    results["command"] = command
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ablation.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
    (args.out / "ablation.md").write_text(markdown(results, command), encoding="utf-8")
    write_report([dirs[0] for dirs in run_dirs.values()], out=args.out / "ablation_report.html")
    print(markdown(results, command))
    return results


if __name__ == "__main__":
    main()
