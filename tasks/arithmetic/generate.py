"""Seeded arithmetic datasets in the RLVR (verl) Parquet schema, with disjoint train / valid / test splits.

Columns, one row per question:
  ``id`` (str, stable: derived from the question text), ``data_source`` (``"arithmetic/L<level>"``),
  ``prompt`` (list of ``{"role", "content"}``: one user message), ``ability`` (``"arithmetic"``),
  ``reward_model`` (``{"ground_truth": str, "style": "rule"}``),
  ``extra_info`` (``{"index": int, "level": int}``, index = row position in its split),
  ``rank`` (offline difficulty percentile in [0, 1): questions sorted by level, tied questions share the mean
  of their positions, as E3's difficulty table does).

CLI: ``python -m tasks.arithmetic.generate --out DIR [--seed S --train N --valid N --test N]``.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import sys
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from tasks.arithmetic import cache, problems
from tasks.arithmetic.problems import LEVELS, Problem

SPLITS = ("train", "valid", "test")
SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("data_source", pa.string()),
        (
            "prompt",
            pa.list_(pa.field("element", pa.struct([("role", pa.string()), ("content", pa.string())]))),
        ),
        ("ability", pa.string()),
        ("reward_model", pa.struct([("ground_truth", pa.string()), ("style", pa.string())])),
        ("extra_info", pa.struct([("index", pa.int64()), ("level", pa.int64())])),
        ("rank", pa.float64()),
    ]
)


@dataclass(frozen=True)
class ArithmeticDataConfig:
    """Which questions the arithmetic task's splits hold."""

    seed: int = 0
    """Seed of the question generator; same seed and sizes give the same files."""
    train_size: int = 2048
    """Questions in the training split (spread evenly over the levels)."""
    valid_size: int = 256
    """Questions in the validation split."""
    test_size: int = 512
    """Questions in the test split."""
    levels: tuple[int, ...] = field(default_factory=lambda: tuple(sorted(LEVELS)))
    """Difficulty levels to include (keys of ``problems.LEVELS``)."""

    def __post_init__(self) -> None:
        for name in ("train_size", "valid_size", "test_size"):
            if getattr(self, name) < 0:
                raise ValueError(f"ArithmeticDataConfig.{name} must be >= 0, got {getattr(self, name)}")
        unknown = [level for level in self.levels if level not in LEVELS]
        if unknown or not self.levels or len(set(self.levels)) != len(self.levels):
            raise ValueError(
                f"ArithmeticDataConfig.levels must be distinct levels of {sorted(LEVELS)}, got {self.levels}"
            )

    def split_sizes(self) -> dict[str, int]:
        """Questions per split, by split name."""
        return {"train": self.train_size, "valid": self.valid_size, "test": self.test_size}


def per_level_counts(total: int, levels: tuple[int, ...]) -> dict[int, int]:
    """``total`` spread over ``levels`` as evenly as possible (the first levels take the remainder)."""
    base, extra = divmod(total, len(levels))
    return {level: base + (i < extra) for i, level in enumerate(levels)}


def question_id(question: str) -> str:
    """A stable id for a question: the same text always gets the same id."""
    return "arith-" + hashlib.sha256(question.encode()).hexdigest()[:16]


def generate_splits(config: ArithmeticDataConfig) -> dict[str, list[Problem]]:
    """Disjoint lists of problems per split, each in a seeded shuffled order. Deterministic for a config."""
    splits: dict[str, list[Problem]] = {name: [] for name in SPLITS}
    counts = {name: per_level_counts(size, config.levels) for name, size in config.split_sizes().items()}
    for level in config.levels:
        drawn = problems.take_problems(level, f"data/{config.seed}", sum(c[level] for c in counts.values()))
        for name in SPLITS:
            splits[name].extend(drawn[: counts[name][level]])
            drawn = drawn[counts[name][level] :]
    for name, split in splits.items():
        random.Random(f"data/{config.seed}/order/{name}").shuffle(split)
    return splits


def level_ranks(levels: list[int]) -> list[float]:
    """Difficulty percentile in [0, 1) of each item from its level: sorted by level, each tie group gets the
    mean of the positions it occupies, divided by the number of items."""
    n = len(levels)
    below = 0
    rank_of: dict[int, float] = {}
    for level in sorted(set(levels)):
        count = levels.count(level)
        rank_of[level] = (below + (count - 1) / 2) / n
        below += count
    return [rank_of[level] for level in levels]


def to_table(split: list[Problem]) -> pa.Table:
    """The RLVR-schema Arrow table of a split (see module docstring)."""
    ranks = level_ranks([p.level for p in split])
    rows = [
        {
            "id": question_id(p.question),
            "data_source": f"arithmetic/L{p.level}",
            "prompt": [{"role": "user", "content": p.question}],
            "ability": "arithmetic",
            "reward_model": {"ground_truth": str(p.answer), "style": "rule"},
            "extra_info": {"index": index, "level": p.level},
            "rank": rank,
        }
        for index, (p, rank) in enumerate(zip(split, ranks, strict=True))
    ]
    return pa.Table.from_pylist(rows, schema=SCHEMA)


def write_splits(config: ArithmeticDataConfig, out_dir: Path) -> dict[str, Path]:
    """Generate the splits and write ``<out_dir>/<split>.parquet``; returns the paths by split name."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, split in generate_splits(config).items():
        paths[name] = out_dir / f"{name}.parquet"
        pq.write_table(to_table(split), paths[name])
    return paths


def ensure_datasets(data_dir: Path, config: ArithmeticDataConfig) -> dict[str, Path]:
    """The split files for ``config`` under ``data_dir``, generated only when the config or code changed."""
    key = cache.config_key(config, [problems, sys.modules[__name__]])
    data_dir = cache.ensure_built(Path(data_dir), key, lambda tmp: write_splits(config, tmp), asdict(config))
    return {name: data_dir / f"{name}.parquet" for name in SPLITS}


def held_out_questions(config: ArithmeticDataConfig, splits: Iterable[str] = SPLITS) -> frozenset[str]:
    """The question texts of the given splits (for keeping them out of warm-start data)."""
    generated = generate_splits(config)
    return frozenset(p.question for name in splits for p in generated[name])


def main(argv: list[str] | None = None) -> None:
    """CLI: write the splits to ``--out`` (cached by config) and print their paths."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--seed", type=int, default=ArithmeticDataConfig.seed)
    parser.add_argument("--train", type=int, default=ArithmeticDataConfig.train_size)
    parser.add_argument("--valid", type=int, default=ArithmeticDataConfig.valid_size)
    parser.add_argument("--test", type=int, default=ArithmeticDataConfig.test_size)
    args = parser.parse_args(argv)
    config = ArithmeticDataConfig(args.seed, args.train, args.valid, args.test)
    for name, path in ensure_datasets(args.out, config).items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
