"""The throughput benchmark: its step summary's arithmetic, and `--quick` end to end on the shared Ray cluster
(every part runs on real actors and the report holds every table)."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from bench import throughput
from bench.throughput import QUICK, attempt, generation_table, summarize_steps
from core.step_record import StepRecord
from tests.support.records import step_record


def step(index: int, step_s: float, generate_s: float, train_s: float, sample_s: float = 0.0) -> StepRecord:
    timing = {"step": step_s, "sample": sample_s, "generate": generate_s, "score": 0.1, "train": train_s, "sync": 0.2}
    return step_record(index, rollouts_per_question=(16, 16), generated_tokens=100 * (index + 1), timing=timing)


def test_step_summary_leaves_out_the_warm_up_step_and_derives_the_overhead():
    records = [step(0, 30.0, 25.0, 4.0), step(1, 2.0, 1.0, 0.5, sample_s=0.1), step(2, 4.0, 2.0, 1.5, sample_s=0.1)]
    summary = summarize_steps(records)
    assert summary.steps == 2
    assert summary.phases["step"] == pytest.approx(3.0)
    assert summary.phases["generate"] == pytest.approx(1.5) and summary.phases["train"] == pytest.approx(1.0)
    assert summary.overhead_s == pytest.approx(3.0 - (1.5 + 0.1 + 1.0 + 0.2))  # sample + untimed time
    assert summary.phases["other"] == pytest.approx(summary.overhead_s - 0.1)
    assert summary.share(summary.phases["generate"]) == pytest.approx(0.5)
    assert (summary.samples_per_step, summary.tokens_per_step) == (32, 250)
    assert "update_table" not in summary.phases  # phases no step recorded are left out, not reported as 0


def test_step_summary_refuses_runs_too_short_or_without_step_times():
    with pytest.raises(ValueError, match="1 steps recorded"):
        summarize_steps([step(0, 1.0, 0.5, 0.3)])
    timed = step(1, 1.0, 0.5, 0.3)
    untimed = replace(timed, timing={p: s for p, s in timed.timing.items() if p != "step"})
    with pytest.raises(ValueError, match=r"steps \[1\] have no step time"):
        summarize_steps([step(0, 1.0, 0.5, 0.3), untimed])


def test_a_failing_generation_path_is_reported_in_the_table_not_raised():
    def crash() -> tuple[float, int]:
        raise RuntimeError("engine step failed\nCPU Generator does not use offset")

    failed = attempt("vllm", 1, crash)
    assert failed.error == "RuntimeError: CPU Generator does not use offset" and math.isnan(failed.tokens_per_s)
    raw = attempt("vllm", 0, lambda: (2.0, 100))
    assert (raw.tokens_per_s, raw.error) == (50.0, "")
    table = generation_table([raw, failed])
    assert "| vllm | raw engine, in-process | 100 | 2.00 | 50 | 1.00 |" in table
    assert (
        "| vllm | RolloutPool, 1 worker actor | failed: `RuntimeError: CPU Generator does not use offset` | | | |"
        in table
    )


def test_quick_benchmark_measures_every_part_and_writes_the_report(embedded_task, ray_cluster, tmp_path):
    out = tmp_path / "throughput.md"
    results = throughput.main(["--quick", "--model", str(embedded_task.model), "--out", str(out)])

    assert [(r.engine, r.workers) for r in results.generation] == [("hf", 0), ("hf", 1)]
    raw, pool = results.generation
    # fixed seeds: the actor path samples exactly what the raw engine samples
    assert raw.tokens == pool.tokens > 0 and raw.seconds > 0 and pool.seconds > 0
    steps = results.steps
    assert steps.steps == QUICK.train_steps - 1
    assert steps.samples_per_step == 4 * QUICK.questions_per_step  # the smoke budget: n = 4 per question
    assert steps.phases["step"] >= steps.phases["generate"] + steps.phases["train"] > 0
    small, wide = results.sync
    assert 3 < wide.params / small.params < 4.5  # twice the width: about four times the parameters
    assert small.megabytes == pytest.approx(4 * small.params / 1e6)  # float32
    for row in results.sync:
        assert 0 < row.gather_s <= row.total_s and 0 < row.load_s <= row.total_s

    text = out.read_text(encoding="utf-8")
    assert f"python -m bench.throughput --quick --model {embedded_task.model} --out {out}" in text
    for section in ("## (a)", "## (b)", "## (c)", "## Reading", "scheduler overhead", "Shared machine"):
        assert section in text
    assert "| hf | RolloutPool, 1 worker actor |" in text
