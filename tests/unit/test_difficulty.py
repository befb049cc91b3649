"""Tests for core.difficulty: statistics, ranks with both tie policies, persistence (E3_SPEC section 1)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.difficulty import DifficultyTable

IDS = ["a", "b", "c", "d", "e"]


def observed_table(ties: str = "average") -> DifficultyTable:
    """Accuracies a 1.0, b 0.5, c 0.5 (2/4 vs 1/2), d never sampled, e 0.0."""
    table = DifficultyTable(IDS, ties=ties)
    table.observe(["a", "b", "b", "c", "c", "c", "c", "e"], [1, 1, 0, True, False, True, False, 0], step=3)
    return table


def plain_ranks(accuracy: list[float], ties: str) -> list[float]:
    """Ranks by a plain Python sort: highest accuracy first, position / N, ties by index or averaged."""
    n = len(accuracy)
    order = sorted(range(n), key=lambda i: -accuracy[i])  # sorted() is stable: ties keep table order
    position = {i: p for p, i in enumerate(order)}
    if ties == "index":
        return [position[i] / n for i in range(n)]
    return [
        sum(position[j] for j in range(n) if accuracy[j] == accuracy[i])
        / sum(1 for j in range(n) if accuracy[j] == accuracy[i])
        / n
        for i in range(n)
    ]


def test_default_rank_is_half_and_initial_ranks_are_used() -> None:
    assert DifficultyTable(IDS).ranks(IDS) == [0.5] * 5
    table = DifficultyTable(IDS, initial_ranks=[0.1, float("nan"), 0.9, 0.0, 1.0])
    assert table.ranks(["c", "b", "a"]) == [0.9, 0.5, 0.1]


def test_observe_accumulates_and_leaves_ranks() -> None:
    table = observed_table()
    rows = {row["question_id"]: row for row in table.to_rows()}
    assert rows["b"] == {
        "question_id": "b",
        "attempts": 2,
        "correct": 1,
        "accuracy": 0.5,
        "rank": 0.5,
        "last_step": 3,
        "recent": "10",
    }
    assert (rows["d"]["attempts"], rows["d"]["accuracy"], rows["d"]["last_step"]) == (0, 0.0, -1)
    assert table.ranks(IDS) == [0.5] * 5  # ranks change only on recompute
    table.observe(["a"], [0], step=4)
    assert table.to_rows()[0]["last_step"] == 4
    assert table.accuracy.tolist() == [0.5, 0.5, 0.5, 0.0, 0.0]


def test_ties_average_and_index() -> None:
    average = observed_table("average")
    average.recompute_ranks()
    # Sorted: a (pos 0), b c (pos 1, 2), d e (pos 3, 4; d never sampled counts as accuracy 0).
    assert average.ranks(IDS) == [0.0, 0.3, 0.3, 0.7, 0.7]
    index = observed_table("index")
    index.recompute_ranks()
    assert index.ranks(IDS) == [0.0, 0.2, 0.4, 0.6, 0.8]


@settings(max_examples=100, deadline=None)
@given(
    outcomes=st.lists(st.lists(st.integers(0, 1), max_size=5), min_size=1, max_size=30),
    ties=st.sampled_from(["average", "index"]),
)
def test_ranks_match_a_plain_sort(outcomes: list[list[int]], ties: str) -> None:
    ids = [f"q{i}" for i in range(len(outcomes))]
    table = DifficultyTable(ids, ties=ties)
    flat_ids = [qid for qid, results in zip(ids, outcomes, strict=True) for _ in results]
    table.observe(flat_ids, [x for results in outcomes for x in results])
    table.recompute_ranks()
    accuracy = [sum(r) / len(r) if r else 0.0 for r in outcomes]
    assert table.ranks(ids) == pytest.approx(plain_ranks(accuracy, ties), abs=1e-12)


def test_unknown_ids_raise_key_error_naming_them() -> None:
    table = DifficultyTable(IDS)
    with pytest.raises(KeyError, match=r"'zz'.*'yy'"):
        table.observe(["a", "zz", "yy"], [1, 0, 1])
    with pytest.raises(KeyError, match=r"'zz'"):
        table.ranks(["zz"])
    assert table.to_rows()[0]["attempts"] == 0


@pytest.mark.parametrize(
    ("correct", "message"),
    [([1, 2], r"bool or 0/1, got values \[1, 2\]"), ([1], r"one entry per question id")],
)
def test_bad_correctness_raises_and_changes_nothing(correct: list[int], message: str) -> None:
    table = DifficultyTable(IDS)
    with pytest.raises(ValueError, match=message):
        table.observe(["a", "b"], correct)
    assert table.state_dict() == DifficultyTable(IDS).state_dict()


def test_construction_validation() -> None:
    with pytest.raises(ValueError, match=r"duplicates: \['a'\]"):
        DifficultyTable(["a", "b", "a"])
    with pytest.raises(TypeError, match=r"must be str"):
        DifficultyTable(["a", 2])  # type: ignore[list-item]
    with pytest.raises(ValueError, match=r"\(1, 1.5\)"):
        DifficultyTable(["a", "b"], initial_ranks=[0.1, 1.5])
    with pytest.raises(ValueError, match=r"one rank per question \(2\)"):
        DifficultyTable(["a", "b"], initial_ranks=[0.1])
    with pytest.raises(ValueError, match=r"ties='random'"):
        DifficultyTable(["a"], ties="random")  # type: ignore[arg-type]


def test_parquet_round_trip(tmp_path: Path) -> None:
    table = observed_table()
    table.recompute_ranks()
    path = tmp_path / "difficulty.parquet"
    table.write_parquet(path)
    on_disk = pq.read_table(path)
    assert on_disk.column_names == ["question_id", "attempts", "correct", "accuracy", "rank", "last_step", "recent"]
    assert on_disk.schema.metadata[b"e3.fingerprint"].decode() == table.fingerprint
    restored = DifficultyTable(IDS)
    restored.read_parquet(path)
    assert restored.to_rows() == table.to_rows()
    assert restored.state_dict() == table.state_dict()


@pytest.mark.parametrize("other_ids", [["a", "b", "c", "d"], ["b", "a", "c", "d", "e"], ["a", "b", "c", "d", "f"]])
def test_parquet_refuses_other_question_ids(tmp_path: Path, other_ids: list[str]) -> None:
    path = tmp_path / "difficulty.parquet"
    observed_table().write_parquet(path)
    other = DifficultyTable(other_ids)
    before = other.state_dict()
    with pytest.raises(ValueError, match=r"built for other questions"):
        other.read_parquet(path)
    assert other.state_dict() == before


def test_state_round_trip_and_refusal() -> None:
    table = observed_table()
    table.recompute_ranks()
    restored = DifficultyTable(IDS)
    restored.load_state_dict(table.state_dict())
    assert restored.to_rows() == table.to_rows()
    restored.observe(["d"], [1])
    table.observe(["d"], [1])
    restored.recompute_ranks()
    table.recompute_ranks()
    assert restored.ranks(IDS) == table.ranks(IDS)
    with pytest.raises(ValueError, match=r"other question ids"):
        DifficultyTable(["x"]).load_state_dict(table.state_dict())
    with pytest.raises(ValueError, match=r"0 <= correct <= attempts"):
        DifficultyTable(IDS).load_state_dict({**table.state_dict(), "correct": [9, 0, 0, 0, 0]})


def test_large_table_recompute() -> None:
    ids = [str(i) for i in range(10_240)]
    rng = np.random.default_rng(0)
    table = DifficultyTable(ids, initial_ranks=rng.uniform(size=len(ids)))
    picked = rng.integers(0, len(ids), size=512)
    table.observe([ids[i] for i in picked], rng.integers(0, 2, size=512), step=1)
    table.recompute_ranks()
    ranks = np.asarray(table.ranks(ids))
    assert ranks.min() >= 0.0 and ranks.max() < 1.0
    # Everything never sampled or always wrong shares one (averaged) rank, the hardest.
    zero = table.accuracy == 0
    assert np.unique(ranks[zero]).size == 1 and ranks[zero][0] == ranks.max()


@settings(max_examples=100, deadline=None)
@given(st.lists(st.lists(st.integers(0, 1), max_size=4), min_size=1, max_size=40))
def test_index_ranks_are_the_reference_ranks_whatever_the_tie_policy(outcomes: list[list[int]]) -> None:
    ids = [f"q{i}" for i in range(len(outcomes))]
    tables = {ties: DifficultyTable(ids, ties=ties) for ties in ("average", "index")}
    for table in tables.values():
        table.observe([qid for qid, o in zip(ids, outcomes, strict=True) for _ in o], [c for o in outcomes for c in o])
        table.recompute_ranks()
    reference = tables["index"].ranks(ids)
    assert tables["average"].index_ranks(ids) == reference
    assert tables["index"].index_ranks(ids) == reference


def test_length_bias_selects_the_easiest_fraction_when_many_questions_tie() -> None:
    # 1,000 questions, 300 always solved: with averaged ties they share rank 149.5 / 1000 > 0.1, so a threshold on
    # the shared rank selects none of them; the easiest 10% by index ranks are positions 0..100, 101 questions.
    ids = [f"q{i}" for i in range(1000)]
    table = DifficultyTable(ids, ties="average")
    solved, mixed = ids[:300], ids[300:]
    table.observe(solved * 2 + mixed * 2, [1] * 600 + [1] * 700 + [0] * 700)
    table.recompute_ranks()
    assert sum(r <= 0.1 for r in table.ranks(ids)) == 0
    selected = [qid for qid, r in zip(ids, table.index_ranks(ids), strict=True) if r <= 0.1]
    assert selected == ids[:101]  # ties broken by table order, as the reference's ranks break them
    # before any recompute the initial ranks tie too (all 0.5): the same rule still selects the easiest fraction
    fresh = DifficultyTable(ids)
    assert sum(r <= 0.1 for r in fresh.index_ranks(ids)) == 101


def test_the_window_keeps_the_last_outcomes_in_order() -> None:
    table = DifficultyTable(IDS, window=3)
    assert table.window == 3 and table.window_counts(IDS) == [(0, 0)] * 5
    table.observe(["a", "b", "a", "a", "a"], [1, 0, 0, 1, 1])
    assert table.recent_outcomes(["a", "b"]) == ["011", "0"]  # a's first outcome fell out
    assert table.window_counts(["a", "b", "c"]) == [(3, 2), (1, 0), (0, 0)]
    assert table.counts(["a"]) == [(4, 3)]  # the cumulative counts keep everything
    with pytest.raises(ValueError, match=r"window must be an integer >= 1"):
        DifficultyTable(IDS, window=0)


@settings(max_examples=100, deadline=None)
@given(outcomes=st.lists(st.tuples(st.sampled_from(IDS), st.integers(0, 1)), max_size=60), window=st.integers(1, 8))
def test_the_window_matches_the_tail_of_each_history(outcomes: list[tuple[str, int]], window: int) -> None:
    table = DifficultyTable(IDS, window=window)
    for start in range(0, len(outcomes), 7):  # several observe calls, ids repeating within one
        chunk = outcomes[start : start + 7]
        table.observe([q for q, _ in chunk], [c for _, c in chunk])
    for qid in IDS:
        history = [c for q, c in outcomes if q == qid][-window:]
        assert table.window_counts([qid]) == [(len(history), sum(history))]


def test_the_window_survives_parquet_and_state_and_old_files_load_empty(tmp_path: Path) -> None:
    table = observed_table()
    path = tmp_path / "difficulty.parquet"
    table.write_parquet(path)
    restored = DifficultyTable(IDS)
    restored.read_parquet(path)
    assert restored.recent_outcomes(IDS) == table.recent_outcomes(IDS) == ["1", "10", "1010", "", "0"]
    again = DifficultyTable(IDS)
    again.load_state_dict(table.state_dict())
    assert again.window_counts(IDS) == table.window_counts(IDS)
    narrow = DifficultyTable(IDS, window=2)
    narrow.read_parquet(path)
    assert narrow.recent_outcomes(["c"]) == ["10"]  # a narrower table keeps the newest
    old = pq.read_table(path).drop_columns(["recent"])  # a file from before the window existed
    pq.write_table(old, tmp_path / "old.parquet")
    legacy = DifficultyTable(IDS)
    legacy.read_parquet(tmp_path / "old.parquet")
    assert legacy.counts(IDS) == table.counts(IDS) and legacy.window_counts(IDS) == [(0, 0)] * 5
    state = table.state_dict()
    del state["recent"]
    legacy.load_state_dict(state)
    assert legacy.window_counts(IDS) == [(0, 0)] * 5


def test_inconsistent_windows_are_refused() -> None:
    table = observed_table()
    state = table.state_dict()
    state["recent"] = ["1", "11", "1010", "", "0"]  # b: 2 successes in the window but 1 correct in all
    with pytest.raises(ValueError, match=r"recent outcomes cannot hold more"):
        DifficultyTable(IDS).load_state_dict(state)
    state["recent"] = ["1", "1x", "1010", "", "0"]
    with pytest.raises(ValueError, match=r"strings of '0' and '1'"):
        DifficultyTable(IDS).load_state_dict(state)


def test_coverage_is_the_share_of_questions_ever_answered_correctly() -> None:
    table = DifficultyTable(["a", "b", "c", "d"])
    assert table.coverage == 0.0
    table.observe(["a", "a", "b"], [0, 1, 0])
    assert table.coverage == 0.25
    table.observe(["b", "c"], [1, 0])  # b solved later: it counts from then on, whatever came before
    assert table.coverage == 0.5
    assert DifficultyTable([]).coverage == 0.0
