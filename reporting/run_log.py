"""Where a run's numbers go: `metrics.jsonl`, W&B (offline unless configured), Ray dashboard gauges, the
difficulty table at every epoch end, and a few whole groups every `log.samples_every` steps (`samples.jsonl`).
Used by the scheduler only, so there is one writer per run.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from core.config import WandbConfig
from core.difficulty import DifficultyTable
from core.samples import SampleGroup, SampleResponse
from core.step_record import StepRecord

log = logging.getLogger(__name__)

GAUGES: dict[str, Callable[[StepRecord], float | None]] = {
    "e3_step": lambda r: r.step,
    "e3_temperature": lambda r: r.temperature,
    "e3_entropy": lambda r: r.entropy,
    "e3_target_entropy": lambda r: r.target_entropy,
    "e3_accuracy": lambda r: r.accuracy,
    "e3_all_wrong_fraction": lambda r: r.all_wrong_fraction,
    "e3_generated_tokens_per_s": lambda r: r.tokens_per_s,
    "e3_heldout_accuracy": lambda r: r.heldout_accuracy,
}
"""The Ray gauges set after every step (Prometheus names), and what each shows of the step's record."""

SAMPLES_FILE = "samples.jsonl"
"""A few whole groups of every `log.samples_every`-th step, one JSON object (`core.samples.SampleGroup`) a line."""
SAMPLE_COLUMNS = tuple(name for name in SampleResponse.__dataclass_fields__)
"""The per-response columns of the W&B table `samples` (after the group's own)."""


def _step_of(line: str) -> int:
    """The step of a `samples.jsonl` line; a line cut short by a crash reads as a step past any (a rewind drops it)."""
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return 1 << 62


