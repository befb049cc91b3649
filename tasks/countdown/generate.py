"""Seeded countdown datasets in the RLVR (verl) Parquet schema, with disjoint train / valid / test splits.

The schema is the arithmetic task's (:mod:`tasks.arithmetic.generate`): ``id`` (stable, from the question text),
``data_source`` (``"countdown/L<level>"``), ``prompt`` (one user message), ``ability`` (``"countdown"``),
``reward_model`` (``{"ground_truth": "3 5 7 8 -> 24", "style": "rule"}``), ``extra_info`` (``{"index", "level"}``)
and ``rank`` (offline difficulty percentile from the level, ties averaged).

CLI: ``python -m tasks.countdown.generate --out DIR [--seed S --train N --valid N --test N]``.
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

from tasks.arithmetic import cache
from tasks.arithmetic.generate import SCHEMA, SPLITS, level_ranks, per_level_counts
from tasks.countdown import expression, problems, reward, solver
from tasks.countdown.problems import LEVELS, Puzzle


@dataclass(frozen=True)
class CountdownDataConfig:
    """Which puzzles the countdown task's splits hold."""

    seed: int = 0
    """Seed of the puzzle generator; same seed and sizes give the same files."""
    train_size: int = 2048
    """Puzzles in the training split (spread evenly over the levels)."""
    valid_size: int = 256
    """Puzzles in the validation split."""
    test_size: int = 768
    """Puzzles in the test split (128 a level: `eval_base` measures at least 512)."""
    levels: tuple[int, ...] = field(default_factory=lambda: tuple(sorted(LEVELS)))
    """Difficulty levels to include (keys of ``problems.LEVELS``)."""

    def __post_init__(self) -> None:
        for name in ("train_size", "valid_size", "test_size"):
            if getattr(self, name) < 0:
                raise ValueError(f"CountdownDataConfig.{name} must be >= 0, got {getattr(self, name)}")
        unknown = [level for level in self.levels if level not in LEVELS]
        if unknown or not self.levels or len(set(self.levels)) != len(self.levels):
            raise ValueError(
                f"CountdownDataConfig.levels must be distinct levels of {sorted(LEVELS)}, got {self.levels}"
            )

    def split_sizes(self) -> dict[str, int]:
        """Puzzles per split, by split name."""
        return {"train": self.train_size, "valid": self.valid_size, "test": self.test_size}


def question_id(question: str) -> str:
    """A stable id for a question: the same text always gets the same id."""
    return "countdown-" + hashlib.sha256(question.encode()).hexdigest()[:16]


def generate_splits(config: CountdownDataConfig) -> dict[str, list[Puzzle]]:
    """Disjoint lists of puzzles per split, each in a seeded shuffled order. Deterministic for a config."""
    splits: dict[str, list[Puzzle]] = {name: [] for name in SPLITS}
    counts = {name: per_level_counts(size, config.levels) for name, size in config.split_sizes().items()}
    for level in config.levels:
        drawn = problems.take_puzzles(level, f"data/{config.seed}", sum(c[level] for c in counts.values()))
        for name in SPLITS:
            splits[name].extend(drawn[: counts[name][level]])
            drawn = drawn[counts[name][level] :]
    for name, split in splits.items():
        random.Random(f"data/{config.seed}/order/{name}").shuffle(split)
    return splits


def to_table(split: list[Puzzle]) -> pa.Table:
    """The RLVR-schema Arrow table of a split (see module docstring)."""
    ranks = level_ranks([p.level for p in split])
    rows = [
        {
            "id": question_id(p.question),
            "data_source": f"countdown/L{p.level}",
            "prompt": [{"role": "user", "content": p.question}],
            "ability": "countdown",
            "reward_model": {"ground_truth": p.ground_truth, "style": "rule"},
            "extra_info": {"index": index, "level": p.level},
            "rank": rank,
        }
        for index, (p, rank) in enumerate(zip(split, ranks, strict=True))
    ]
    return pa.Table.from_pylist(rows, schema=SCHEMA)


def write_splits(config: CountdownDataConfig, out_dir: Path) -> dict[str, Path]:
    """Generate the splits and write ``<out_dir>/<split>.parquet``; returns the paths by split name."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, split in generate_splits(config).items():
        paths[name] = out_dir / f"{name}.parquet"
        pq.write_table(to_table(split), paths[name])
    return paths


def ensure_datasets(data_dir: Path, config: CountdownDataConfig) -> dict[str, Path]:
    """The split files for ``config`` under ``data_dir``, generated only when the config or code changed."""
    key = cache.config_key(config, [expression, solver, reward, problems, sys.modules[__name__]])
    data_dir = cache.ensure_built(Path(data_dir), key, lambda tmp: write_splits(config, tmp), asdict(config))
    return {name: data_dir / f"{name}.parquet" for name in SPLITS}


def held_out_questions(config: CountdownDataConfig, splits: Iterable[str] = SPLITS) -> frozenset[str]:
    """The question texts of the given splits (for keeping them out of warm-start data)."""
    generated = generate_splits(config)
    return frozenset(p.question for name in splits for p in generated[name])


def main(argv: list[str] | None = None) -> None:
    """CLI: write the splits to ``--out`` (cached by config) and print their paths."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--seed", type=int, default=CountdownDataConfig.seed)
    parser.add_argument("--train", type=int, default=CountdownDataConfig.train_size)
    parser.add_argument("--valid", type=int, default=CountdownDataConfig.valid_size)
    parser.add_argument("--test", type=int, default=CountdownDataConfig.test_size)
    args = parser.parse_args(argv)
    config = CountdownDataConfig(args.seed, args.train, args.valid, args.test)
    for name, path in ensure_datasets(args.out, config).items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
