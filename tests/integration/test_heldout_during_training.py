"""Held-out greedy accuracy during training (`eval.every_steps`) on the whole system: on the due steps' lines of
metrics.jsonl, overall and per source, of the policy each line's step produced; and in the report's curve."""

from __future__ import annotations

import json
from collections import Counter

import pyarrow.parquet as pq
import pytest

import launch
from reporting.report import load_run
from tests.support.config import run_config

VALID_SIZE = 16


COMMON = ["train.max_steps=4", "eval.heldout_samples=0", f"data.valid_size={VALID_SIZE}"]


def read_steps(run_dir):
    return load_run(run_dir).steps


def test_heldout_accuracy_every_two_steps(embedded_task, ray_cluster, tmp_path):
    summary = launch.train(run_config(tmp_path, *COMMON, "run_name=heldout", "eval.every_steps=2"))
    run_dir = tmp_path / "heldout"
    steps = read_steps(run_dir)
    sources = Counter(pq.read_table(embedded_task.valid)["data_source"].to_pylist()[:VALID_SIZE])

    assert [m.step for m in steps] == [0, 1, 2, 3]
    for m in steps:
        held = m.heldout
        if m.step % 2 == 0:  # steps 0 and 2 are not due: the policy after 1 and 3 steps is not evaluated
            assert held == {} and "heldout" not in m.timing
            continue
        assert held.keys() == {"accuracy", *(f"accuracy/{s}" for s in sources)}
        assert all(0.0 <= v <= 1.0 for v in held.values())
        per_source = sum(n * held[f"accuracy/{s}"] for s, n in sources.items()) / VALID_SIZE
        assert m.heldout_accuracy == pytest.approx(per_source)
        # a multiple of 1/n per source: the share of n greedy answers
        assert all(held[f"accuracy/{s}"] * n == pytest.approx(round(held[f"accuracy/{s}"] * n))
                   for s, n in sources.items())  # fmt: skip
        assert m.timing["heldout"] > 0 and "heldout" not in m.step_phases  # timed outside the step
    # the last line's evaluation is of the final policy, as the after-training one: greedy gives the same answers
    assert steps[3].heldout == {k: v for k, v in summary["heldout_after"].items() if not k.startswith("sampled/")}

    x, y = load_run(run_dir).heldout_curve()  # the report's held-out curve: before, after 2 and after 4 steps
    assert x.tolist() == [0.0, 2.0, 4.0]
    assert y.tolist() == pytest.approx(
        [summary["heldout_before"]["accuracy"], steps[1].heldout_accuracy, steps[3].heldout_accuracy]
    )
    assert json.loads((run_dir / launch.HELDOUT_BEFORE).read_text()) == summary["heldout_before"]
    # W&B got the step scalars (its offline log holds the key) and the evaluations before and after by path
    wandb_log = b"".join(f.read_bytes() for f in (run_dir / "wandb").rglob("*.wandb"))
    assert b"heldout/accuracy/arithmetic/L1" in wandb_log and b"heldout_before/accuracy" in wandb_log


def test_validating_leaves_the_training_run_unchanged(embedded_task, ray_cluster, tmp_path):
    launch.train(run_config(tmp_path, *COMMON, "run_name=plain", "eval.every_steps=0"))
    launch.train(run_config(tmp_path, *COMMON, "run_name=validated", "eval.every_steps=1"))
    plain, validated = read_steps(tmp_path / "plain"), read_steps(tmp_path / "validated")

    assert all(m.heldout for m in validated) and not any(m.heldout for m in plain)
    for a, b in zip(plain, validated, strict=True):  # greedy evaluation between steps draws no sampling seed
        assert a.question_ids == b.question_ids
        assert a.rollouts_per_question == b.rollouts_per_question
        assert a.reward_mean == pytest.approx(b.reward_mean, abs=1e-6)
        assert a.response_length_mean == pytest.approx(b.response_length_mean, abs=1e-6)
        assert a.temperature == pytest.approx(b.temperature, abs=1e-9)
        assert a.entropy == pytest.approx(b.entropy, rel=1e-4)
