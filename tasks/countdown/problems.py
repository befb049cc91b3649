"""Countdown puzzles: difficulty levels, seeded sampling, prompts, ground truths and worked solutions.

A puzzle is a multiset of source numbers and a target; an answer is an expression that uses each source exactly
once and equals the target. A level fixes how many sources there are and how large, the range of the target, and
how many distinct solutions (by the exhaustive solver, :mod:`tasks.countdown.solver`) the puzzle has: fewer
solutions are harder to find. Every puzzle of a level has at least one solution whose steps are all positive
integers; the worked solutions show those, one step a line, then the expression on the answer line that
:mod:`tasks.countdown.reward` reads::

    8-7=1
    1+5=6
    6*3=18
    Answer: ((8-7)+5)*3
"""

from __future__ import annotations

import functools
import itertools
import random
from collections.abc import Iterator
from dataclasses import dataclass

from tasks.countdown.expression import Tree, evaluate, render
from tasks.countdown.reward import ANSWER_PREFIX, format_ground_truth
from tasks.countdown.solver import has_integer_steps, solutions_by_target, solve


@dataclass(frozen=True)
class LevelSpec:
    """A difficulty level: ``sources`` numbers drawn from ``1..max_source``, a target in
    ``[min_target, max_target]``, and between ``min_solutions`` and ``max_solutions`` distinct solutions."""

    level: int
    sources: int
    max_source: int
    min_target: int
    max_target: int
    min_solutions: int
    max_solutions: int

    def __post_init__(self) -> None:
        if self.sources < 2 or self.max_source < 1:
            raise ValueError(f"level {self.level}: need sources >= 2 and max_source >= 1, got {self}")
        if not 1 <= self.min_target <= self.max_target:
            raise ValueError(f"level {self.level}: need 1 <= min_target <= max_target, got {self}")
        if not 1 <= self.min_solutions <= self.max_solutions:
            raise ValueError(f"level {self.level}: need 1 <= min_solutions <= max_solutions, got {self}")

    def accepts(self, target: int, solutions: int) -> bool:
        """Whether a puzzle with this target and this many distinct solutions belongs to the level."""
        return self.min_target <= target <= self.max_target and self.min_solutions <= solutions <= self.max_solutions


UNBOUNDED = 10**6

# Easiest first: three sources and many ways to the target, up to four sources, a large target and one way.
LEVELS: dict[int, LevelSpec] = {
    spec.level: spec
    for spec in (
        LevelSpec(1, sources=3, max_source=12, min_target=1, max_target=40, min_solutions=2, max_solutions=UNBOUNDED),
        LevelSpec(2, sources=3, max_source=12, min_target=1, max_target=80, min_solutions=1, max_solutions=1),
        LevelSpec(3, sources=4, max_source=9, min_target=1, max_target=30, min_solutions=8, max_solutions=UNBOUNDED),
        LevelSpec(4, sources=4, max_source=12, min_target=10, max_target=60, min_solutions=3, max_solutions=7),
        LevelSpec(5, sources=4, max_source=12, min_target=20, max_target=100, min_solutions=2, max_solutions=2),
        LevelSpec(6, sources=4, max_source=12, min_target=30, max_target=150, min_solutions=1, max_solutions=1),
    )
}


@dataclass(frozen=True)
class Puzzle:
    """One puzzle, tagged with the level it was drawn for; ``numbers`` in the order the prompt shows them."""

    level: int
    numbers: tuple[int, ...]
    target: int

    @property
    def question(self) -> str:
        """The user message, e.g. ``Numbers 3 5 7 8. Make 24.``; unique per puzzle up to the order of the
        numbers (puzzles are drawn with sorted numbers, so it is the dedupe key)."""
        return f"Numbers {' '.join(map(str, self.numbers))}. Make {self.target}."

    @property
    def ground_truth(self) -> str:
        """What the reward needs to check an answer: the sources and the target (``3 5 7 8 -> 24``)."""
        return format_ground_truth(self.numbers, self.target)

    def solutions(self) -> tuple[Tree, ...]:
        """One tree per distinct solution (exhaustive; cached per source multiset)."""
        return solve(self.numbers, self.target)

    def integer_solutions(self) -> tuple[Tree, ...]:
        """The distinct solutions whose every step is a positive integer (those the worked solutions show)."""
        return tuple(tree for tree in self.solutions() if has_integer_steps(tree))


