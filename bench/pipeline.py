"""Generation one step ahead of training against the synchronous loop, on the embedded default.

    python -m bench.pipeline                        # seeds 0 and 1, max_staleness 0 and 1, the demo's config
    python -m bench.pipeline --seeds 0 -- train.max_steps=20

Every run is the demo's configuration (E3, 3 epochs, held-out accuracy every 10 steps) at the same budget; the
runs at `train.max_staleness=1` add the TIS correction (`learner.off_policy_correction=tis`), as the GPU recipes
do. One core runs the rollout worker and one the learner (`Pinner`); the scheduler, the reward scorer and this
driver are left unpinned (they mostly wait).

Measures step time and its phases (`timing`, `summarize`) and quality at equal budget (`quality`); writes
`pipeline.json` and `pipeline.md` to the output folder, the runs to `runs/pipeline/` (not committed). At the
paper's scale (`MODES`) a step one ahead is bounded by generation alone; the design: docs/generation-ahead.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

from bench.ab import aggregate, run_metrics
from bench.machine import machine_line
from bench.runs import train_run
from cluster.environment import keep_ray_on_loopback
from reporting.markdown import markdown_table

RESULTS = Path(__file__).resolve().parent / "results"
MODES = {"sync": 0, "async": 1}
"""Result key -> train.max_staleness.

