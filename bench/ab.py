"""E3 against GRPO at equal budget on the embedded default.

    python -m bench.ab                        # 2 seeds x {grpo, e3}, the demo's config, 3 epochs
    python -m bench.ab --seeds 0 1 2 -- train.epochs=4 budget.n=6

Both algorithms see the same questions in the same order (same sampler seed) and generate the same number of
responses every step (n * B); GRPO gives every question n and samples at a fixed temperature, E3 moves the
budget towards hard questions once the bounds widen and adapts the temperature. Writes `ab.json`, `ab.md` and
an overlay report (`ab_report.html`) to the output folder; the runs themselves go to `runs/ab/` (not committed).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from bench.machine import machine_line
from bench.runs import RESULTS, SYNCHRONOUS, train_run
from cluster.environment import keep_ray_on_loopback
from reporting.markdown import markdown_table

ALGOS = ("grpo", "e3")


def run_metrics(run_dir: Path) -> dict[str, Any]:
    """The comparison's numbers for one finished run, from its metrics.jsonl and summary.json."""
    from reporting.report import load_run

    run = load_run(run_dir)
    steps, summary = run.steps, run.summary or {}
    last = [r for r in steps if r.epoch == steps[-1].epoch]
    targets = [r for r in last if r.target_entropy is not None]
    after = summary["heldout_after"]
    return {
        "all_wrong_last_epoch": statistics.fmean(r.all_wrong_fraction for r in last),
        "heldout_greedy_accuracy": after["accuracy"],
        "heldout_mean_at_8": after.get("sampled/all/mean@8"),
        "heldout_greedy_accuracy_before": summary["heldout_before"]["accuracy"],
        "entropy_first_step": steps[0].entropy,
        "entropy_last_epoch": statistics.fmean(r.entropy for r in last),
        "entropy_relative_drift": statistics.fmean(r.entropy for r in last) / steps[0].entropy - 1,
        "entropy_off_target_last_epoch": (
            statistics.fmean(abs(r.entropy / r.target_entropy - 1) for r in targets) if targets else None
        ),
        "entropy_mean_off_target_last_epoch": (
            abs(statistics.fmean(r.entropy for r in targets) / statistics.fmean(r.target_entropy for r in targets) - 1)
            if targets
            else None
        ),
        "final_temperature": summary["final_temperature"],
        "rollouts_total": sum(r.rollouts_total for r in steps),
        "steps": len(steps),
        "wall_s": summary["wall_s"],
    }


def aggregate(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean over seeds of every numeric field, with the per-seed values kept beside it."""
    out: dict[str, Any] = {}
    for key in per_seed[0]:
        values = [r[key] for r in per_seed]
        if all(isinstance(v, int | float) for v in values):
            out[key] = statistics.fmean(values)
    out["per_seed"] = per_seed
    return out


def markdown(results: dict[str, Any], command: str) -> str:
    """The comparison as a Markdown table, with the command that produced it."""
    rows = [
        ("all-wrong fraction, last epoch (lower is better)", "all_wrong_last_epoch", "{:.3f}"),
        ("held-out greedy accuracy, after", "heldout_greedy_accuracy", "{:.3f}"),
        ("held-out greedy accuracy, before", "heldout_greedy_accuracy_before", "{:.3f}"),
        ("held-out mean@8 at T=1, after", "heldout_mean_at_8", "{:.3f}"),
        ("entropy, first step (nats)", "entropy_first_step", "{:.3f}"),
        ("entropy, last-epoch mean (nats)", "entropy_last_epoch", "{:.3f}"),
        ("entropy relative drift (last epoch / first step - 1)", "entropy_relative_drift", "{:+.1%}"),
        ("entropy off its target per step, last epoch (mean abs(H/H* - 1))", "entropy_off_target_last_epoch", "{:.1%}"),
        (
            "last epoch's mean entropy off its mean target (abs(mean H / mean H* - 1))",
            "entropy_mean_off_target_last_epoch",
            "{:.1%}",
        ),
        ("final temperature", "final_temperature", "{:.3f}"),
        ("rollouts generated in total", "rollouts_total", "{:.0f}"),
        ("wall time per run (s)", "wall_s", "{:.0f}"),
    ]
    fmt = lambda spec, v: "n/a" if v is None else spec.format(v)  # noqa: E731
    lines = [
        "# E3 against GRPO at equal budget (embedded default)",
        "",
        f"Command: `{command}`  ",
        f"Seeds: {results['seeds']}; {results['machine']}; {results['date']}.",
        "",
        "Means over seeds (per-seed values in ab.json).",
        "",
        *markdown_table(
            ["metric", "GRPO", "E3"],
            [
                [label, fmt(spec, results["grpo"].get(key)), fmt(spec, results["e3"].get(key))]
                for label, key, spec in rows
            ],
        ),
    ]
    lines += ["", "Overlay of the first seed's runs: [ab_report.html](ab_report.html).", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run every (seed, algorithm) pair, write the results and return them."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--runs", type=Path, default=Path("runs/ab"))
    parser.add_argument("overrides", nargs="*", help="config overrides for both algorithms (after --)")
    args = parser.parse_args(argv)
    keep_ray_on_loopback()  # before Ray is imported

    from cluster.build import ray_session
    from core.config import RayConfig
    from reporting.report import write_report

    started = time.perf_counter()
    run_dirs: dict[tuple[str, int], Path] = {}
    with ray_session(RayConfig(), needed_cpus=4):
        for seed in args.seeds:
            for algo in ALGOS:
                overrides = [f"algo={algo}", *SYNCHRONOUS, *args.overrides]  # the loop its committed results ran
                run_dirs[algo, seed] = train_run(args.runs, f"{algo}-seed{seed}", seed, overrides)

    results: dict[str, Any] = {
        algo: aggregate([run_metrics(run_dirs[algo, seed]) for seed in args.seeds]) for algo in ALGOS
    }
    results["seeds"] = args.seeds
    results["overrides"] = args.overrides
    results["machine"] = machine_line()
    results["date"] = time.strftime("%Y-%m-%d")
    results["bench_wall_s"] = time.perf_counter() - started
    command = "python -m bench.ab " + " ".join(sys.argv[1:] if argv is None else argv)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ab.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
    (args.out / "ab.md").write_text(markdown(results, command.strip()), encoding="utf-8")
    first = args.seeds[0]
    write_report([run_dirs["e3", first], run_dirs["grpo", first]], out=args.out / "ab_report.html")
    print(markdown(results, command.strip()))
    return results


if __name__ == "__main__":
    main()
