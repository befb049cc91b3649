"""W&B is one run per run folder: every attempt (a resume, a recovery from a checkpoint or from the start) logs
under the id kept in `wandb_run.json` with `resume="allow"`, and no step or epoch end is sent twice, while
`metrics.jsonl` still holds every step once. A fake `wandb` module records what would be sent."""

from __future__ import annotations

import json
import pickle
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from core.config import WandbConfig
from core.difficulty import DifficultyTable
from core.step_record import StepRecord
from reporting.run_log import WANDB_STATE, RunLog
from tests.support.records import step_record


class FakeWandb(types.ModuleType):
    """What `reporting.run_log` uses of `wandb`; `inits` are the keyword arguments of each `init`, `logged` the
    `(run id, step, keys)` of each `log`."""

    def __init__(self) -> None:
        super().__init__("wandb")
        self.inits: list[dict[str, Any]] = []
        self.logged: list[tuple[str, int, set[str]]] = []
        self.finished: list[str] = []
        self.Settings = dict
        self.Table = lambda columns, data: ("table", columns, data)
        self.Histogram = lambda values: ("histogram", values)
        self.plot = types.SimpleNamespace(scatter=lambda *a, **k: "scatter", line_series=lambda **k: "lines")

    def init(self, **kwargs: Any) -> Any:
        self.inits.append(kwargs)
        run_id = kwargs["id"]
        return types.SimpleNamespace(
            log=lambda data, step: self.logged.append((run_id, step, set(data))),
            summary={},
            finish=lambda: self.finished.append(run_id),
        )

    def steps(self) -> list[int]:
        return [step for _, step, keys in self.logged if "epoch/difficulty_table" not in keys]

    def epoch_ends(self) -> list[int]:
        return [step for _, step, keys in self.logged if "epoch/difficulty_table" in keys]


@pytest.fixture
def wandb(monkeypatch) -> FakeWandb:
    fake = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    return fake


@pytest.fixture
def table() -> DifficultyTable:
    t = DifficultyTable(["q0", "q1"])
    t.observe(["q0", "q1"], [True, False], step=0)
    t.recompute_ranks()
    return t


def run_log(run_dir: Path, resume: bool = False) -> RunLog:
    return RunLog(run_dir, "r", WandbConfig(mode="offline"), {"algo": "e3"}, resume=resume)


def log_steps(log: RunLog, steps: range, table: DifficultyTable | None = None, steps_per_epoch: int = 0) -> None:
    """Log `steps` as the scheduler does: each step's record, and at an epoch's last step the epoch views."""
    for step in steps:
        end = bool(steps_per_epoch) and (step + 1) % steps_per_epoch == 0
        epoch = step // steps_per_epoch if steps_per_epoch else 0
        record = step_record(step, epoch=epoch, end_of_epoch=end)
        log.log_step(record)
        if end and table is not None:
            log.log_epoch(epoch, step, table, [record])


def metrics_steps(run_dir: Path) -> list[int]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [StepRecord.from_log(json.loads(line)).step for line in lines]


def test_resumes_continue_the_first_runs_wandb_id_and_send_each_step_once(tmp_path, wandb):
    first = run_log(tmp_path)
    log_steps(first, range(4))
    first.close()
    second = run_log(tmp_path, resume=True)  # resume=true from the checkpoint at step 2
    second.rewind(2)
    log_steps(second, range(2, 6))
    second.close()
    third = run_log(tmp_path, resume=True)  # a second resume, from step 4
    third.rewind(4)
    log_steps(third, range(4, 8))
    third.close()

    ids = [kwargs["id"] for kwargs in wandb.inits]
    assert len(ids) == 3 and len(set(ids)) == 1 and ids[0]
    assert all(kwargs["resume"] == "allow" for kwargs in wandb.inits)
    assert json.loads((tmp_path / WANDB_STATE).read_text())["id"] == ids[0]
    assert wandb.steps() == list(range(8))  # strictly increasing: nothing W&B would drop as non-monotonic
    assert metrics_steps(tmp_path) == list(range(8))
    assert wandb.finished == ids


