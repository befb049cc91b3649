"""bench.learner --quick runs the whole benchmark (before and after, in fresh processes) and writes the JSON
fields the issue names, with values that make sense."""

from __future__ import annotations

import json
import math
import subprocess

import pytest

from bench import learner as bench_learner


def test_quick_benchmark_writes_the_named_fields(tmp_path, embedded_task) -> None:
    known = subprocess.run(["git", "cat-file", "-e", f"{bench_learner.BEFORE_COMMIT}^{{commit}}"], check=False)
    if known.returncode != 0:
        pytest.skip(f"the 'before' commit {bench_learner.BEFORE_COMMIT} is not in this clone (shallow?)")
    bench_learner.main(["--quick", "--out", str(tmp_path)])
    results = json.loads((tmp_path / "learner.json").read_text())
    for field in (
        "peak_memory_ratio_before",
        "peak_memory_ratio_after",
        "tokens_per_s_before",
        "tokens_per_s_after",
        "padding_fraction_before",
        "padding_fraction_after",
    ):
        assert math.isfinite(results[field]) and results[field] >= 0, field
    # the old path keeps several full logits tensors alive; the chunked one fewer than that, even at quick sizes
    assert results["peak_memory_ratio_before"] > 2.0
    assert results["peak_memory_ratio_after"] < results["peak_memory_ratio_before"]
    assert 0 <= results["padding_fraction_after"] <= results["padding_fraction_before"] < 1
    assert "| peak memory added by one step" in (tmp_path / "learner.md").read_text()
