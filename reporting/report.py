"""The run report: one self-contained HTML file whose plots show what E3 did during one or more training runs.

`write_report([run_dir, ...])` reads each run's `metrics.jsonl` (and `summary.json` / `config.yaml` when
present) and writes `report.html` with five PNG plots embedded as base64 data URIs, so the file can be mailed
or opened anywhere without other assets. The same PNGs are also written to a folder next to the HTML
(`report/` for the default `report.html`). Several runs (say E3 and its GRPO baseline) are overlaid on the
same axes, one colour per run, with a legend naming each run as `run_name (algo)`.

The accuracy plot also draws each run's held-out greedy accuracy against the number of training steps done: the
base policy at 0 (`summary.json`'s `heldout_before`, or `heldout_before.json` while the run is still going), the
`heldout/accuracy` of every step line that has it (`eval.every_steps`; step s's line holds the policy after s + 1
steps) and `heldout_after` at the end.

A run still in progress is fine: a partial last line of `metrics.jsonl` is skipped, a missing `summary.json`
leaves the held-out numbers as "n/a", and null values (non-finite floats, a target entropy not fixed yet) and
missing keys (a timing phase that was not recorded) become gaps in the plots.

    python -m reporting runs/e3-demo runs/grpo-demo [--out FILE]
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from core.step_record import StepRecord, step_phases

log = logging.getLogger(__name__)

OTHER = "other"
"""Step time not covered by any timed phase: the scheduler's own overhead."""

MAX_EPOCH_PANELS = 8
"""At most this many epochs get a panel in the rollouts-against-rank plot (spread evenly, ends kept)."""

_DPI = 110


@dataclass
class Run:
    """One training run as read from its folder: the logged step records, in order, and the summary if it exists."""

    run_dir: Path
    name: str
    algo: str
    steps: list[StepRecord]
    summary: dict[str, Any] | None = None
    skipped_partial_line: bool = False
    heldout_before: dict[str, Any] | None = None
    """The held-out evaluation before training (from `summary.json`, else `heldout_before.json`), if known."""

    @property
    def label(self) -> str:
        """How the run is named in legends and table headings: `run_name (algo)`."""
        return f"{self.name} ({self.algo})"

    def values(self, of: Callable[[StepRecord], float | None]) -> np.ndarray:
        """`of(record)` for every logged step as floats (`values(lambda r: r.entropy)`), NaN where it is None."""
        return np.array([_as_float(of(s)) for s in self.steps], dtype=np.float64)

    def step_numbers(self) -> np.ndarray:
        """The `step` of each logged step."""
        return np.array([s.step for s in self.steps], dtype=np.float64)

    def epochs(self) -> list[int]:
        """The distinct epochs logged, ascending."""
        return sorted({s.epoch for s in self.steps})

    def epoch_ends(self) -> list[float]:
        """The step numbers at which an epoch ended."""
        return [float(s.step) for s in self.steps if s.end_of_epoch]

    def heldout_during(self) -> list[tuple[float, float]]:
        """(steps done, held-out greedy accuracy) of every step that evaluated: the record of step s holds the
        policy after s + 1 steps."""
        points = [(float(s.step) + 1, s.heldout_accuracy) for s in self.steps]
        return [(x, y) for x, y in points if math.isfinite(y)]

    def heldout_curve(self) -> tuple[np.ndarray, np.ndarray]:
        """Held-out greedy accuracy against the number of training steps done, in step order: before training at
        0, each evaluating step's accuracy at its step + 1, and after training at the summary's `steps` (left
        out when a step line already gave that point). Points without a finite value are dropped."""
        points: dict[float, float] = {}
        before = _as_float((self.heldout_before or {}).get("accuracy"))
        if math.isfinite(before):
            points[0.0] = before
        points.update(self.heldout_during())
        summary = self.summary or {}
        after, done = _as_float((summary.get("heldout_after") or {}).get("accuracy")), _as_float(summary.get("steps"))
        if math.isfinite(after) and math.isfinite(done):
            points.setdefault(done, after)
        xs = sorted(points)
        return np.array(xs, dtype=np.float64), np.array([points[x] for x in xs], dtype=np.float64)


