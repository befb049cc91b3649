"""The run log: metrics.jsonl, W&B offline (and online falling back to offline without a network), the
difficulty table at epoch end, and rewinding for a resume. W&B only ever sees loopback addresses here."""

from __future__ import annotations

import json
import math
import time

import pyarrow.parquet as pq
import pytest

from core.config import WandbConfig
from core.difficulty import DifficultyTable
from core.step_record import StepRecord
from reporting.run_log import RunLog
from tests.support.records import step_record


def step_metrics(step: int, epoch: int) -> StepRecord:
    return step_record(
        step,
        epoch=epoch,
        entropy=0.7 + 0.01 * step,
        target_entropy=None if step == 0 else 0.7,
        accuracy=float("nan"),
        question_ranks=(0.25, 0.75),
    )


@pytest.fixture
def table():
    t = DifficultyTable(["a", "b"])
    t.observe(["a", "a", "b"], [True, False, False], step=0)
    t.recompute_ranks()
    return t


def test_offline_run_writes_metrics_wandb_and_tables(tmp_path, table, monkeypatch):
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # any network attempt would fail fast, locally
    log = RunLog(tmp_path / "run", "t", WandbConfig(mode="offline"), {"algo": "e3"})
    assert not (tmp_path / "run").exists()  # nothing is opened before the first record
    for step in range(3):
        log.log_step(step_metrics(step, epoch=step // 2))
    log.log_epoch(0, 1, table, [step_metrics(0, 0), step_metrics(1, 0)])
    log.log_summary({"wall_s": 1.5})
    log.close()
    text = (tmp_path / "run" / "metrics.jsonl").read_text()
    lines = [StepRecord.from_log(json.loads(line)) for line in text.splitlines()]
    assert [m.step for m in lines] == [0, 1, 2] and lines[1].target_entropy == 0.7
    assert "NaN" not in text and math.isnan(lines[0].accuracy)  # NaN written as null (strict JSON), read as NaN
    assert pq.read_table(tmp_path / "run" / "difficulty.parquet").num_rows == 2
    assert (tmp_path / "run" / "difficulty" / "epoch_0.parquet").is_file()
    assert json.loads((tmp_path / "run" / "summary.json").read_text()) == {"wall_s": 1.5}
    assert list((tmp_path / "run" / "wandb").glob("offline-run-*")), "W&B wrote its offline run folder"


@pytest.mark.slow  # waits for W&B's online init to give up (about 10 s)
def test_online_without_network_falls_back_to_offline_quickly(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    start = time.perf_counter()
    log = RunLog(tmp_path / "run", "t", WandbConfig(mode="online", init_timeout_s=10), {})
    log.log_step(step_metrics(0, 0))
    log.close()
    assert time.perf_counter() - start < 90
    assert "logging offline" in caplog.text
    assert list((tmp_path / "run" / "wandb").glob("offline-run-*"))


def test_rewind_drops_steps_from_the_resume_point(tmp_path):
    log = RunLog(tmp_path / "run", "t", WandbConfig(mode="disabled"), {})
    for step in range(4):
        log.log_step(step_metrics(step, 0))
    log.close()
    with open(tmp_path / "run" / "metrics.jsonl", "a") as f:
        f.write('{"step": 4, "epo')  # a line cut short by a crash
    resumed = RunLog(tmp_path / "run", "t", WandbConfig(mode="disabled"), {}, resume=True)
    resumed.rewind(2)
    resumed.log_step(step_metrics(2, 0))
    resumed.close()
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [StepRecord.from_log(json.loads(line)).step for line in lines] == [0, 1, 2]
