"""Logged groups: which ones are picked, what each response carries, and where they go (`samples.jsonl`, the W&B
table `samples`), a resumed run's repeated steps written once."""

from __future__ import annotations

import json
import sys

import pytest

from core.config import WandbConfig
from core.messages import Completion, Rollout, ScoredRollout
from core.samples import pick_groups, sample_groups
from reporting.run_log import SAMPLE_COLUMNS, SAMPLES_FILE, RunLog
from tests.support.records import step_record
from tests.unit.test_run_log_wandb import FakeWandb


def test_the_hardest_the_easiest_and_the_most_mixed_come_first_then_random_ones():
    ranks, accuracies = [0.5, 0.9, 0.1, 0.6, 0.3], [0.0, 0.0, 1.0, 0.4, 1.0]
    picked = pick_groups(ranks, accuracies, count=4, seed=7)
    assert picked[:3] == [("hardest", 1), ("easiest", 2), ("most_mixed", 3)]
    assert picked[3][0] == "random" and picked[3][1] in (0, 4)
    assert picked == pick_groups(ranks, accuracies, count=4, seed=7)  # seeded
    assert pick_groups(ranks[:2], accuracies[:2], count=4, seed=0) == [("hardest", 1), ("easiest", 0)]
    assert pick_groups(ranks, accuracies, count=1, seed=0) == [("hardest", 1)]


def group(question: str, texts: list[str], version: int = 3, finish: str = "stop") -> ScoredRollout:
    completions = tuple(Completion((1,) * len(t), (-0.1,) * len(t), t, finish) for t in texts)
    rollout = Rollout(question, 0, (5,), completions, 0.9, weights_version=version)
    correct = tuple(t.startswith("yes") for t in texts)
    return ScoredRollout(rollout, tuple(float(c) for c in correct), correct)


def test_each_response_carries_its_reward_advantage_length_and_sampling_stamps():
    scored = [group("a", ["yes-long-answer", "no"], version=2, finish="length"), group("b", ["no", "no", "yes"])]
    groups = sample_groups(
        step=5, scored=scored, prompts=["prompt a", "prompt b"], ground_truths=["A", "B"], ranks=[0.8, 0.2],
        advantages=[0.7, -0.7, -0.5, -0.5, 1.0], trained_version=3, count=2, max_chars=6, seed=0,
    )  # fmt: skip
    hardest, easiest = groups
    assert (hardest.pick, hardest.question_id, hardest.prompt, hardest.ground_truth) == ("hardest", "a", "prompt", "A")
    assert [r.text for r in hardest.responses] == ["yes-lo", "no"] and hardest.responses[0].text_chars == 15
    assert [r.advantage for r in hardest.responses] == [0.7, -0.7]
    assert [r.advantage for r in easiest.responses] == [-0.5, -0.5, 1.0]
    first = hardest.responses[0]
    assert (first.tokens, first.truncated, first.correct, first.reward) == (15, True, True, 1.0)
    assert (first.weights_version, first.temperature, first.staleness) == (2, 0.9, 1)
    assert easiest.responses[0].staleness == 0 and easiest.accuracy == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="advantages"):
        sample_groups(
            step=5, scored=scored, prompts=["", ""], ground_truths=["", ""], ranks=[0, 1], advantages=[0.0],
            trained_version=3, count=2, max_chars=6, seed=0,
        )  # fmt: skip


def test_groups_go_to_samples_jsonl_and_to_a_wandb_table_and_a_resume_writes_a_step_once(tmp_path, monkeypatch):
    fake = FakeWandb()
    tables = []
    fake.Table = lambda columns, data: tables.append((columns, data)) or "table"
    monkeypatch.setitem(sys.modules, "wandb", fake)
    scored = [group("a", ["yes", "no"]), group("b", ["no"])]

    def log(run_log: RunLog, step: int) -> None:
        groups = sample_groups(
            step=step, scored=scored, prompts=["pa", "pb"], ground_truths=["A", "B"], ranks=[0.1, 0.9],
            advantages=[0.7, -0.7, 0.0], trained_version=3, count=4, max_chars=100, seed=step,
        )  # fmt: skip
        run_log.log_samples(step, groups)
        run_log.log_step(step_record(step))

    first = RunLog(tmp_path, "r", WandbConfig(mode="offline"), {})
    for step in range(3):
        log(first, step)
    first.close()
    resumed = RunLog(tmp_path, "r", WandbConfig(mode="offline"), {}, resume=True)
    resumed.rewind(1)  # steps 1 and 2 run again
    for step in range(1, 4):
        log(resumed, step)
    resumed.close()

    lines = [json.loads(line) for line in (tmp_path / SAMPLES_FILE).read_text().splitlines()]
    assert [(line["step"], line["question_id"]) for line in lines] == [(s, q) for s in range(4) for q in ("b", "a")]
    assert [len(line["responses"]) for line in lines[:2]] == [1, 2]
    assert lines[1]["responses"][0]["advantage"] == 0.7 and lines[1]["responses"][0]["correct"] is True
    sent = [step for _, step, keys in fake.logged if "samples" in keys]
    assert sent == [0, 1, 2, 3]  # W&B got each step's table once
    columns, rows = tables[0]
    assert columns[-len(SAMPLE_COLUMNS) :] == list(SAMPLE_COLUMNS) and len(rows) == 3  # one row per response
