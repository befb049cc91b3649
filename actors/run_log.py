"""Where a run's numbers go: `metrics.jsonl`, W&B (offline unless configured), Ray dashboard gauges, and the
difficulty table at every epoch end. Used by the scheduler only, so there is one writer per run.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from core.config import WandbConfig
from core.difficulty import DifficultyTable
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


def _init_wandb(config: WandbConfig, run_dir: Path, run_name: str, run_config: dict[str, Any], resume: bool) -> Any:
    """Start a W&B run; online init that fails or hangs past `init_timeout_s` falls back to offline with a warning."""
    if config.mode == "disabled":
        return None
    import wandb

    def start(mode: str) -> Any:
        return wandb.init(
            project=config.project,
            entity=config.entity,
            name=run_name,
            id=run_name if resume else None,
            resume="allow" if resume else None,
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
    return start("offline")


class RunLog:
    """Appends one JSON line per step, mirrors scalars to W&B and to Ray gauges, and saves difficulty tables.

    Construction only records where things go; files, the W&B run and the gauges are opened on first use, in
    the process that logs (the scheduler actor), so a RunLog can be built by the driver and shipped to it.
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

    def _open(self) -> None:
        if self._opened:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        mode = "a" if self.resume else "w"
        self._metrics = open(self.run_dir / "metrics.jsonl", mode, encoding="utf-8")  # noqa: SIM115
        self._lock = threading.Lock()
        os.environ.setdefault("WANDB_SILENT", "true")
        self._wandb = _init_wandb(self.wandb_config, self.run_dir, self.run_name, self.run_config, self.resume)
        self._gauges = self._make_gauges()
        self._opened = True

    def rewind(self, step: int) -> list[StepRecord]:
        """Forget logged steps >= `step` (a resumed run repeats them): rewrite `metrics.jsonl` without them.
        Returns the records kept, in order."""
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
        """Record one step everywhere: its line in `metrics.jsonl`, its numbers in W&B, the gauges."""
        self._open()
        line = record.to_log()
        with self._lock:
            self._metrics.write(json.dumps(line) + "\n")
            self._metrics.flush()
        for name, gauge in self._gauges.items():
            value = GAUGES[name](record)
            if value is not None and math.isfinite(value):
                gauge.set(value)
        if self._wandb is not None:
            self._wandb.log(_scalar_items(line), step=record.step)

    def log_epoch(self, epoch: int, step: int, table: DifficultyTable, records: list[StepRecord]) -> Path:
        """Save the difficulty table (`difficulty.parquet`, plus a copy per epoch) and send epoch views to W&B."""
        self._open()
        path = self.run_dir / "difficulty.parquet"
        table.write_parquet(path)
        (self.run_dir / "difficulty").mkdir(exist_ok=True)
        table.write_parquet(self.run_dir / "difficulty" / f"epoch_{epoch}.parquet")
        if self._wandb is not None:
            self._log_epoch_wandb(epoch, step, table, records)
        return path

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
        if not self._opened:
            return
        self._opened = False
        with self._lock:
            self._metrics.close()
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None
