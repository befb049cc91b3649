"""Arithmetic problems: difficulty levels, seeded sampling, prompts and worked solutions.

A problem is a sum of non-negative integers. Its difficulty level fixes how many operands it has, how many
digits each operand has, and how many column carries the addition needs. The worked solution adds column by
column from the units, one named line per column (``units: 7+5=12``, then ``tens: 4+8+1=13`` with the carry),
and ends with the final answer line that :mod:`tasks.arithmetic.reward` reads (``Answer: 132``). Naming the
column, rather than leaving the model to count lines, makes the digit to fetch much easier to learn.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator
from dataclasses import dataclass

from tasks.arithmetic.reward import ANSWER_PREFIX

COLUMN_NAMES = ("units", "tens", "hundreds", "thousands", "ten-thousands", "hundred-thousands")


@dataclass(frozen=True)
class LevelSpec:
    """What a difficulty level asks for: ``operands`` numbers of exactly ``digits`` digits each, whose
    column-wise addition needs between ``min_carries`` and ``max_carries`` carries (None: no upper bound)."""

    level: int
    operands: int
    digits: int
    min_carries: int = 0
    max_carries: int | None = None

    def __post_init__(self) -> None:
        if self.operands < 2 or self.digits < 1:
            raise ValueError(f"level {self.level}: need operands >= 2 and digits >= 1, got {self}")
        if self.max_carries is not None and self.max_carries < self.min_carries:
            raise ValueError(f"level {self.level}: max_carries < min_carries in {self}")
        if self.digits > len(COLUMN_NAMES):
            raise ValueError(f"level {self.level}: digits must be <= {len(COLUMN_NAMES)}, got {self.digits}")
        if self.min_carries > self.digits:
            raise ValueError(f"level {self.level}: min_carries {self.min_carries} > digits {self.digits}")


# Easiest first. More carries and more operands each make a sum harder for a small model. A third column
# (3-digit operands) is much harder still: a warm-start of a few minutes leaves it at ~0%, so all levels use
# 2-digit operands.
LEVELS: dict[int, LevelSpec] = {
    spec.level: spec
    for spec in (
        LevelSpec(1, operands=2, digits=2, max_carries=0),
        LevelSpec(2, operands=2, digits=2, min_carries=1, max_carries=1),
        LevelSpec(3, operands=2, digits=2, min_carries=2),
        LevelSpec(4, operands=3, digits=2, max_carries=1),
        LevelSpec(5, operands=3, digits=2, min_carries=2),
        LevelSpec(6, operands=4, digits=2),
    )
}


@dataclass(frozen=True)
class Problem:
    """One sum to compute, tagged with the level it was drawn for."""

    level: int
    operands: tuple[int, ...]

    @property
    def question(self) -> str:
        """The user message, e.g. ``Compute 47 + 85.``; unique per problem, so it is the dedupe key."""
        return "Compute " + " + ".join(str(x) for x in self.operands) + "."

    @property
    def answer(self) -> int:
        """The exact sum."""
        return sum(self.operands)

    def worked_solution(self) -> str:
        """The target response: a ``<column>: a+b(+carry)=s`` line per column from the units, then
        ``Answer: N``."""
        lines = []
        carry = 0
        width = max(len(str(x)) for x in self.operands)
        for column in range(width):
            terms = [(x // 10**column) % 10 for x in self.operands if x >= 10**column or column == 0]
            if carry:
                terms.append(carry)
            total = sum(terms)
            lines.append(f"{COLUMN_NAMES[column]}: " + "+".join(str(t) for t in terms) + f"={total}")
            carry = total // 10
        lines.append(f"{ANSWER_PREFIX} {self.answer}")
        return "\n".join(lines)


def count_carries(operands: tuple[int, ...]) -> int:
    """How many columns of the column-wise addition of ``operands`` produce a non-zero carry."""
    carries = 0
    carry = 0
    for column in range(max(len(str(x)) for x in operands)):
        carry = (sum((x // 10**column) % 10 for x in operands) + carry) // 10
        carries += carry > 0
    return carries


def sample_problem(spec: LevelSpec, rng: random.Random, max_tries: int = 10_000) -> Problem:
    """Draw one problem of level ``spec`` with ``rng`` (rejection sampling on the carry count)."""
    low, high = 10 ** (spec.digits - 1), 10**spec.digits - 1
    for _ in range(max_tries):
        operands = tuple(rng.randint(low, high) for _ in range(spec.operands))
        carries = count_carries(operands)
        if carries >= spec.min_carries and (spec.max_carries is None or carries <= spec.max_carries):
            return Problem(spec.level, operands)
    raise RuntimeError(f"no problem satisfying {spec} in {max_tries} draws")


def unique_problems(level: int, seed: str, exclude: frozenset[str] = frozenset()) -> Iterator[Problem]:
    """Stream of distinct problems of ``level``, seeded by the string ``seed``, skipping questions in
    ``exclude``. Ends when 1000 draws in a row bring nothing new (the level is about used up)."""
    if level not in LEVELS:
        raise ValueError(f"unknown level {level}; known levels: {sorted(LEVELS)}")
    spec = LEVELS[level]
    rng = random.Random(f"{seed}/L{level}")
    seen = set(exclude)
    stale = 0
    while stale < 1000:
        problem = sample_problem(spec, rng)
        if problem.question in seen:
            stale += 1
            continue
        stale = 0
        seen.add(problem.question)
        yield problem


def take_problems(level: int, seed: str, count: int, exclude: frozenset[str] = frozenset()) -> list[Problem]:
    """The first ``count`` problems of :func:`unique_problems`; raises ValueError when the level has fewer."""
    taken = list(itertools.islice(unique_problems(level, seed, exclude), count))
    if len(taken) < count:
        raise ValueError(f"level {level} has only about {len(taken)} distinct problems left, {count} asked")
    return taken
