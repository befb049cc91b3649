"""Search traces: warm-start responses that try, check and try again, so a small policy can find answers by sampling.

A 1M-parameter policy trained on worked solutions alone (:func:`tasks.countdown.problems.worked_solution`) cannot
plan its first step: it solved fewer easiest-level puzzles (0.07) than a uniformly random expression does (0.13;
``bench/results/countdown_base.md``). A search trace shows what it can learn instead: an *attempt* combines two of
the numbers left at random until two are left, finishes with the operation that comes nearest the target, then
copies the target beside its result (``vs 25``) and says ``no`` when they differ. Attempts repeat, never with the same
steps twice, until one reaches the target or the response's ``max_steps`` are spent (an attempt on ``n`` numbers takes
``n - 1`` steps: 10 steps are five attempts on three numbers, three on four); then the answer line renders the last
attempt, the one that reached the target if any did::

    8*3=24,24-5=19 vs 25 no
    8-5=3,3*3=9 vs 25 no
    8-3=5,5*5=25 vs 25
    Answer: (8-3)*5

Every step is a positive integer: subtraction takes the smaller from the larger, division only when it divides.
The copied target makes the check local: ``no`` compares two numbers side by side, where a policy that had to look
back at the prompt said ``no`` after 54% of the attempts that reached the target. The answer is always the attempt
just above it, so rendering it is local too. Choosing an attempt is chance, so sampling finds answers at a rate
that grows with the number of attempts a response holds: the easy levels are within reach of one response and the
hard ones of many, the edge of competence where RL adds pass@k. Attempts are random, so the solutions a policy finds
this way are diverse.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from tasks.countdown.expression import Node, Tree, render
from tasks.countdown.reward import ANSWER_PREFIX

CHECK = "vs"
"""What stands between an attempt's result and the copied target."""
MISS = "no"
"""What ends an attempt line that missed the target."""


@dataclass(frozen=True)
class Attempt:
    """One attempt: its step lines (``a op b=c``, in order), the expression it builds and that expression's value."""

    steps: tuple[str, ...]
    tree: Tree
    value: int

    def line(self, target: int) -> str:
        """The attempt as a trace line: the steps, comma-separated, `` vs <target>``, then `` no`` when it misses."""
        text = f"{','.join(self.steps)} {CHECK} {target}"
        return text if self.value == target else f"{text} {MISS}"


_Item = tuple[int, Tree]


def integer_steps(a: _Item, b: _Item) -> list[tuple[str, _Item]]:
    """Every step combining ``a`` and ``b`` whose result is a positive integer, as (step line, (value, tree)):
    ``+`` and ``*`` once, the larger minus the smaller when they differ, the larger over the smaller when it divides."""
    (x, s), (y, t) = (a, b) if a[0] >= b[0] else (b, a)
    results = [("+", x + y), ("*", x * y)]
    if x > y:
        results.append(("-", x - y))
    if x % y == 0:
        results.append(("/", x // y))
    return [(f"{x}{op}{y}={value}", (value, Node(op, s, t))) for op, value in results]


def random_attempt(numbers: tuple[int, ...], target: int, rng: random.Random) -> Attempt:
    """One attempt on the puzzle: random pairs and random steps until two numbers are left, then the step nearest
    ``target`` (ties broken at random)."""
    items: list[_Item] = [(n, n) for n in numbers]
    steps: list[str] = []
    while len(items) > 2:
        i, j = sorted(rng.sample(range(len(items)), 2))
        line, item = rng.choice(integer_steps(items[i], items[j]))
        steps.append(line)
        items = [*items[:i], *items[i + 1 : j], *items[j + 1 :], item]
    finals = integer_steps(items[0], items[1])
    rng.shuffle(finals)
    line, (value, tree) = min(finals, key=lambda step: abs(step[1][0] - target))
    return Attempt((*steps, line), tree, value)


def attempts_allowed(sources: int, max_steps: int) -> int:
    """How many attempts on ``sources`` numbers a response of ``max_steps`` steps holds (at least one)."""
    return max(1, max_steps // max(1, sources - 1))


def search_trace(numbers: tuple[int, ...], target: int, rng: random.Random, max_steps: int) -> str:
    """A search-trace response for the puzzle (module docstring): distinct random attempts until one reaches
    ``target`` or :func:`attempts_allowed` miss, then the answer line (the last attempt's expression: the reaching
    one, if any). Deterministic for a given ``rng`` state."""
    if max_steps < 1:
        raise ValueError(f"search_trace: max_steps must be >= 1, got {max_steps}")
    max_attempts = attempts_allowed(len(numbers), max_steps)
    attempts: list[Attempt] = []
    seen: set[tuple[str, ...]] = set()
    for _ in range(50 * max_attempts):  # distinct attempts; a puzzle may have fewer than max_attempts
        attempt = random_attempt(numbers, target, rng)
        if attempt.steps in seen:
            continue
        seen.add(attempt.steps)
        attempts.append(attempt)
        if attempt.value == target or len(attempts) == max_attempts:
            break
    return "\n".join([*(a.line(target) for a in attempts), f"{ANSWER_PREFIX} {render(attempts[-1].tree)}"])


__all__ = ["CHECK", "MISS", "Attempt", "attempts_allowed", "integer_steps", "random_attempt", "search_trace"]
