"""Bad input stops `python launch.py` before any actor starts, with an error naming the file, row and field (or
the config key), and leaves nothing half-written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

REPO = Path(__file__).resolve().parents[2]


def launch(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    args = [sys.executable, "launch.py", f"output_dir={tmp_path / 'runs'}", "wandb.mode=disabled", *overrides]
    return subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=300)


def write_questions(path: Path, ids: list[str], prompts: list[str], answers: list[str]) -> Path:
    table = pa.table(
        {
            "id": ids,
            "data_source": ["test"] * len(ids),
            "prompt": [[{"role": "user", "content": p}] for p in prompts],
            "ability": ["arithmetic"] * len(ids),
            "reward_model": [{"ground_truth": a} for a in answers],
        }
    )
    pq.write_table(table, path)
    return path


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["budget.n_low=10"], "budget.n_low=10 <= budget.n=8"),
        (["temperature.initial=0"], "temperature.initial=0"),
        (["temperature.initial=-0.5"], "temperature.initial=-0.5"),
        (["model.path=/no/such/model"], "model.path='/no/such/model'"),
        (["data.train_path=/no/such.parquet"], "data.train_path='/no/such.parquet'"),
        (["train.questions_per_step=0"], "train.questions_per_step=0"),
    ],
)
def test_bad_config_is_named_before_anything_starts(tmp_path, overrides, expected):
    done = launch(tmp_path, *overrides)
    assert done.returncode == 2, done.stderr[-2000:]
    assert expected in done.stderr
    assert not (tmp_path / "runs").exists()


def test_bad_rows_are_named_with_file_row_and_field(embedded_task, tmp_path):
    broken = write_questions(tmp_path / "dup.parquet", ["a", "b", "a"], ["1+1=?", "2+2=?", "3+3=?"], ["2", "4", "6"])
    done = launch(tmp_path, f"data.train_path={broken}", f"model.path={embedded_task.model}")
    assert done.returncode == 2, done.stderr[-2000:]
    assert "dup.parquet" in done.stderr and "duplicate" in done.stderr and "row 0" in done.stderr
    assert not (tmp_path / "runs").exists()

    empty = write_questions(tmp_path / "empty.parquet", ["a", "b"], ["1+1=?", ""], ["2", "4"])
    done = launch(tmp_path, f"data.train_path={empty}", f"model.path={embedded_task.model}")
    assert done.returncode == 2 and "empty.parquet" in done.stderr and "row 1" in done.stderr
    assert "prompt" in done.stderr


def test_overlong_prompts_rejected_or_filtered_per_config(embedded_task, tmp_path):
    long = write_questions(tmp_path / "long.parquet", ["short", "long"], ["1+1=?", "9+" * 400 + "9=?"], ["2", "3609"])
    done = launch(tmp_path, f"data.train_path={long}", "data.overlong_prompts=error")
    assert done.returncode == 2 and "'long'" in done.stderr and "max_len=128" in done.stderr
    assert not (tmp_path / "runs").exists()
