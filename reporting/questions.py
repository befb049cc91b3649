"""One question's history in a run: its row of every epoch's difficulty table, the rollouts it was allocated each
time it was drawn, and its latest logged group (`samples.jsonl`); and the questions worth a look (those whose
accuracy rose most, those never solved).

    python -m reporting runs/<name> --question <id>

Read from the run folder only: `difficulty/epoch_<k>.parquet` (written at every epoch end), `metrics.jsonl` and
`samples.jsonl` (every `log.samples_every` steps).
"""

from __future__ import annotations

import html
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from reporting.report import read_metrics
from reporting.run_log import SAMPLES_FILE

_EPOCH_FILE = re.compile(r"epoch_(\d+)\.parquet")


@dataclass(frozen=True)
class EpochRow:
    """A question's row of one epoch's difficulty table (counts accumulated since the run began), with the
    accuracy of that epoch's own attempts."""

    epoch: int
    attempts: int
    correct: int
    accuracy: float
    rank: float
    epoch_accuracy: float | None
    """Correct / attempts of this epoch's attempts alone; None when the epoch did not sample it."""


@dataclass(frozen=True)
class Allocation:
    """The rollouts a question got at one step, and its rank when they were allocated."""

    step: int
    rollouts: int
    rank: float


@dataclass(frozen=True)
class QuestionHistory:
    question_id: str
    epochs: list[EpochRow]
    allocations: list[Allocation]
    latest_group: dict[str, Any] | None
    """The question's last line of `samples.jsonl`, if one was logged."""


def epoch_tables(run_dir: Path) -> dict[int, dict[str, dict[str, Any]]]:
    """Every epoch's difficulty table of the run, by epoch, as {question id: row}; FileNotFoundError naming the
    folder when the run has none (no epoch ended yet)."""
    folder = Path(run_dir) / "difficulty"
    files = sorted((int(m.group(1)), p) for p in folder.glob("epoch_*.parquet") if (m := _EPOCH_FILE.fullmatch(p.name)))
    if not files:
        raise FileNotFoundError(f"{folder}: no epoch_<k>.parquet (no epoch of the run has ended yet)")
    return {epoch: {row["question_id"]: row for row in pq.read_table(path).to_pylist()} for epoch, path in files}


def _epoch_rows(tables: dict[int, dict[str, dict[str, Any]]], question_id: str) -> list[EpochRow]:
    """The question's row of each epoch's table, with each epoch's own accuracy from the counts' differences."""
    rows, before = [], (0, 0)
    for epoch, table in sorted(tables.items()):
        row = table[question_id]
        attempts, correct = int(row["attempts"]), int(row["correct"])
        new = attempts - before[0]
        rows.append(
            EpochRow(
                epoch,
                attempts,
                correct,
                float(row["accuracy"]),
                float(row["rank"]),
                (correct - before[1]) / new if new else None,
            )
        )
        before = (attempts, correct)
    return rows


def question_history(run_dir: Path, question_id: str) -> QuestionHistory:
    """The question's history in the run (module docstring). Raises FileNotFoundError naming a missing run folder
    and KeyError naming a question id the run's tables do not hold."""
    run_dir = Path(run_dir)
    if not (run_dir / "metrics.jsonl").is_file():
        raise FileNotFoundError(f"{run_dir}: not a run folder (no metrics.jsonl)")
    tables = epoch_tables(run_dir)
    if question_id not in tables[max(tables)]:
        raise KeyError(f"question {question_id!r} is not in the difficulty tables of {run_dir}")
    steps, _ = read_metrics(run_dir / "metrics.jsonl")
    allocations = [
        Allocation(record.step, n, rank)
        for record in steps
        for qid, n, rank in zip(record.question_ids, record.rollouts_per_question, record.question_ranks, strict=True)
        if qid == question_id
    ]
    epochs = _epoch_rows(tables, question_id)
    return QuestionHistory(question_id, epochs, allocations, latest_group(run_dir, question_id))


def latest_group(run_dir: Path, question_id: str) -> dict[str, Any] | None:
    """The question's last logged group in `samples.jsonl` (None when the file has none or does not exist)."""
    path = Path(run_dir) / SAMPLES_FILE
    if not path.is_file():
        return None
    found = None
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            group = json.loads(line)
        except ValueError:  # a line cut short by a crash
            continue
        if group.get("question_id") == question_id:
            found = group
    return found