def _as_float(value: Any) -> float:
    """`value` as a float; None, booleans, strings and lists become NaN."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return math.nan


# -- reading runs --------------------------------------------------------------------------------------------


def read_metrics(path: Path) -> tuple[list[StepRecord], bool]:
    """Read a `metrics.jsonl` file; return its step records and whether a partial last line was skipped.

    Only the last non-empty line may be unreadable (a run writing it right now); anywhere else a line that is
    not a JSON object, or not a step record, raises ValueError naming the file and line number.
    """
    lines = path.read_text(encoding="utf-8").splitlines()
    numbered = [(i + 1, line) for i, line in enumerate(lines) if line.strip()]
    steps: list[StepRecord] = []
    for position, (line_no, line) in enumerate(numbered):
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            if position == len(numbered) - 1:
                log.warning("%s:%d: skipping a partial last line (%s)", path, line_no, err.msg)
                return steps, True
            raise ValueError(f"{path}:{line_no}: not valid JSON ({err.msg}): {line[:80]!r}") from err
        if not isinstance(obj, dict):
            raise ValueError(f"{path}:{line_no}: expected a JSON object per line, got {type(obj).__name__}")
        try:
            steps.append(StepRecord.from_log(obj))
        except ValueError as err:
            raise ValueError(f"{path}:{line_no}: {err}") from err
    return steps, False


def _read_config(run_dir: Path) -> dict[str, Any]:
    """The run's `config.yaml` as a dict, or {} when it is missing or unreadable."""
    path = run_dir / "config.yaml"
    if not path.is_file():
        return {}
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        log.warning("%s: unreadable (%s); taking the run name from the folder", path, err)
        return {}
    return loaded if isinstance(loaded, dict) else {}


def _read_summary(run_dir: Path) -> dict[str, Any] | None:
    """The run's `summary.json`, or None when it is missing or not (yet) a complete JSON object."""
    return _read_json_object(run_dir / "summary.json")


def _read_json_object(path: Path) -> dict[str, Any] | None:
    """A JSON object file of the run, or None when it is missing or not (yet) a complete JSON object."""
    if not path.is_file():
        return None
    try:
        loaded = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        log.warning("%s: unreadable (%s); read as missing", path, err.msg)
        return None
    return loaded if isinstance(loaded, dict) else None


def load_run(run_dir: Path) -> Run:
    """Read one run folder; `metrics.jsonl` must exist, `summary.json` and `config.yaml` are optional.

    The run's name and algo come from `summary.json`, else `config.yaml`, else the folder name and "?".
    """
    run_dir = Path(run_dir)
    metrics_path = run_dir / "metrics.jsonl"
    if not metrics_path.is_file():
        raise FileNotFoundError(f"{metrics_path}: no metrics.jsonl in run folder {run_dir}")
    steps, partial = read_metrics(metrics_path)
    summary = _read_summary(run_dir)
    config = _read_config(run_dir)
    known = {**config, **(summary or {})}
    before = (summary or {}).get("heldout_before")
    if before is None:
        before = _read_json_object(run_dir / "heldout_before.json")
    return Run(
        run_dir=run_dir,
        name=str(known.get("run_name") or run_dir.name),
        algo=str(known.get("algo") or "?"),
        steps=steps,
        summary=summary,
        skipped_partial_line=partial,
        heldout_before=before if isinstance(before, dict) else None,
    )


# -- numbers -------------------------------------------------------------------------------------------------


def moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over the last `window` values, ignoring NaNs (NaN where the window holds none)."""
    if window < 1:
        raise ValueError(f"moving_average: window={window} must be >= 1")
    valid = np.isfinite(values)
    sums = np.concatenate([[0.0], np.cumsum(np.where(valid, values, 0.0))])
    counts = np.concatenate([[0], np.cumsum(valid)])
    end = np.arange(1, len(values) + 1)
    start = np.maximum(end - window, 0)
    n = counts[end] - counts[start]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, (sums[end] - sums[start]) / n, np.nan)


def smoothing_window(n_steps: int) -> int:
    """The moving-average window for a run of `n_steps` steps: about a tenth of the run, 1 to 25 steps."""
    return max(1, min(25, n_steps // 10))


def mean_phase_seconds(run: Run) -> dict[str, float]:
    """Mean seconds per step of every phase the run's steps timed, plus `other` (step time no phase covers,
    never below 0). A phase missing from some steps (the periodic checkpoint) is averaged over the steps that
    have it.
    """
    means = {}
    for phase in step_phases(run.steps):
        values = run.values(lambda r, phase=phase: r.step_phases.get(phase))
        means[phase] = float(np.nanmean(values)) if np.isfinite(values).any() else 0.0
    step = run.values(lambda r: r.step_seconds)
    step_mean = float(np.nanmean(step)) if np.isfinite(step).any() else sum(means.values())
    means[OTHER] = max(0.0, step_mean - sum(means.values()))
    return means


def bin_index(x: np.ndarray, bins: int) -> np.ndarray:
    """The index of each `x` in [0, 1] among `bins` equal bins: [0, 1/bins) is 0, ..., the last bin holds 1.0."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    return np.clip(np.digitize(x, edges) - 1, 0, bins - 1)


