"""What is made of evaluations: the `mode=eval` table keyed by source (names with `/` in them), and the
held-out evaluation before training, evaluated once and kept for a resumed run."""

from __future__ import annotations

import json

import pytest

import launch
from core.passk import summarize
from reporting.eval_report import eval_markdown, eval_results

SOURCES = {
    "arithmetic/L1": [[True, True, True, False], [True, True, False, False]],
    "arithmetic/L6": [[False, False, False, False], [True, False, False, False], [False, False, False, False]],
    "math/a|b": [[True, False, True, False]],
}
GREEDY = {"arithmetic/L1": [True, True], "arithmetic/L6": [False, True, False], "math/a|b": [False]}


def greedy_result() -> dict[str, float]:
    """What `greedy_accuracy` returns for GREEDY: `accuracy` and `accuracy/<source>`."""
    everything = [c for flags in GREEDY.values() for c in flags]
    return {"accuracy": sum(everything) / len(everything)} | {
        f"accuracy/{source}": sum(flags) / len(flags) for source, flags in GREEDY.items()
    }


def question_sources() -> list[str]:
    """The data source of each question of SOURCES, in order."""
    return [source for source, questions in SOURCES.items() for _ in questions]


def results_of(sampled: dict[str, float] | None, num_samples: int, ks: list[int]) -> dict:
    """`eval_results` of the questions of SOURCES, greedy answers GREEDY, and `sampled` figures."""
    return eval_results(
        model="m",
        test="t",
        sources_of_questions=question_sources(),
        greedy=greedy_result(),
        sampled=sampled,
        num_samples=num_samples,
        temperature=0.6,
        ks=ks,
    )


def test_rows_are_keyed_by_source_names_containing_slashes():
    ks = [1, 2, 4]
    results = results_of(summarize(SOURCES, ks), num_samples=4, ks=ks)

    assert list(results["sources"]) == ["arithmetic/L1", "arithmetic/L6", "math/a|b"]
    l1, l6 = results["sources"]["arithmetic/L1"], results["sources"]["arithmetic/L6"]
    assert l1["questions"] == 2 and l1["greedy_accuracy"] == 1.0
    assert l1["sampled_accuracy"] == pytest.approx((3 / 4 + 2 / 4) / 2)
    assert l1["pass@1"] == pytest.approx(l1["sampled_accuracy"])  # pass@1 is the mean accuracy
    assert l1["pass@4"] == 1.0
    # L6: one question of three has one correct answer in four; pass@2 of it is 1 - C(3,2)/C(4,2) = 1/2
    assert l6["greedy_accuracy"] == pytest.approx(1 / 3)
    assert l6["sampled_accuracy"] == pytest.approx(1 / 12)
    assert l6["pass@2"] == pytest.approx(0.5 / 3) and l6["pass@4"] == pytest.approx(1 / 3)
    overall = results["overall"]
    assert overall["questions"] == 6 and overall["greedy_accuracy"] == pytest.approx(3 / 6)
    assert overall["sampled_accuracy"] == pytest.approx((0.75 + 0.5 + 0 + 0.25 + 0 + 0.5) / 6)
    assert {"mean@1", "mean@4"}.isdisjoint(overall)  # one mean accuracy, not one per k
    assert json.loads(json.dumps(results)) == results  # eval.json holds exactly this


def test_markdown_has_one_row_per_source_and_no_nan():
    ks = [1, 2, 4]
    results = results_of(summarize(SOURCES, ks), num_samples=4, ks=ks)
    text = eval_markdown(results)

    assert "nan" not in text
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| source")]
    assert [row.split(" | ")[0] for row in rows] == ["| all", "| arithmetic/L1", "| arithmetic/L6", r"| math/a\|b"]
    header = next(line for line in text.splitlines() if line.startswith("| source"))
    assert header == "| source | questions | greedy | sampled (mean of 4) | pass@1 | pass@2 | pass@4 |"
    assert rows[1] == "| arithmetic/L1 | 2 | 1.000 | 0.625 | 0.625 | 0.917 | 1.000 |"
    assert rows[2] == "| arithmetic/L6 | 3 | 0.333 | 0.083 | 0.083 | 0.167 | 0.333 |"


def test_greedy_only_evaluation_has_no_sampled_columns():
    results = results_of(None, num_samples=0, ks=[])
    text = eval_markdown(results)

    assert results["sources"]["arithmetic/L6"] == {"questions": 3, "greedy_accuracy": pytest.approx(1 / 3)}
    assert "| source | questions | greedy |" in text and "pass@" not in text and "nan" not in text


def test_new_run_evaluates_before_training_once_and_persists_it(tmp_path):
    calls = []

    def evaluate():
        calls.append(1)
        return {"accuracy": 0.25, "accuracy/arithmetic/L1": 0.5}

    before = launch.heldout_before(tmp_path, resumed=False, evaluate=evaluate)

    assert before == {"accuracy": 0.25, "accuracy/arithmetic/L1": 0.5} and len(calls) == 1
    assert json.loads((tmp_path / launch.HELDOUT_BEFORE).read_text()) == before
    assert [p.name for p in tmp_path.iterdir()] == [launch.HELDOUT_BEFORE]  # no partial file left behind


def test_resumed_run_reads_the_first_runs_value_and_evaluates_nothing(tmp_path, caplog):
    (tmp_path / launch.HELDOUT_BEFORE).write_text(json.dumps({"accuracy": 0.125}))

    def evaluate():
        raise AssertionError("a resumed run must not evaluate the checkpoint as 'before'")

    assert launch.heldout_before(tmp_path, resumed=True, evaluate=evaluate) == {"accuracy": 0.125}
    (tmp_path / launch.HELDOUT_BEFORE).unlink()
    assert launch.heldout_before(tmp_path, resumed=True, evaluate=evaluate) is None
    assert "is missing" in caplog.text
