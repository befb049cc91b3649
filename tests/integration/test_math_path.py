"""The math path on CPU with the small policy standing in for a real model: the paper's files, math-verify
rewards under the scorer's timeout, a 2-step training run and `mode=eval` with pass@k. The policy scores about
0 on real math: these tests prove the wiring, not the learning."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import launch
from reporting.report import load_run
from tests.support.config import run_config

DATA = Path(os.environ.get("E3_DATA_DIR", Path(__file__).resolve().parents[3] / "shared" / "datasets" / "e3"))
needs_data = pytest.mark.skipif(not (DATA / "train_data.parquet").is_file(), reason=f"no E3 data in {DATA}")


@needs_data
def test_two_step_math_run_on_real_questions(embedded_task, ray_cluster, tmp_path):
    cfg = run_config(
        tmp_path,
        "run_name=math-smoke",
        "data.task=math",
        f"data.train_path={DATA / 'train_data.parquet'}",
        f"data.valid_path={DATA / 'valid_data.parquet'}",
        f"model.path={embedded_task.model}",
        "data.max_prompt_tokens=192",
        "data.max_train_questions=8",
        "data.valid_size=8",
        "train.questions_per_step=4",
        "train.max_steps=2",
        "eval.heldout_samples=2",
    )
    summary = launch.train(cfg)
    steps = load_run(tmp_path / "math-smoke").steps
    assert [m.step for m in steps] == [0, 1]
    assert all(m.rollouts_total == 4 * 4 and m.reward_timeouts == 0 and m.reward_errors == 0 for m in steps)
    assert all(0.0 <= m.accuracy <= 1.0 and m.entropy > 0 for m in steps)
    assert {"accuracy", "sampled/all/mean@2"} <= summary["heldout_after"].keys()
    assert any(key.startswith("accuracy/") for key in summary["heldout_after"])  # per data source


@needs_data
def test_eval_mode_writes_pass_at_k_per_source(embedded_task, ray_cluster, tmp_path):
    lines = (DATA / "test.json").read_text().splitlines()
    by_source: dict[str, list[str]] = {}
    for line in lines:
        by_source.setdefault(json.loads(line)["source"], []).append(line)
    small = tmp_path / "test.jsonl"
    shortest = [min(rows, key=lambda row: len(json.loads(row)["prompt"])) for rows in by_source.values()]
    small.write_text("\n".join(shortest) + "\n")  # the shortest question of each source
    cfg = run_config(
        tmp_path,
        "run_name=math-eval",
        "mode=eval",
        "data.task=math",
        f"data.test_path={small}",
        f"model.path={embedded_task.model}",
        "data.max_prompt_tokens=192",
        "eval.num_samples=4",
        "eval.ks=[1,2,4]",
    )
    results = launch.evaluate(cfg)
    written = json.loads((tmp_path / "math-eval" / "eval.json").read_text())
    assert written == results
    assert {"greedy_accuracy", "sampled_accuracy", "pass@1", "pass@2", "pass@4"} == results["overall"].keys() - {
        "questions"
    }
    assert results["sources"].keys() == by_source.keys()
    for row in results["sources"].values():
        assert row["questions"] == 1 and 0.0 <= row["pass@1"] <= row["pass@4"] <= 1.0
    table = (tmp_path / "math-eval" / "eval.md").read_text()
    assert "| all |" in table and all(f"| {source} |" in table for source in by_source) and "nan" not in table