def test_a_new_run_gets_its_own_wandb_id(tmp_path, wandb):
    for name in ("a", "b"):
        log = run_log(tmp_path / name)
        log_steps(log, range(1))
        log.close()
    assert wandb.inits[0]["id"] != wandb.inits[1]["id"]


def test_recoveries_as_the_driver_runs_them_keep_one_wandb_run(tmp_path, wandb):
    """The driver builds the run log once and ships a copy to each attempt's scheduler; an attempt is killed
    (its run log never closed); the next restores a checkpoint (rewinding its copy) or, without one, the
    driver rewinds to the start."""
    driver = run_log(tmp_path)
    attempt = pickle.loads(pickle.dumps(driver))
    log_steps(attempt, range(3))  # killed after step 2
    attempt = pickle.loads(pickle.dumps(driver))
    attempt.rewind(1)  # restored the checkpoint at step 1
    log_steps(attempt, range(1, 5))  # killed after step 4, before any later checkpoint
    driver.rewind(0)  # say the checkpoints were lost: from the start
    attempt = pickle.loads(pickle.dumps(driver))
    log_steps(attempt, range(6))
    attempt.close()

    assert len({kwargs["id"] for kwargs in wandb.inits}) == 1 and len(wandb.inits) == 3
    assert wandb.steps() == list(range(6))
    assert metrics_steps(tmp_path) == list(range(6))


def test_a_rewind_in_the_same_process_keeps_its_wandb_run_and_sends_no_step_twice(tmp_path, wandb):
    log = run_log(tmp_path)
    log_steps(log, range(4))
    log.rewind(2)
    log_steps(log, range(2, 5))
    log.close()
    assert len(wandb.inits) == 1 and len(wandb.finished) == 1
    assert wandb.steps() == list(range(5))
    assert metrics_steps(tmp_path) == list(range(5))


def test_an_epoch_end_is_sent_once_across_a_resume(tmp_path, wandb, table):
    first = run_log(tmp_path)
    log_steps(first, range(3), table, steps_per_epoch=2)  # epoch 0 ends at step 1
    first.close()
    resumed = run_log(tmp_path, resume=True)
    resumed.rewind(0)  # the whole of epoch 0 again
    log_steps(resumed, range(4), table, steps_per_epoch=2)  # epoch 0 ends again at step 1, epoch 1 at step 3
    resumed.close()
    assert wandb.epoch_ends() == [1, 3]
    assert wandb.steps() == list(range(4))
    assert (tmp_path / "difficulty" / "epoch_1.parquet").is_file()


def test_a_resume_without_the_id_file_starts_a_wandb_run_that_later_attempts_continue(tmp_path, wandb):
    """As when a run's first attempt failed before it logged anything."""
    first = run_log(tmp_path, resume=True)
    log_steps(first, range(2))
    first.close()
    again = run_log(tmp_path, resume=True)
    log_steps(again, range(3))
    again.close()
    assert wandb.inits[0]["id"] == wandb.inits[1]["id"] == json.loads((tmp_path / WANDB_STATE).read_text())["id"]
    assert wandb.steps() == [0, 1, 2]


def test_an_unreadable_id_file_is_named_in_a_warning_and_replaced(tmp_path, wandb, caplog):
    (tmp_path / WANDB_STATE).write_text('{"id": ')  # cut short
    log = run_log(tmp_path, resume=True)
    log_steps(log, range(1))
    log.close()
    assert str(tmp_path / WANDB_STATE) in caplog.text and "unreadable" in caplog.text
    assert json.loads((tmp_path / WANDB_STATE).read_text())["id"] == wandb.inits[0]["id"]
    assert wandb.steps() == [0]


def test_disabled_wandb_is_never_imported_nor_recorded(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # an import would raise
    log = RunLog(tmp_path, "r", WandbConfig(mode="disabled"), {})
    log_steps(log, range(2))
    log.close()
    assert not (tmp_path / WANDB_STATE).exists()