Paper scale (1.5B/7B, 512 responses of up to 6,144 tokens, 2+2 or 4+4 GPUs): one step ahead holds one step's
rollouts in the scheduler (3.1M tokens: about 38 MB with their float32 log-probs) and moves no more bytes per step
than the synchronous loop (the same weight sync to each worker); a copy of the policy is gathered only on steps
that checkpoint (docs/generation-ahead.md). Generation of 512 x 6,144-token responses dominates a paper step, so
at staleness 1 a step is bounded by generation, not by generation + training.
"""
PINS = (("ray::RolloutWorker", 0), ("ray::Learner", 1))
"""Process title of an actor -> the CPU its processes (and their children) are pinned to."""


def _children(pid: int) -> list[int]:
    """The child processes of `pid` (from /proc/<pid>/task/*/children)."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


def _title(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def pin_once(root: int) -> dict[int, int]:
    """Pin every thread of every process under `root` that is (or descends from) a rollout worker or learner
    actor to its CPU (`PINS`); returns {pid: cpu} of the processes pinned."""
    pinned: dict[int, int] = {}
    stack = [(root, None)]
    while stack:
        pid, cpu = stack.pop()
        title = _title(pid)
        cpu = next((c for name, c in PINS if title.startswith(name)), cpu)
        if cpu is not None and cpu < (os.cpu_count() or 1):
            for task in Path(f"/proc/{pid}/task").glob("*"):
                try:
                    os.sched_setaffinity(int(task.name), {cpu})
                except OSError:
                    continue
            pinned[pid] = cpu
        stack += [(child, cpu) for child in _children(pid)]
    return pinned


class Pinner(threading.Thread):
    """Re-pins the actors' processes every `period_s` seconds until `stop()`; `seen` holds every pid pinned.

    One core runs the rollout worker and one the learner: this thread pins every process of the rollout worker
    actor (and its children) to CPU 0 and every process of the learner actor to CPU 1 with `os.sched_setaffinity`,
    for each of their threads (`pin_once`), as soon as they appear and again every second (threads started later
    inherit the mask). Only processes descended from this one are touched, so other Ray sessions on the machine
    are not.
    """

    def __init__(self, period_s: float = 1.0) -> None:
        super().__init__(daemon=True)
        self.period_s, self.seen, self._stop_event = period_s, {}, threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.seen.update(pin_once(os.getpid()))
            self._stop_event.wait(self.period_s)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


def timing(run_dir: Path) -> dict[str, float]:
    """Mean seconds per step after the first: the step, and its generate, train and wait phases."""
    from reporting.report import load_run

    steps = load_run(run_dir).steps[1:]
    mean = lambda phase: statistics.fmean(r.timing.get(phase, 0.0) for r in steps)  # noqa: E731
    return {
        "step_s": statistics.fmean(r.step_seconds for r in steps),
        "generate_phase_s": mean("generate"),
        "train_s": mean("train"),
        "wait_ahead_s": mean("wait_ahead"),
        "steps": len(steps),
    }


def quality(run_dir: Path) -> dict[str, Any]:
    """Held-out greedy accuracy after training, all-wrong fraction and entropy against target in the last epoch."""
    m = run_metrics(run_dir)
    return {
        "heldout_greedy_accuracy": m["heldout_greedy_accuracy"],
        "all_wrong_last_epoch": m["all_wrong_last_epoch"],
        "entropy_last_epoch": m["entropy_last_epoch"],
        "entropy_off_target_last_epoch": m["entropy_off_target_last_epoch"],
        "entropy_mean_off_target_last_epoch": m["entropy_mean_off_target_last_epoch"],
        "wall_s": m["wall_s"],
    }


def summarize(timings: dict[str, dict[str, float]], qualities: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """The results: timing per mode (the async generation time taken from the sync run), the ratios, and the
    quality per seed with its mean.

    Timing (means over steps after the first, seed 0): step time; the synchronous run's generate and train phases;
    the pipelined run's train phase, and its generation time taken as the synchronous run's (the same requests on
    the same pinned core: the pipelined run hides it behind training, so its own phases cannot show it); and
    `step / max(generate, train)`. Quality (each seed, and their mean): held-out greedy accuracy after training,
    all-wrong fraction in the last epoch, and the entropy against its target in the last epoch.
    """
    sync, ahead = timings["sync"], timings["async"]
    out: dict[str, Any] = {
        "sync": {"step_s": sync["step_s"], "generate_s": sync["generate_phase_s"], "train_s": sync["train_s"]},
        "async": {
            "step_s": ahead["step_s"],
            "generate_s": sync["generate_phase_s"],  # the same generation, hidden behind training (see docstring)
            "train_s": ahead["train_s"],
            "generate_wait_s": ahead["generate_phase_s"] + ahead["wait_ahead_s"],
        },
    }
    for mode in MODES:
        t = out[mode]
        t["step_over_max_generate_train"] = t["step_s"] / max(t["generate_s"], t["train_s"])
    out["speedup"] = out["sync"]["step_s"] / out["async"]["step_s"]
    out["quality"] = {mode: aggregate(per_seed) for mode, per_seed in qualities.items()}
    q = out["quality"]
    out["targets"] = {
        "step_within_1.1x_of_max": out["async"]["step_over_max_generate_train"] <= 1.1,
        "speedup_at_least_1.3x": out["speedup"] >= 1.3,
        "accuracy_within_0.01": abs(q["async"]["heldout_greedy_accuracy"] - q["sync"]["heldout_greedy_accuracy"])
        <= 0.01,
        "entropy_within_10pct_of_target": q["async"]["entropy_off_target_last_epoch"] <= 0.10,
        "mean_entropy_within_10pct_of_target": q["async"]["entropy_mean_off_target_last_epoch"] <= 0.10,
    }
    return out


def markdown(results: dict[str, Any], command: str) -> str:
    """The results as Markdown tables, with the command and the machine."""
    t, q = results, results["quality"]
    rows = [
        [mode, f"{t[mode]['step_s']:.2f}", f"{t[mode]['generate_s']:.2f}", f"{t[mode]['train_s']:.2f}",
         f"{t[mode]['step_over_max_generate_train']:.2f}"]
        for mode in MODES
    ]  # fmt: skip
    quality_rows = [
        [label, *(f"{q[mode][key]:.3f}" for mode in MODES)]
        for label, key in (
            ("held-out greedy accuracy after", "heldout_greedy_accuracy"),
            ("all-wrong fraction, last epoch", "all_wrong_last_epoch"),
            ("entropy, last epoch (nats)", "entropy_last_epoch"),
            ("entropy off its target, last epoch (mean abs(H/H* - 1))", "entropy_off_target_last_epoch"),
            ("last epoch's mean entropy off its mean target", "entropy_mean_off_target_last_epoch"),
        )
    ]
    return "\n".join(
        [
            "# Generation one step ahead of training (embedded default)",
            "",
            f"Command: `{command}`  ",
            f"{results['machine']}; rollout worker pinned to CPU 0, learner to CPU 1 (os.sched_setaffinity on "
            f"every thread of their processes); seeds {results['seeds']}; {results['date']}.",
            "",
            "Seconds per step, means over steps after the first (seed 0). At max_staleness 1 the generation "
            "runs behind training; its time is the synchronous run's.",
            "",
            *markdown_table(["max_staleness", "step", "generate", "train", "step / max(generate, train)"], rows),
            "",
            f"Speed-up of a step: {results['speedup']:.2f}x. Targets: {results['targets']}.",
            "",
            "Quality at equal budget, means over seeds (per seed in pipeline.json):",
            "",
            *markdown_table(["metric", "max_staleness 0", "max_staleness 1 + TIS"], quality_rows),
            "",
        ]
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run every (seed, mode) pair with the actors pinned, write the results and return them.

    Writes `pipeline.json` and `pipeline.md` to the output folder (`--out`); the runs go to `runs/pipeline/`
    (`--runs`, not committed).
    """
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--runs", type=Path, default=Path("runs/pipeline"))
    parser.add_argument("overrides", nargs="*", help="config overrides for every run (after --)")
    args = parser.parse_args(argv)
    keep_ray_on_loopback()  # before Ray is imported

    from cluster.build import ray_session
    from core.config import RayConfig

    started = time.perf_counter()
    pinner = Pinner()
    pinner.start()
    runs: dict[tuple[str, int], Path] = {}
    try:
        with ray_session(RayConfig(), needed_cpus=4):
            for seed in args.seeds:
                for mode, staleness in MODES.items():
                    correction = "tis" if staleness else "none"
                    overrides = [
                        f"train.max_staleness={staleness}",
                        f"learner.off_policy_correction={correction}",
                        "rollout.num_cpus=1",
                        "learner.num_cpus=1",
                        *args.overrides,
                    ]
                    runs[mode, seed] = train_run(args.runs, f"{mode}-seed{seed}", seed, overrides)
    finally:
        pinner.stop()
    first = args.seeds[0]
    results = summarize(
        {mode: timing(runs[mode, first]) for mode in MODES},
        {mode: [{"seed": s, **quality(runs[mode, s])} for s in args.seeds] for mode in MODES},
    )
    results.update(
        seeds=args.seeds,
        overrides=args.overrides,
        machine=machine_line(),
        date=time.strftime("%Y-%m-%d"),
        pinned=sorted(set(pinner.seen.values())),
        bench_wall_s=time.perf_counter() - started,
    )
    command = ("python -m bench.pipeline " + " ".join(sys.argv[1:] if argv is None else argv)).strip()
    results["command"] = command
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "pipeline.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
    (args.out / "pipeline.md").write_text(markdown(results, command), encoding="utf-8")
    print(markdown(results, command))
    return results


if __name__ == "__main__":
    main()