def binned_means(x: np.ndarray, y: np.ndarray, bins: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Split points into `bins` equal bins of `x` over [0, 1); each non-empty bin's mean x and mean y."""
    which = bin_index(x, bins)
    filled = [b for b in range(bins) if (which == b).any()]
    return (
        np.array([x[which == b].mean() for b in filled], dtype=np.float64),
        np.array([y[which == b].mean() for b in filled], dtype=np.float64),
    )


def allocation_of_epoch(run: Run, epoch: int) -> tuple[np.ndarray, np.ndarray]:
    """The (difficulty rank, rollouts) pairs of every question sampled in `epoch`; null values dropped."""
    ranks: list[float] = []
    counts: list[float] = []
    for s in run.steps:
        if s.epoch == epoch:
            ranks.extend(s.question_ranks)
            counts.extend(s.rollouts_per_question)
    x, y = np.array(ranks, dtype=np.float64), np.array(counts, dtype=np.float64)
    keep = np.isfinite(x) & np.isfinite(y)
    return x[keep], y[keep]


def summary_rows(run: Run) -> list[tuple[str, str]]:
    """The (name, value) rows of a run's table: what a reader compares between runs, as display strings."""
    summary = run.summary or {}
    before = (run.heldout_before or {}).get("accuracy")
    after = (summary.get("heldout_after") or {}).get("accuracy")
    final_t = summary.get("final_temperature")
    if final_t is None and run.steps:
        final_t = run.steps[-1].next_temperature
    epochs = run.epochs()
    last_epoch_wrong = math.nan
    if epochs:
        wrong = [s.all_wrong_fraction for s in run.steps if s.epoch == epochs[-1]]
        last_epoch_wrong = float(np.nanmean(wrong)) if np.isfinite(wrong).any() else math.nan
    phases = mean_phase_seconds(run) if run.steps else {}
    total = sum(phases.values())
    shares = {p: 100 * s / total for p, s in phases.items() if total > 0 and s > 0}
    breakdown = ", ".join(f"{p} {share:.0f}%" if share >= 1 else f"{p} <1%" for p, share in shares.items())
    status = "finished" if run.summary is not None else "no summary.json (in progress or stopped)"
    during = run.heldout_during()
    best = max(during, key=lambda point: point[1]) if during else None
    return [
        ("status", status),
        ("steps logged", f"{len(run.steps)}" + (f" of {summary['steps']}" if "steps" in summary else "")),
        ("held-out accuracy before / after", f"{_fmt(before, '.3f')} / {_fmt(after, '.3f')}"),
        (
            "held-out accuracy during training",
            f"{len(during)} evaluations, best {best[1]:.3f} after {best[0]:.0f} steps" if best else "n/a",
        ),
        ("final temperature", _fmt(final_t, ".3f")),
        (
            f"mean all-wrong fraction, last epoch ({epochs[-1] if epochs else 'n/a'})",
            _fmt(last_epoch_wrong, ".3f"),
        ),
        ("wall time", _fmt(summary.get("wall_s"), ".1f", " s")),
        ("mean step time", _fmt(total if phases else None, ".2f", " s")),
        ("step time breakdown", breakdown or "n/a"),
    ]


def _fmt(value: Any, spec: str, unit: str = "") -> str:
    """A number formatted with `spec` and `unit`, or "n/a" when missing or not finite."""
    number = _as_float(value)
    return f"{number:{spec}}{unit}" if math.isfinite(number) else "n/a"


# -- plots ---------------------------------------------------------------------------------------------------


def _colour(index: int) -> str:
    return f"C{index % 10}"


def _new_figure(width: float = 9.0, height: float = 4.5) -> Figure:
    return Figure(figsize=(width, height), dpi=_DPI, layout="constrained")


def _mark_epochs(ax: Axes, runs: Sequence[Run]) -> None:
    """Faint vertical lines where the first run's epochs end (when E3 recomputes ranks and widens budgets)."""
    for i, x in enumerate(runs[0].epoch_ends() if runs else []):
        ax.axvline(x, color="0.6", linestyle=":", linewidth=0.8, label="epoch end" if i == 0 else None)


def _step_axis(ax: Axes, runs: Sequence[Run]) -> None:
    """Integer step ticks, and an axis a few steps wide even when only one step was logged."""
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    steps = np.concatenate([run.step_numbers() for run in runs]) if runs else np.array([])
    if len(steps) and np.ptp(steps) < 4:
        ax.set_xlim(steps.min() - 1, steps.min() + 4)


def _line(ax: Axes, x: np.ndarray, y: np.ndarray, **kwargs: Any) -> None:
    """Plot a line, with markers when it has too few points to be seen as a line."""
    if np.isfinite(y).sum() <= 2:
        kwargs.setdefault("marker", "o")
    ax.plot(x, y, **kwargs)


def _finish(ax: Axes, title: str, xlabel: str, ylabel: str, legend: bool = True) -> None:
    """Title, labels and grid; a legend if asked, or a "no data" note when nothing was drawn."""
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        if legend:
            ax.legend(fontsize="small")
    else:
        ax.text(0.5, 0.5, "no data logged", transform=ax.transAxes, ha="center", va="center", color="0.5")


def plot_entropy(runs: Sequence[Run]) -> Figure:
    """Policy entropy per step (solid) against the controller's target entropy (dashed), and the mean over the
    20% highest-entropy tokens (dotted, where logged), per run."""
    fig = _new_figure()
    ax = fig.add_subplot()
    for i, run in enumerate(runs):
        steps = run.step_numbers()
        _line(ax, steps, run.values(lambda r: r.entropy), color=_colour(i), label=f"{run.label}: entropy")
        target = run.values(lambda r: r.target_entropy)
        if np.isfinite(target).any():
            _line(ax, steps, target, color=_colour(i), linestyle="--", label=f"{run.label}: target")
        top = run.values(lambda r: r.learner.get("entropy_top20"))
        if np.isfinite(top).any():
            _line(ax, steps, top, color=_colour(i), linestyle=":", label=f"{run.label}: top-20% tokens")
    _mark_epochs(ax, runs)
    _step_axis(ax, runs)
    _finish(ax, "Entropy against target entropy", "training step", "token entropy of tempered policy (nats)")
    return fig


def plot_temperature(runs: Sequence[Run]) -> Figure:
    """The sampling temperature each step's rollouts used, per run."""
    fig = _new_figure()
    ax = fig.add_subplot()
    for i, run in enumerate(runs):
        _line(ax, run.step_numbers(), run.values(lambda r: r.temperature), color=_colour(i), label=run.label)
    _mark_epochs(ax, runs)
    ax.ticklabel_format(axis="y", useOffset=False)
    _step_axis(ax, runs)
    _finish(ax, "Rollout temperature", "training step", "temperature T (dimensionless)")
    return fig


def plot_accuracy(runs: Sequence[Run]) -> Figure:
    """Rollout accuracy and the all-wrong fraction per step: raw values faint, moving average solid; beside the
    rollout accuracy, each run's held-out greedy accuracy (dashed, a marker per evaluation)."""
    fig = _new_figure(11.0, 4.5)
    axes = fig.subplots(1, 2, sharex=True)
    panels = (
        (lambda r: r.accuracy, "Rollout and held-out accuracy", "fraction correct"),
        (lambda r: r.all_wrong_fraction, "Questions with every rollout wrong", "fraction of questions in batch"),
    )
    for panel, (ax, (of, title, ylabel)) in enumerate(zip(axes, panels, strict=True)):
        for i, run in enumerate(runs):
            steps, raw = run.step_numbers(), run.values(of)
            window = smoothing_window(len(raw))
            ax.plot(steps, raw, color=_colour(i), alpha=0.25, linewidth=0.8)
            _line(
                ax,
                steps,
                moving_average(raw, window),
                color=_colour(i),
                label=f"{run.label}, mean of {window}",
            )
            if panel == 0:
                x, y = run.heldout_curve()
                if len(x):
                    ax.plot(
                        x,
                        y,
                        color=_colour(i),
                        linestyle="--",
                        marker="o",
                        markersize=3,
                        label=f"{run.label}: held-out greedy",
                    )
        _mark_epochs(ax, runs)
        ax.set_ylim(-0.02, 1.02)
        _step_axis(ax, runs)
        _finish(ax, title, "training step", ylabel)
    return fig


def _epochs_to_show(runs: Sequence[Run]) -> list[int]:
    """The epochs that get a panel: all, or MAX_EPOCH_PANELS spread evenly, including first and last."""
    epochs = sorted({e for run in runs for e in run.epochs()})
    if len(epochs) <= MAX_EPOCH_PANELS:
        return epochs
    picks = np.linspace(0, len(epochs) - 1, MAX_EPOCH_PANELS).round().astype(int)
    return [epochs[i] for i in sorted(set(picks))]


def plot_allocation(runs: Sequence[Run]) -> Figure:
    """Rollouts given to each sampled question against its difficulty rank, one panel per epoch.

    Each question of each step is a faint dot (jittered up/down by less than one rollout so counts stay
    readable); the line joins the mean (rank, rollouts) of ten rank bins.
    """
    epochs = _epochs_to_show(runs)
    rows = max(1, math.ceil(len(epochs) / 4))
    cols = max(1, math.ceil(len(epochs) / rows))
    fig = _new_figure(3.2 * cols + 1.5, 3.2 * rows + 0.8)
    axes = fig.subplots(rows, cols, sharey=True, squeeze=False)
    jitter = np.random.default_rng(0)
    handles: dict[str, Any] = {}
    for index, epoch in enumerate(epochs):
        ax = axes.flat[index]
        for i, run in enumerate(runs):
            ranks, counts = allocation_of_epoch(run, epoch)
            if not len(ranks):
                continue
            jittered = counts + jitter.uniform(-0.2, 0.2, len(counts))
            ax.scatter(ranks, jittered, s=6, alpha=0.2, color=_colour(i))
            (handles[run.label],) = ax.plot(
                *binned_means(ranks, counts), color=_colour(i), marker="o", markersize=3, label=run.label
            )
        ax.set_xlim(-0.03, 1.03)
        ylabel = "rollouts per question" if index % cols == 0 else ""
        _finish(ax, f"epoch {epoch}", "difficulty rank (0 = easiest)", ylabel, legend=False)
    for ax in axes.flat[len(epochs) :]:
        ax.set_visible(False)
    if not epochs:
        _finish(axes.flat[0], "no epochs logged", "difficulty rank (0 = easiest)", "rollouts per question")
    if handles:
        fig.legend(handles.values(), handles.keys(), loc="outside right upper", fontsize="small")
    fig.suptitle("Rollouts allocated against difficulty rank (dots: questions; line: mean per rank bin)")
    return fig


def plot_staleness(runs: Sequence[Run]) -> Figure:
    """Generation ahead of training: the share of each step's samples that are 0, 1, ... versions old (left) and
    the importance ratio's mean and max (right), per run; runs of the synchronous loop log neither."""
    fig = _new_figure(11.0, 4.5)
    ages, ratios = fig.subplots(1, 2, sharex=True)
    for i, run in enumerate(runs):
        steps = run.step_numbers()
        oldest = max((len(r.staleness) for r in run.steps), default=0)
        for age in range(1, oldest):  # the share of samples at least `age` versions old (age 0 is the rest)
            share = run.values(lambda r, a=age: sum(r.staleness[a:]) / sum(r.staleness) if sum(r.staleness) else None)
            _line(ages, steps, share, color=_colour(i), linestyle=("-", "--", ":")[min(age - 1, 2)],
                  label=f"{run.label}: >= {age} old")  # fmt: skip
        for name, style in (("is_ratio_mean", "-"), ("is_ratio_max", "--")):
            values = run.values(lambda r, n=name: r.learner.get(n))
            if np.isfinite(values).any():
                _line(ratios, steps, values, color=_colour(i), linestyle=style, label=f"{run.label}: {name}")
    for ax in (ages, ratios):
        _mark_epochs(ax, runs)
        _step_axis(ax, runs)
    _finish(ages, "Samples by age", "training step", "share of the step's samples")
    _finish(ratios, "Importance ratio (old policy / sampler)", "training step", "ratio")
    return fig


def plot_step_time(runs: Sequence[Run]) -> Figure:
    """Mean seconds per step of each phase, one stacked bar per run; `other` is scheduler overhead."""
    fig = _new_figure(10.0, 1.6 + 0.7 * max(1, len(runs)))
    ax = fig.add_subplot()
    phases = step_phases(s for run in runs for s in run.steps)
    names = [*phases, OTHER]
    styles = {p: {"color": f"C{i % 10}"} for i, p in enumerate(phases)}
    styles[OTHER] = {"color": "white", "edgecolor": "0.4", "hatch": "//"}
    positions = np.arange(len(runs))
    means = [mean_phase_seconds(run) if run.steps else dict.fromkeys(names, 0.0) for run in runs]
    left = np.zeros(len(runs))
    for phase in names:
        widths = np.array([m.get(phase, 0.0) for m in means])
        if widths.any():
            ax.barh(positions, widths, left=left, label=phase, height=0.6, **styles[phase])
        left += widths
    for y, (run, total) in enumerate(zip(runs, left, strict=True)):
        note = f" {total:.2f} s" if run.steps else " no steps logged"
        ax.text(total, y, note, va="center", fontsize="small")
    ax.set_yticks(positions, [run.label for run in runs])
    ax.set_xlim(0, max(left.max(initial=0.0), 1e-3) * 1.15)
    ax.invert_yaxis()
    ax.set_title("Where a step's time goes (mean seconds per step)")
    ax.set_xlabel("seconds per step")
    ax.grid(axis="x", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


@dataclass(frozen=True)
class Plot:
    """One plot of the report: its file stem, how to draw it, and the caption telling what to look for."""

    name: str
    draw: Callable[[Sequence[Run]], Figure]
    caption: str


PLOTS = (
    Plot(
        "entropy",
        plot_entropy,
        "E3's temperature controller keeps the token entropy of the tempered policy near the target "
        "(dashed; fixed after the first steps, annealed late in training). Without it, GRPO's entropy "
        "usually falls.",
    ),
    Plot(
        "temperature",
        plot_temperature,
        "The sampling temperature the controller chose: it rises when entropy is below target, falls above.",
    ),
    Plot(
        "accuracy",
        plot_accuracy,
        "Rollout accuracy and the fraction of questions whose rollouts all failed (they give no GRPO "
        "signal). Faint: every step; solid: trailing moving average. Dashed: held-out greedy accuracy against "
        "the steps done (0: before training; every eval.every_steps steps; the end).",
    ),
    Plot(
        "allocation",
        plot_allocation,
        "E3 spends more rollouts on harder questions (higher rank) within a fixed total; a uniform budget "
        "(GRPO) is a flat line. Ranks are recomputed and budget bounds widened at every epoch end.",
    ),
    Plot(
        "staleness",
        plot_staleness,
        "With generation ahead of training (train.max_staleness >= 1): the share of each step's samples drawn "
        "with weights one or more versions older than the policy trained, and the importance ratio of the old "
        "policy to the sampling engine the off-policy correction weights each token by (1 when on-policy). "
        "Empty for the synchronous loop.",
    ),
    Plot(
        "step_time",
        plot_step_time,
        "Mean wall time per step by phase; 'other' is the step time no phase covers (scheduler overhead).",
    ),
)
"""The plots of the report, in page order."""


def build_figures(runs: Sequence[Run]) -> dict[str, Figure]:
    """Every plot of the report for `runs`, overlaid, keyed by plot name (in page order)."""
    return {plot.name: plot.draw(runs) for plot in PLOTS}


def _png_bytes(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=_DPI)
    return buffer.getvalue()


# -- HTML ----------------------------------------------------------------------------------------------------

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.6em; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { color: #555; font-size: 0.9em; max-width: 900px; }
.tables { display: flex; flex-wrap: wrap; gap: 1.5em; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; vertical-align: top; }
caption { font-weight: bold; text-align: left; padding-bottom: 0.3em; }
"""


def _table_html(run: Run) -> str:
    rows = [*summary_rows(run), ("folder", str(run.run_dir))]
    cells = "\n".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
    return f"<table><caption>{html.escape(run.label)}</caption>\n{cells}</table>"


def render_html(runs: Sequence[Run], images: dict[str, bytes]) -> str:
    """The report page: per-run tables, then each plot as an embedded PNG data URI with its caption, then the
    first run's questions worth a look (`reporting.questions.questions_html`)."""
    from reporting.questions import questions_html

    title = "E3 run report: " + ", ".join(run.label for run in runs)
    partial = [r.label for r in runs if r.skipped_partial_line]
    notes = [f"{label}: skipped a partial last line of metrics.jsonl" for label in partial]
    figures = []
    for plot in PLOTS:
        data = base64.b64encode(images[plot.name]).decode("ascii")
        figures.append(
            f'<figure><img alt="{html.escape(plot.name)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{html.escape(plot.caption)}</figcaption></figure>"
        )
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
            f"<h1>{html.escape(title)}</h1>",
            *(f"<p><em>{html.escape(n)}</em></p>" for n in notes),
            "<h2>Runs</h2>",
            '<div class="tables">',
            *(_table_html(run) for run in runs),
            "</div>",
            "<h2>Plots</h2>",
            *figures,
            questions_html(runs[0].run_dir) if runs else "",
            "</body></html>",
        ]
    )


def write_report(run_dirs: list[Path], out: Path | None = None) -> Path:
    """Write the HTML report for `run_dirs` (overlaid) and return its path.

    Default path: `<first run dir>/report.html`. The PNGs are also written to `<out's folder>/<out's stem>/`
    (`report/` for the default name). Raises ValueError for an empty `run_dirs` and FileNotFoundError for a
    folder without `metrics.jsonl`.
    """
    if not run_dirs:
        raise ValueError("write_report: run_dirs is empty; give at least one run folder")
    runs = [load_run(Path(d)) for d in run_dirs]
    out = Path(out) if out is not None else Path(run_dirs[0]) / "report.html"
    png_dir = out.parent / out.stem
    png_dir.mkdir(parents=True, exist_ok=True)
    images = {}
    for name, fig in build_figures(runs).items():
        images[name] = _png_bytes(fig)
        (png_dir / f"{name}.png").write_bytes(images[name])
    out.write_text(render_html(runs, images), encoding="utf-8")
    return out


def main(argv: Sequence[str] | None = None) -> None:
    """CLI: write the report for the given run folders and print its path."""
    parser = argparse.ArgumentParser(prog="python -m reporting", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dirs", nargs="+", type=Path, help="run folders (runs/<name>), overlaid")
    parser.add_argument("--out", type=Path, help="HTML file to write (default: <first run>/report.html)")
    parser.add_argument("--question", help="print this question's history in the (first) run instead")
    args = parser.parse_args(argv)
    from reporting.questions import format_history, question_history

    try:
        if args.question is not None:
            print(format_history(question_history(args.run_dirs[0], args.question), args.run_dirs[0]))
        else:
            print(write_report(args.run_dirs, args.out))
    except (FileNotFoundError, KeyError, ValueError) as err:
        parser.exit(2, f"error: {err.args[0] if isinstance(err, KeyError) else err}\n")
