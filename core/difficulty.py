"""The difficulty table (E3_SPEC section 1): per-question rollout statistics and difficulty ranks.

One row per training question, keyed by a stable string id. Statistics (`attempts`, `correct`, `last_step`)
accumulate with every `observe`; ranks change only when `recompute_ranks` is called (the caller decides when: at
the end of each epoch as in the reference, or every K steps).

Rank is a difficulty percentile in [0, 1), 0 = easiest: questions are sorted by mean accuracy (0 when never
sampled), highest first, and `rank = position / N`. With `ties="average"` (default) tied questions share the mean
of their positions; `ties="index"` breaks ties by table order, as the reference does. Before the first recompute,
a question's rank is its initial rank, or 0.5 when it has none. `index_ranks` gives the same order with ties broken
by table order, for rules that select "the easiest p fraction" (the length bias, E3_SPEC section 5): a threshold
on an averaged rank would select all of a tied group or none of it.

Each question also keeps its last `window` outcomes (`recent`, oldest first, `"1"` right and `"0"` wrong), from
which `window_counts` gives the recent attempts and successes (the `knapsack` allocator's p, `budget.p_window`).

The table persists as Parquet (`write_parquet` / `read_parquet`) with columns question_id, attempts, correct,
accuracy, rank, last_step, recent, and the dataset's fingerprint in the schema metadata so that a table
saved for one dataset is never loaded into another. A file or checkpoint state without `recent` (written before
the column existed) loads with empty windows.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from core.config import TIES, Ties

DEFAULT_RANK = 0.5
"""Rank of a question that has no initial rank, until ranks are first recomputed (E3_SPEC section 1)."""

NEVER_SEEN = -1
"""`last_step` of a question no rollout has been observed for."""

_META_FINGERPRINT = b"e3.fingerprint"
_COLUMNS = ("question_id", "attempts", "correct", "accuracy", "rank", "last_step", "recent")
_OPTIONAL_COLUMNS = frozenset({"recent"})
DEFAULT_WINDOW = 16
"""Outcomes kept per question by default (`budget.p_window`)."""


def ids_fingerprint(question_ids: Sequence[str]) -> str:
    """Return a SHA-256 hex digest of the ordered question ids (each length-prefixed, so joins cannot collide)."""
    digest = hashlib.sha256()
    for qid in question_ids:
        encoded = qid.encode("utf-8")
        digest.update(len(encoded).to_bytes(8, "little"))
        digest.update(encoded)
    return digest.hexdigest()


def _rank_by_accuracy(accuracy: np.ndarray, ties: Ties) -> np.ndarray:
    """Return `position / N` with questions sorted by descending accuracy (stable), ties averaged if asked."""
    n = len(accuracy)
    order = np.argsort(-accuracy, kind="stable")
    positions = np.empty(n, dtype=np.float64)
    if ties == "index":
        positions[order] = np.arange(n, dtype=np.float64)
    else:
        sorted_acc = accuracy[order]
        starts = np.flatnonzero(np.r_[True, sorted_acc[1:] != sorted_acc[:-1]])
        ends = np.r_[starts[1:], n]  # exclusive
        mean_position = (starts + ends - 1) / 2.0
        positions[order] = np.repeat(mean_position, ends - starts)
    return positions / n


class DifficultyTable:
    """Per-question attempts, correct count, accuracy, rank and last-seen step for a fixed, ordered id list.

    `initial_ranks` (optional, one per id, in [0, 1]; NaN = no rank) seeds the ranks used before the first
    `recompute_ranks`; questions without one start at rank 0.5. Unknown ids raise KeyError naming them.
    """

    def __init__(
        self,
        question_ids: Sequence[str],
        initial_ranks: Sequence[float] | None = None,
        ties: Ties = Ties.average,
        fingerprint: str | None = None,
        window: int = DEFAULT_WINDOW,
    ) -> None:
        """A table of `question_ids` (unique, in dataset order). `fingerprint` names the dataset in the table's
        saved files, so that a file only loads into a table of the same dataset; by default it is the SHA-256
        of the ordered ids (the scheduler passes the dataset's own, which covers the answers too). `window`: how
        many of each question's last outcomes it keeps (>= 1)."""
        if ties not in TIES:
            raise ValueError(f"ties must be one of {', '.join(TIES)}, got ties={ties!r}")
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ValueError(f"window must be an integer >= 1, got window={window!r}")
        self._window = window
        ids = list(question_ids)
        not_str = [qid for qid in ids if not isinstance(qid, str)]
        if not_str:
            raise TypeError(f"question ids must be str; first non-str ids: {not_str[:5]!r}")
        self._index = {qid: i for i, qid in enumerate(ids)}
        if len(self._index) != len(ids):
            duplicates = sorted(qid for qid, count in Counter(ids).items() if count > 1)
            raise ValueError(f"question ids must be unique; duplicates: {duplicates[:10]}")
        n = len(ids)
        self._ids = ids
        self._ties: Ties = ties
        self._fingerprint = fingerprint if fingerprint is not None else ids_fingerprint(ids)
        self._attempts = np.zeros(n, dtype=np.int64)
        self._correct = np.zeros(n, dtype=np.int64)
        self._last_step = np.full(n, NEVER_SEEN, dtype=np.int64)
        self._rank = np.full(n, DEFAULT_RANK, dtype=np.float64)
        self._recent = [""] * n
        if initial_ranks is not None:
            self._rank = self._checked_initial_ranks(initial_ranks, n)

    @staticmethod
    def _checked_initial_ranks(initial_ranks: Sequence[float], n: int) -> np.ndarray:
        """Validate initial ranks (length n, in [0, 1] or NaN) and replace NaN by the default rank."""
        ranks = np.asarray(initial_ranks, dtype=np.float64)
        if ranks.shape != (n,):
            raise ValueError(f"initial_ranks must have one rank per question ({n}), got shape {ranks.shape}")
        bad = np.flatnonzero(~np.isnan(ranks) & ((ranks < 0) | (ranks > 1)))
        if len(bad):
            pairs = [(int(i), float(ranks[i])) for i in bad[:10]]
            raise ValueError(f"initial ranks must lie in [0, 1]; bad (position, rank): {pairs}")
        return np.where(np.isnan(ranks), DEFAULT_RANK, ranks)

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, question_id: object) -> bool:
        return question_id in self._index

    @property
    def fingerprint(self) -> str:
        """The dataset's fingerprint; a saved table only loads into a table with the same one."""
        return self._fingerprint

    @property
    def window(self) -> int:
        """How many of each question's last outcomes the table keeps."""
        return self._window

    @property
    def accuracy(self) -> np.ndarray:
        """Per-question `correct / attempts` in table order, 0 where never sampled (a fresh array)."""
        return np.divide(self._correct, self._attempts, out=np.zeros(len(self._ids)), where=self._attempts > 0)

    @property
    def coverage(self) -> float:
        """Share of the table's questions answered correctly at least once (0.0 for an empty table)."""
        return float((self._correct > 0).mean()) if len(self._ids) else 0.0

    def _positions(self, question_ids: Iterable[str]) -> np.ndarray:
        """Map ids to table positions; KeyError naming every unknown id (first 10)."""
        ids = list(question_ids)
        try:
            return np.fromiter((self._index[qid] for qid in ids), dtype=np.int64, count=len(ids))
        except KeyError:
            unknown = [qid for qid in ids if qid not in self._index]
            raise KeyError(f"{len(unknown)} unknown question ids, e.g. {unknown[:10]!r}") from None

    def observe(self, question_ids: Sequence[str], correct: Sequence[bool | int], step: int | None = None) -> None:
        """Add one rollout per entry: `question_ids[i]` was answered, correctly iff `correct[i]` (bool or 0/1).

        Ids may repeat (their outcomes enter the question's window in the given order). With `step`, every listed
        question's `last_step` becomes `step`. Ranks do not change.
        Raises (changing nothing) on unknown ids, mismatched lengths or correctness values other than 0/1.
        """
        positions = self._positions(question_ids)
        flags = np.asarray(correct)
        if flags.shape != positions.shape:
            raise ValueError(f"correct must have one entry per question id: {flags.shape} vs {positions.shape}")
        if flags.size and not np.isin(flags, (0, 1)).all():
            raise ValueError(f"correct must be bool or 0/1, got values {np.unique(flags)[:10].tolist()}")
        if step is not None and step < 0:
            raise ValueError(f"step must be >= 0, got step={step}")
        np.add.at(self._attempts, positions, 1)
        np.add.at(self._correct, positions, flags.astype(np.int64))
        for position, flag in zip(positions.tolist(), flags.astype(np.int64).tolist(), strict=True):
            self._recent[position] = (self._recent[position] + "01"[flag])[-self._window :]
        if step is not None:
            self._last_step[positions] = step

    def recompute_ranks(self) -> None:
        """Re-rank every question from its accumulated accuracy (never-sampled questions count as accuracy 0)."""
        if len(self._ids):
            self._rank = _rank_by_accuracy(self.accuracy, self._ties)

    def ranks(self, question_ids: Sequence[str]) -> list[float]:
        """Return the current rank of each given question, in the given order."""
        return self._rank[self._positions(question_ids)].tolist()

    def counts(self, question_ids: Sequence[str]) -> list[tuple[int, int]]:
        """(attempts, correct) observed so far of each of `question_ids`, in their order."""
        positions = self._positions(question_ids)
        return [(int(self._attempts[i]), int(self._correct[i])) for i in positions]

    def window_counts(self, question_ids: Sequence[str]) -> list[tuple[int, int]]:
        """(attempts, correct) among the last `window` outcomes of each of `question_ids`, in their order."""
        positions = self._positions(question_ids)
        return [(len(self._recent[i]), self._recent[i].count("1")) for i in positions]

    def recent_outcomes(self, question_ids: Sequence[str]) -> list[str]:
        """The kept outcomes of each of `question_ids`, oldest first (`"1"` right, `"0"` wrong)."""
        return [self._recent[i] for i in self._positions(question_ids)]

    def index_ranks(self, question_ids: Sequence[str]) -> list[float]:
        """Return each given question's rank with ties broken by table order (the reference's index ranks).

        Questions are ordered by their current rank (easiest first, ties by table position) and get
        `position / N`, so `index_rank <= p` selects exactly the easiest `floor(p * N) + 1` questions whatever the
        tie policy (E3_SPEC section 5: the length bias's "easiest p fraction"). With `ties="index"`, after a
        recompute, these equal `ranks()`.
        """
        order = np.argsort(self._rank, kind="stable")
        index_rank = np.empty(len(self._ids), dtype=np.float64)
        index_rank[order] = np.arange(len(self._ids), dtype=np.float64) / max(len(self._ids), 1)
        return index_rank[self._positions(question_ids)].tolist()

    def to_arrow(self) -> pa.Table:
        """Return the table as a pyarrow Table (columns as in the module docstring, fingerprint in metadata)."""
        columns = [
            pa.array(self._ids, type=pa.string()),
            pa.array(self._attempts),
            pa.array(self._correct),
            pa.array(self.accuracy),
            pa.array(self._rank),
            pa.array(self._last_step),
            pa.array(self._recent, type=pa.string()),
        ]
        return pa.Table.from_arrays(
            columns, names=list(_COLUMNS), metadata={_META_FINGERPRINT: self._fingerprint.encode()}
        )

    def to_rows(self) -> list[dict[str, Any]]:
        """Return one dict per question (for logging tables, e.g. to W&B)."""
        return self.to_arrow().to_pylist()

    def write_parquet(self, path: str | os.PathLike[str]) -> None:
        """Write the table to a Parquet file at `path` (atomically: a temporary file is renamed into place)."""
        tmp_path = f"{os.fspath(path)}.tmp"
        pq.write_table(self.to_arrow(), tmp_path)
        os.replace(tmp_path, path)

    def read_parquet(self, path: str | os.PathLike[str]) -> None:
        """Load statistics and ranks written by `write_parquet` into this table, replacing its own.

        An instance method: build the table from the dataset first, then load. Raises ValueError (changing
        nothing) when the file was written for different question ids (fingerprint mismatch) or is malformed.
        """
        table = pq.read_table(path)
        metadata = table.schema.metadata or {}
        saved = metadata.get(_META_FINGERPRINT, b"").decode()
        if saved != self._fingerprint:
            raise ValueError(
                f"difficulty table {os.fspath(path)!r} was built for other questions "
                f"(fingerprint {saved or 'missing'!s} != this dataset's {self._fingerprint})"
            )
        missing = [name for name in _COLUMNS if name not in table.column_names and name not in _OPTIONAL_COLUMNS]
        if missing:
            raise ValueError(f"difficulty table {os.fspath(path)!r} lacks columns {missing}")
        if table.column("question_id").to_pylist() != self._ids:
            raise ValueError(f"difficulty table {os.fspath(path)!r}: question_id column disagrees with its fingerprint")
        self._load_arrays(
            attempts=table.column("attempts").to_numpy(),
            correct=table.column("correct").to_numpy(),
            rank=table.column("rank").to_numpy(),
            last_step=table.column("last_step").to_numpy(),
            recent=table.column("recent").to_pylist() if "recent" in table.column_names else None,
        )

    def state_dict(self) -> dict[str, Any]:
        """Return the table's state (fingerprint and per-question arrays as lists) for a checkpoint."""
        return {
            "fingerprint": self._fingerprint,
            "attempts": self._attempts.tolist(),
            "correct": self._correct.tolist(),
            "rank": self._rank.tolist(),
            "last_step": self._last_step.tolist(),
            "recent": list(self._recent),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore state from `state_dict`; ValueError (changing nothing) if it was made for other question ids."""
        if state.get("fingerprint") != self._fingerprint:
            raise ValueError(
                f"difficulty state was built for other question ids "
                f"(fingerprint {state.get('fingerprint')} != {self._fingerprint})"
            )
        self._load_arrays(
            attempts=np.asarray(state["attempts"], dtype=np.int64),
            correct=np.asarray(state["correct"], dtype=np.int64),
            rank=np.asarray(state["rank"], dtype=np.float64),
            last_step=np.asarray(state["last_step"], dtype=np.int64),
            recent=state.get("recent"),
        )

    def _load_arrays(
        self,
        attempts: np.ndarray,
        correct: np.ndarray,
        rank: np.ndarray,
        last_step: np.ndarray,
        recent: Sequence[str] | None = None,
    ) -> None:
        """Validate per-question arrays (shape, ranges) and install copies of them. `recent` None (a file or state
        from before the windows existed): empty windows; longer windows than this table's keep their newest."""
        n = len(self._ids)
        for name, array in (("attempts", attempts), ("correct", correct), ("rank", rank), ("last_step", last_step)):
            if array.shape != (n,):
                raise ValueError(f"{name} must have {n} entries, got shape {array.shape}")
        if (attempts < 0).any() or (correct < 0).any() or (correct > attempts).any():
            raise ValueError("need 0 <= correct <= attempts for every question")
        if np.isnan(rank).any() or (rank < 0).any() or (rank > 1).any():
            raise ValueError("ranks must lie in [0, 1]")
        windows = [""] * n if recent is None else list(recent)
        if len(windows) != n:
            raise ValueError(f"recent must have {n} entries, got {len(windows)}")
        if any(not isinstance(w, str) or w.strip("01") for w in windows):
            raise ValueError("recent outcomes must be strings of '0' and '1'")
        totals = zip(windows, attempts.tolist(), correct.tolist(), strict=True)
        if any(w.count("1") > c or len(w) > a for w, a, c in totals):
            raise ValueError("recent outcomes cannot hold more outcomes or successes than attempts and correct")
        self._recent = [w[-self._window :] for w in windows]
        self._attempts = attempts.astype(np.int64, copy=True)
        self._correct = correct.astype(np.int64, copy=True)
        self._rank = rank.astype(np.float64, copy=True)
        self._last_step = last_step.astype(np.int64, copy=True)

    def __repr__(self) -> str:
        return f"DifficultyTable(questions={len(self._ids)}, ties={self._ties!r}, attempts={int(self._attempts.sum())})"