def questions_to_look_at(run_dir: Path, count: int = 10) -> tuple[list[str], list[str]]:
    """The `count` questions whose accuracy rose most from the first epoch that sampled them to the last, and
    `count` sampled in the last epoch but never solved (most attempts first)."""
    tables = epoch_tables(run_dir)
    last = tables[max(tables)]
    rises, never = [], []
    for qid, row in last.items():
        own = [r.epoch_accuracy for r in _epoch_rows(tables, qid) if r.epoch_accuracy is not None]
        if len(own) >= 2:
            rises.append((own[-1] - own[0], qid))
        if row["attempts"] and not row["correct"]:
            never.append((row["attempts"], qid))
    rises.sort(key=lambda item: (-item[0], item[1]))
    never.sort(key=lambda item: (-item[0], item[1]))
    return [qid for rise, qid in rises[:count] if rise > 0], [qid for _, qid in never[:count]]


def format_history(history: QuestionHistory, run_dir: Path) -> str:
    """The history as plain text, for the terminal."""
    lines = [f"question {history.question_id}", "", "epoch  attempts  correct  accuracy  rank   this epoch"]
    for row in history.epochs:
        own = "-" if row.epoch_accuracy is None else f"{row.epoch_accuracy:.3f}"
        lines.append(
            f"{row.epoch:>5}  {row.attempts:>8}  {row.correct:>7}  {row.accuracy:>8.3f}  {row.rank:.3f}  {own:>10}"
        )
    drawn = ", ".join(f"{a.step}: {a.rollouts} at {a.rank:.2f}" for a in history.allocations)
    lines += ["", f"allocated (step: rollouts at rank): {drawn or 'never drawn'}"]
    group = history.latest_group
    if group is None:
        lines += ["", f"no logged group of it in {Path(run_dir) / SAMPLES_FILE} (log.samples_every)"]
    else:
        lines += [
            "",
            f"latest logged group: step {group['step']} ({group['pick']}), {group['rollouts']} responses, "
            f"accuracy {group['accuracy']:.3f}, ground truth {group['ground_truth']!r}",
            f"prompt: {group['prompt']!r}",
        ]
        for r in group["responses"]:
            mark = "right" if r["correct"] else "wrong"
            lines.append(
                f"  [{mark}] reward {r['reward']:.2f} advantage {r['advantage']:+.2f} {r['tokens']} tokens"
                f"{' (truncated)' if r['truncated'] else ''} T={r['temperature']:.3f} v{r['weights_version']}"
                f" staleness {r['staleness']}: {r['text']!r}"
            )
    return "\n".join(lines)


def questions_html(run_dir: Path, count: int = 10) -> str:
    """The report page's section on questions: the `count` whose accuracy rose most and `count` never solved,
    each with its accuracy and rank at every epoch end and the rollouts it got; empty before any epoch ended."""
    try:
        risers, never = questions_to_look_at(run_dir, count)
    except FileNotFoundError:
        return ""
    histories = {qid: question_history(run_dir, qid) for qid in [*risers, *never]}

    def row(qid: str) -> str:
        history = histories[qid]
        epochs = "; ".join(
            f"e{r.epoch}: {'-' if r.epoch_accuracy is None else f'{r.epoch_accuracy:.2f}'} (rank {r.rank:.2f})"
            for r in history.epochs
        )
        rollouts = " ".join(str(a.rollouts) for a in history.allocations)
        return f"<tr><td>{html.escape(qid)}</td><td>{html.escape(epochs)}</td><td>{html.escape(rollouts)}</td></tr>"

    def table(title: str, ids: list[str]) -> str:
        head = "<tr><th>question</th><th>accuracy of each epoch (rank at its end)</th><th>rollouts when drawn</th></tr>"
        body = "\n".join(row(qid) for qid in ids) or '<tr><td colspan="3">none</td></tr>'
        return f"<table><caption>{html.escape(title)}</caption>\n{head}\n{body}</table>"

    return "\n".join(
        [
            "<h2>Questions</h2>",
            f"<p>From {html.escape(str(run_dir))}; <code>python -m reporting {html.escape(str(run_dir))} --question "
            "&lt;id&gt;</code> prints one question's whole history and its latest logged group.</p>",
            '<div class="tables">',
            table(f"accuracy rose most (first epoch to last, top {count})", risers),
            table(f"never solved (most attempts first, up to {count})", never),
            "</div>",
        ]
    )
