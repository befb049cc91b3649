"""`mode=eval` on the embedded default: eval.json and eval.md have one row per source (`arithmetic/L1` ..
`arithmetic/L6`, names with a `/`), with numbers, not nan; the sampled accuracy once and pass@k per k."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import launch
from tests.support.config import run_config

PER_SOURCE = 2


def test_eval_mode_table_has_a_row_per_level(embedded_task, ray_cluster, tmp_path):
    table = pq.read_table(embedded_task.test)
    sources = table["data_source"].to_pylist()
    levels = sorted(set(sources))
    picked = [i for level in levels for i in [j for j, s in enumerate(sources) if s == level][:PER_SOURCE]]
    small = tmp_path / "test.parquet"
    pq.write_table(table.take(pa.array(picked)), small)
    cfg = run_config(
        tmp_path, "run_name=eval-embedded", "mode=eval", f"data.test_path={small}", "eval.num_samples=4",
        "eval.ks=[1,2,4,8]",  # 8 > num_samples: skipped
    )  # fmt: skip

    results = launch.evaluate(cfg)

    assert levels == [f"arithmetic/L{level}" for level in range(1, 7)]
    assert json.loads((tmp_path / "eval-embedded" / "eval.json").read_text()) == results
    assert list(results["sources"]) == levels and results["ks"] == [1, 2, 4]
    for row in [results["overall"], *results["sources"].values()]:
        assert 0.0 <= row["greedy_accuracy"] <= 1.0
        assert row["pass@1"] == pytest.approx(row["sampled_accuracy"])  # pass@1 is the mean accuracy
        assert 0.0 <= row["pass@1"] <= row["pass@2"] <= row["pass@4"] <= 1.0
    assert all(row["questions"] == PER_SOURCE for row in results["sources"].values())
    assert results["overall"]["questions"] == PER_SOURCE * len(levels)
    text = (tmp_path / "eval-embedded" / "eval.md").read_text()
    assert "nan" not in text
    rows = [line.split(" | ")[0].removeprefix("| ") for line in text.splitlines() if line.startswith("| ")]
    assert rows == ["source", "all", *levels]
