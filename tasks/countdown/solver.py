"""Exhaustive Countdown solver: every distinct expression that uses each source number exactly once.

The search combines two of the remaining numbers with ``+``, ``-``, ``*`` or ``/`` (both orders of the
non-commutative ones; no division by zero) until one is left, so it reaches every expression tree over the
sources. Intermediate values are exact fractions, as the verifier computes them. Expressions are deduplicated by
:func:`tasks.countdown.expression.canonical_key`; of each class the solver keeps the first tree it met.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from fractions import Fraction

from tasks.countdown.expression import Node, Tree, canonical_key, evaluate

Value = int | Fraction
_Item = tuple[Value, Tree]

MAX_TARGET = 200
"""Largest target the cached solver keeps solutions for (every level's targets lie below it)."""


def _divide(x: Value, y: Value) -> Value:
    """``x / y`` exactly (``y != 0``): an ``int`` when it divides, else a Fraction (ints are much faster)."""
    if isinstance(x, int) and isinstance(y, int):
        return x // y if x % y == 0 else Fraction(x, y)
    return Fraction(x) / y


def _combinations(a: _Item, b: _Item) -> Iterator[_Item]:
    """Every ``a op b`` and ``b op a`` worth trying (commutative operations once)."""
    (x, s), (y, t) = a, b
    yield x + y, Node("+", s, t)
    yield x * y, Node("*", s, t)
    yield x - y, Node("-", s, t)
    yield y - x, Node("-", t, s)
    if y != 0:
        yield _divide(x, y), Node("/", s, t)
    if x != 0:
        yield _divide(y, x), Node("/", t, s)


def _expressions(items: tuple[_Item, ...]) -> Iterator[_Item]:
    """Every (value, tree) that combines all of ``items`` (with repeats: the same tree may come several times)."""
    if len(items) == 1:
        yield items[0]
        return
    for i in range(len(items)):
        for j in range(i + 1, len(items)):
            rest = items[:i] + items[i + 1 : j] + items[j + 1 :]
            for combined in _combinations(items[i], items[j]):
                yield from _expressions((*rest, combined))


def solutions_by_target(numbers: tuple[int, ...]) -> dict[int, tuple[Tree, ...]]:
    """For each integer target in ``[1, MAX_TARGET]`` that the sources ``numbers`` can make, one tree per distinct
    solution (by canonical key), in the order the search met them. Cached per multiset of sources."""
    return _solutions_by_target(tuple(sorted(numbers)))


@functools.lru_cache(maxsize=4096)
def _solutions_by_target(numbers: tuple[int, ...]) -> dict[int, tuple[Tree, ...]]:
    """:func:`solutions_by_target` of sorted ``numbers`` (the cached search)."""
    seen: dict[int, dict[object, Tree]] = {}
    for value, tree in _expressions(tuple((n, n) for n in numbers)):
        if value.denominator != 1 or not 1 <= value <= MAX_TARGET:
            continue
        classes = seen.setdefault(int(value), {})
        classes.setdefault(canonical_key(tree), tree)
    return {target: tuple(classes.values()) for target, classes in sorted(seen.items())}


def solve(numbers: tuple[int, ...], target: int) -> tuple[Tree, ...]:
    """One tree per distinct solution of the puzzle (``numbers``, ``target``); empty when it has none."""
    if not 1 <= target <= MAX_TARGET:
        return tuple(t for v, t in _distinct(numbers) if v == target)
    return solutions_by_target(numbers).get(target, ())


def _distinct(numbers: tuple[int, ...]) -> list[_Item]:
    """Every distinct (value, tree) over ``numbers`` (for targets the cache does not cover)."""
    classes: dict[object, _Item] = {}
    for value, tree in _expressions(tuple((n, n) for n in numbers)):
        classes.setdefault(canonical_key(tree), (value, tree))
    return list(classes.values())


def has_integer_steps(tree: Tree) -> bool:
    """Whether every operation of ``tree`` yields a positive integer (what the worked solutions show)."""
    if isinstance(tree, int):
        return True
    value = evaluate(tree)
    return (
        value is not None
        and value.denominator == 1
        and value > 0
        and has_integer_steps(tree.left)
        and has_integer_steps(tree.right)
    )