def worked_solution(tree: Tree) -> str:
    """The target response for solution ``tree``: one ``a op b = c`` line per operation, innermost first, then
    ``Answer: <expression>``."""
    return "\n".join([*_steps(tree), f"{ANSWER_PREFIX} {render(tree)}"])


def _steps(tree: Tree) -> list[str]:
    """The step lines of ``tree``'s operations in post-order."""
    if isinstance(tree, int):
        return []
    return [*_steps(tree.left), *_steps(tree.right), f"{_value(tree.left)}{tree.op}{_value(tree.right)}={_value(tree)}"]


def _value(tree: Tree) -> str:
    """The integer value of an integer-step subtree, as text."""
    if isinstance(tree, int):
        return str(tree)
    value = evaluate(tree)
    if value is None or value.denominator != 1:
        raise ValueError(f"worked solutions need integer steps; {render(tree)} = {value}")
    return str(value.numerator)


@functools.lru_cache(maxsize=8192)
def level_targets(spec: LevelSpec, numbers: tuple[int, ...]) -> tuple[int, ...]:
    """The targets that make a puzzle of level ``spec`` from the sorted sources ``numbers``: accepted by the level,
    with at least one integer-step solution."""
    return tuple(
        target
        for target, trees in solutions_by_target(numbers).items()
        if spec.accepts(target, len(trees)) and any(has_integer_steps(t) for t in trees)
    )


def sample_puzzle(spec: LevelSpec, rng: random.Random, max_tries: int = 10_000) -> Puzzle:
    """Draw one puzzle of level ``spec`` with ``rng``: sorted sources, then a target the level accepts, uniformly
    among those with an integer-step solution (rejection sampling over the sources)."""
    for _ in range(max_tries):
        numbers = tuple(sorted(rng.randint(1, spec.max_source) for _ in range(spec.sources)))
        targets = level_targets(spec, numbers)
        if targets:
            return Puzzle(spec.level, numbers, rng.choice(targets))
    raise RuntimeError(f"no puzzle satisfying {spec} in {max_tries} draws")


def unique_puzzles(level: int, seed: str, exclude: frozenset[str] = frozenset()) -> Iterator[Puzzle]:
    """Stream of distinct puzzles of ``level``, seeded by the string ``seed``, skipping questions in ``exclude``.
    Ends when 1000 draws in a row bring nothing new (the level is about used up)."""
    if level not in LEVELS:
        raise ValueError(f"unknown level {level}; known levels: {sorted(LEVELS)}")
    spec = LEVELS[level]
    rng = random.Random(f"{seed}/L{level}")
    seen = set(exclude)
    stale = 0
    while stale < 1000:
        puzzle = sample_puzzle(spec, rng)
        if puzzle.question in seen:
            stale += 1
            continue
        stale = 0
        seen.add(puzzle.question)
        yield puzzle


def take_puzzles(level: int, seed: str, count: int, exclude: frozenset[str] = frozenset()) -> list[Puzzle]:
    """The first ``count`` puzzles of :func:`unique_puzzles`; raises ValueError when the level has fewer."""
    taken = list(itertools.islice(unique_puzzles(level, seed, exclude), count))
    if len(taken) < count:
        raise ValueError(f"level {level} has only about {len(taken)} distinct puzzles left, {count} asked")
    return taken


__all__ = ["LEVELS", "LevelSpec", "Puzzle", "sample_puzzle", "take_puzzles", "unique_puzzles", "worked_solution"]
