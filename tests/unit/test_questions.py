"""A question's history in a run folder, the questions worth a look, and the CLI's one-line errors."""

from __future__ import annotations

import json

import pytest

from core.difficulty import DifficultyTable
from reporting.questions import question_history, questions_html, questions_to_look_at
from reporting.report import main
from reporting.run_log import SAMPLES_FILE
from tests.support.records import step_record

IDS = ["q0", "q1", "q2"]


def write_run(run_dir, with_samples=True):
    """Two epochs of two steps: q0 goes from 0/4 right to 4/4, q1 stays 1/2, q2 is never solved."""
    run_dir.mkdir()
    (run_dir / "difficulty").mkdir()
    table = DifficultyTable(IDS)
    outcomes = [{"q0": [0, 0, 0, 0], "q1": [1, 0], "q2": [0, 0]}, {"q0": [1, 1, 1, 1], "q1": [0, 1], "q2": [0, 0]}]
    records = []
    for epoch, outcome in enumerate(outcomes):
        for qid, flags in outcome.items():
            table.observe([qid] * len(flags), flags, step=2 * epoch + 1)
        table.recompute_ranks()
        table.write_parquet(run_dir / "difficulty" / f"epoch_{epoch}.parquet")
        for k, qids in enumerate((("q0", "q1"), ("q2", "q0"))):
            counts = tuple(len(outcome[q]) // (2 if q == "q0" else 1) for q in qids)
            records.append(step_record(2 * epoch + k, epoch=epoch, question_ids=qids, rollouts_per_question=counts))
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r.to_log()) + "\n" for r in records))
    if with_samples:
        group = {"step": 3, "pick": "hardest", "question_id": "q2", "prompt": "p", "ground_truth": "g", "rank": 0.9,
                 "rollouts": 1, "accuracy": 0.0, "responses": [
                     {"text": "no", "text_chars": 2, "reward": 0.0, "correct": False, "advantage": 0.0, "tokens": 1,
                      "truncated": False, "weights_version": 3, "temperature": 1.0, "staleness": 0}]}  # fmt: skip
        (run_dir / SAMPLES_FILE).write_text(json.dumps(group) + "\n")
    return run_dir


def test_a_questions_history_has_every_epochs_row_and_every_allocation(tmp_path):
    run = write_run(tmp_path / "run")
    history = question_history(run, "q0")
    assert [(r.epoch, r.attempts, r.correct) for r in history.epochs] == [(0, 4, 0), (1, 8, 4)]
    assert [r.epoch_accuracy for r in history.epochs] == [0.0, 1.0]  # each epoch's own attempts
    assert [(a.step, a.rollouts) for a in history.allocations] == [(0, 2), (1, 2), (2, 2), (3, 2)]
    assert history.latest_group is None and question_history(run, "q2").latest_group["step"] == 3


def test_the_questions_worth_a_look_are_the_risers_and_the_never_solved(tmp_path):
    run = write_run(tmp_path / "run")
    risers, never = questions_to_look_at(run)
    assert risers == ["q0"] and never == ["q2"]  # q1: 1/2 then 1/2, no rise
    page = questions_html(run)
    assert "accuracy rose most" in page and "q0" in page and "e1: 1.00" in page


def test_the_cli_prints_a_history_and_names_what_is_missing_in_one_line(tmp_path, capsys):
    run = write_run(tmp_path / "run")
    main([str(run), "--question", "q2"])
    out = capsys.readouterr().out
    assert "question q2" in out and "latest logged group: step 3" in out and "[wrong]" in out
    for args, named in (
        ([str(tmp_path / "nothing"), "--question", "q0"], "nothing"),
        ([str(run), "--question", "q9"], "q9"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            main(args)
        err = capsys.readouterr().err.strip()
        assert exit_info.value.code == 2 and len(err.splitlines()) == 1 and named in err
    bare = write_run(tmp_path / "bare", with_samples=False)
    main([str(bare), "--question", "q0"])
    assert f"no logged group of it in {bare / SAMPLES_FILE}" in capsys.readouterr().out