def _scalar_items(values: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """The plain (finite or not) numbers of a dict, nested dicts keyed by their path (`heldout_before` ->
    `{"accuracy": 0.5}` becomes `heldout_before/accuracy`); lists, strings, booleans and None left out."""
    flat: dict[str, float] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(_scalar_items(value, f"{prefix}{key}/"))
        elif isinstance(value, int | float) and not isinstance(value, bool):
            flat[f"{prefix}{key}"] = float(value)
    return flat


WANDB_STATE = "wandb_run.json"
"""In the run folder: the run's one W&B id and the last step and epoch end sent to W&B (`WandbProgress`)."""


@dataclass
class WandbProgress:
    """What a run has sent to W&B, kept in `<run_dir>/wandb_run.json` across resumes and recoveries: every
    attempt logs into the W&B run `id`, and sends no step (or epoch end) it sent before, which W&B would drop
    as non-monotonic."""

    id: str
    step: int = -1
    """The last step whose numbers were sent (-1: none)."""
    epoch: int = -1
    """The last epoch whose end-of-epoch views were sent (-1: none)."""

    @classmethod
    def for_run(cls, run_dir: Path, resume: bool) -> WandbProgress:
        """A resumed run's progress as its folder keeps it; a new run's (or one whose file is missing: nothing
        was sent to W&B yet, or unreadable: with a warning naming it) a new id with nothing sent, written to the
        folder at once."""
        path = run_dir / WANDB_STATE
        if resume:
            try:
                return cls(**json.loads(path.read_text(encoding="utf-8")))
            except FileNotFoundError:
                log.info("no %s (nothing sent to W&B yet): this resumed run starts a W&B run", path)
            except (OSError, ValueError, TypeError) as err:
                log.warning("%s is unreadable (%s): this resumed run logs to a new W&B run", path, err)
        progress = cls(id=uuid.uuid4().hex[:12])
        progress.save(run_dir)
        return progress

    def save(self, run_dir: Path) -> None:
        """Write the progress to `<run_dir>/wandb_run.json` (replacing it whole: a crash leaves the old or new)."""
        partial = run_dir / f".{WANDB_STATE}.partial"
        partial.write_text(json.dumps(asdict(self)), encoding="utf-8")
        os.replace(partial, run_dir / WANDB_STATE)


def _init_wandb(config: WandbConfig, run_dir: Path, run_name: str, run_config: dict[str, Any], run_id: str) -> Any:
    """Start (or, when W&B knows `run_id`, continue) the W&B run `run_id`; online init that fails or hangs past
    `init_timeout_s` falls back to offline with a warning."""
    import wandb

    def start(mode: str) -> Any:
        return wandb.init(
            project=config.project,
            entity=config.entity,
            name=run_name,
            id=run_id,
            resume="allow",
            dir=str(run_dir),
            config=run_config,
            mode=mode,
            settings=wandb.Settings(init_timeout=config.init_timeout_s, silent=True, console="off"),
        )

    if config.mode == "online":
        try:
            return start("online")
        except Exception as err:  # noqa: BLE001 - no network must not stop a training run
            log.warning("W&B online init failed (%s); logging offline under %s instead", err, run_dir / "wandb")
            wandb.teardown()  # the service still holds the failed run's id, which the offline run takes
    return start("offline")


class RunLog:
    """Appends one JSON line per step, mirrors scalars to W&B and to Ray gauges, and saves difficulty tables.

    Construction only records where things go; files, the W&B run and the gauges are opened on first use, in
    the process that logs (the scheduler actor), so a RunLog can be built by the driver and shipped to it. W&B
    sees one run per run folder, whatever the attempts, each step once (`WandbProgress`).
    """

    def __init__(
        self,
        run_dir: Path,
        run_name: str,
        wandb_config: WandbConfig,
        run_config: dict[str, Any],
        resume: bool = False,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.run_name = run_name
        self.wandb_config = wandb_config
        self.run_config = run_config
        self.resume = resume
        self._opened = False
        self._started = False
        self._wandb: Any = None
        self._sent: WandbProgress | None = None

    def _open(self) -> None:
        if self._opened:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        mode = "a" if self.resume else "w"
        self._metrics = open(self.run_dir / "metrics.jsonl", mode, encoding="utf-8")  # noqa: SIM115
        self._lock = threading.Lock()
        self._opened = True
        if not self._started:  # the W&B run and the gauges: once, kept across a rewind
            self._start_sinks()

    def _start_sinks(self) -> None:
        """Start the W&B run (unless disabled) under the run folder's id, and the gauges."""
        if self.wandb_config.mode != "disabled":
            os.environ.setdefault("WANDB_SILENT", "true")
            self._sent = WandbProgress.for_run(self.run_dir, self.resume)
            self._wandb = _init_wandb(self.wandb_config, self.run_dir, self.run_name, self.run_config, self._sent.id)
        self._gauges = self._make_gauges()
        self._started = True

    def rewind(self, step: int) -> list[StepRecord]:
        """Forget logged steps >= `step` (a resumed run repeats them): rewrite `metrics.jsonl` without them.
        Returns the records kept, in order. W&B keeps them: the repeated steps are not sent to it again."""
        path = self.run_dir / "metrics.jsonl"
        if self._opened:
            self._metrics.close()
            self._opened = False
        kept: list[tuple[str, StepRecord]] = []
        if path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    record = StepRecord.from_log(json.loads(line))
                except (ValueError, KeyError):  # a line cut short by the crash that is being resumed from
                    continue
                if record.step < step:
                    kept.append((line, record))
            path.write_text("".join(line + "\n" for line, _ in kept), encoding="utf-8")
        samples = self.run_dir / SAMPLES_FILE
        if samples.exists():
            lines = samples.read_text(encoding="utf-8").splitlines()
            samples.write_text("".join(line + "\n" for line in lines if _step_of(line) < step), encoding="utf-8")
        self.resume = True
        return [record for _, record in kept]

    @staticmethod
    def _make_gauges() -> dict[str, Any]:
        try:
            import ray
            from ray.util.metrics import Gauge
        except ImportError:
            return {}
        if not ray.is_initialized():
            return {}
        return {name: Gauge(name, description=f"E3 run: {name.removeprefix('e3_')}") for name in GAUGES}

    def log_step(self, record: StepRecord) -> None:
        """Record one step everywhere: its line in `metrics.jsonl`, its numbers in W&B (unless an earlier attempt
        of the run sent them), the gauges."""
        self._open()
        line = record.to_log()
        with self._lock:
            self._metrics.write(json.dumps(line) + "\n")
            self._metrics.flush()
        for name, gauge in self._gauges.items():
            value = GAUGES[name](record)
            if value is not None and math.isfinite(value):
                gauge.set(value)
        if self._wandb is not None and record.step > self._sent.step:
            self._wandb.log(_scalar_items(line), step=record.step)
            self._mark_sent(step=record.step)

    def log_samples(self, step: int, groups: list[SampleGroup]) -> None:
        """Append the step's logged groups to `samples.jsonl`, one line each, and send them to W&B as the table
        `samples`, one row per response (unless an earlier attempt of the run sent this step)."""
        self._open()
        with open(self.run_dir / SAMPLES_FILE, "a", encoding="utf-8") as out:
            out.writelines(json.dumps(group.to_json()) + "\n" for group in groups)
        if self._wandb is not None and step > self._sent.step:
            import wandb

            rows = [
                [g.step, g.pick, g.question_id, g.prompt, g.ground_truth, g.rank, g.rollouts,
                 *(getattr(r, name) for name in SAMPLE_COLUMNS)]
                for g in groups
                for r in g.responses
            ]  # fmt: skip
            columns = ["step", "pick", "question_id", "prompt", "ground_truth", "rank", "rollouts", *SAMPLE_COLUMNS]
            self._wandb.log({"samples": wandb.Table(columns=columns, data=rows)}, step=step)

    def log_epoch(self, epoch: int, step: int, table: DifficultyTable, records: list[StepRecord]) -> Path:
        """Save the difficulty table (`difficulty.parquet`, plus a copy per epoch) and send epoch views to W&B
        (unless an earlier attempt of the run sent this epoch's)."""
        self._open()
        path = self.run_dir / "difficulty.parquet"
        table.write_parquet(path)
        (self.run_dir / "difficulty").mkdir(exist_ok=True)
        table.write_parquet(self.run_dir / "difficulty" / f"epoch_{epoch}.parquet")
        if self._wandb is not None and epoch > self._sent.epoch:
            self._log_epoch_wandb(epoch, step, table, records)
            self._mark_sent(epoch=epoch)
        return path

    def _mark_sent(self, step: int | None = None, epoch: int | None = None) -> None:
        """Record in the run folder that W&B has this step's numbers (or this epoch's end-of-epoch views)."""
        with self._lock:
            self._sent.step = self._sent.step if step is None else step
            self._sent.epoch = self._sent.epoch if epoch is None else epoch
            self._sent.save(self.run_dir)

    def _log_epoch_wandb(self, epoch: int, step: int, table: DifficultyTable, records: list[StepRecord]) -> None:
        import wandb

        rows = table.to_rows()
        columns = list(rows[0]) if rows else []
        allocation = wandb.Table(
            columns=["rank", "rollouts"],
            data=[[x, n] for r in records for x, n in zip(r.question_ranks, r.rollouts_per_question, strict=True)],
        )
        self._wandb.log(
            {
                "epoch/difficulty_table": wandb.Table(columns=columns, data=[list(r.values()) for r in rows]),
                "epoch/rollouts_vs_rank": wandb.plot.scatter(allocation, "rank", "rollouts", title=f"epoch {epoch}"),
                "epoch/rollouts_hist": wandb.Histogram([n for r in records for n in r.rollouts_per_question]),
                "epoch/entropy_vs_target": wandb.plot.line_series(
                    xs=[r.step for r in records],
                    ys=[[r.entropy for r in records], [r.target_entropy or math.nan for r in records]],
                    keys=["entropy", "target"],
                    title="entropy against target",
                    xname="step",
                ),
                "epoch": epoch,
            },
            step=step,
        )

    def log_summary(self, summary: dict[str, Any]) -> None:
        """Write `summary.json` and put its numbers in W&B's run summary, nested ones by path (the held-out
        evaluations as `heldout_before/accuracy`, `heldout_after/accuracy/<source>`, ...)."""
        self._open()
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
        if self._wandb is not None:
            self._wandb.summary.update(_scalar_items(summary))

    def close(self) -> None:
        """Flush and close every sink (nothing to do if nothing was logged)."""
        if self._opened:
            self._opened = False
            with self._lock:
                self._metrics.close()
        if self._wandb is not None:  # started, even if a rewind closed the metrics since
            self._wandb.finish()
            self._wandb = None
        self._started = False
