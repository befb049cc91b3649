"""Reward for the countdown task: 1.0 and correct when the completion's final expression solves the puzzle.

Answer format: the completion must END with a line ``Answer: <expression>`` (the grammar of
:mod:`tasks.countdown.expression`: numbers, ``+ - * /``, parentheses). Around it, whitespace and trailing
``<|im_end|>`` / ``<|endoftext|>`` markers are ignored. The answer is correct when the expression parses, uses the
puzzle's source numbers exactly once each (the same multiset), and equals the target computed with exact fractions
(a division by zero is wrong). Anything else is wrong, never an error: no answer line, text after it, a malformed
expression, a number missing, repeated or foreign, a non-string completion.

The ground truth names the puzzle: its sources and its target, ``"3 5 7 8 -> 24"``. Only a malformed ground truth
(a data bug) raises ValueError. Work is bounded: only the last ``MAX_TAIL_CHARS`` characters are read and the
parser refuses long or deeply nested expressions.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

from core.messages import RewardResult
from tasks.countdown.expression import ParseError, Tree, canonical_key, evaluate, leaves, parse

ANSWER_PREFIX = "Answer:"
MAX_TAIL_CHARS = 512
END_MARKERS = ("<|im_end|>", "<|endoftext|>")
_GROUND_TRUTH = re.compile(r"\s*([0-9]{1,6}(?:\s+[0-9]{1,6})*)\s*->\s*([0-9]{1,9})\s*")


def format_ground_truth(numbers: Sequence[int], target: int) -> str:
    """The ground-truth string of a puzzle: ``"3 5 7 8 -> 24"``."""
    return f"{' '.join(str(n) for n in numbers)} -> {target}"


def parse_ground_truth(ground_truth: str) -> tuple[tuple[int, ...], int]:
    """The (sources, target) of a ground-truth string; ValueError naming the value when it is malformed."""
    match = _GROUND_TRUTH.fullmatch(ground_truth) if isinstance(ground_truth, str) else None
    if match is None:
        raise ValueError(f"countdown ground_truth must look like '3 5 7 8 -> 24', got {ground_truth!r}")
    return tuple(int(n) for n in match.group(1).split()), int(match.group(2))


def extract_expression(completion: object) -> Tree | None:
    """The parsed expression of the completion's final ``Answer:`` line, or None when there is none or it does not
    parse. Never raises."""
    if not isinstance(completion, str):
        return None
    tail = completion[-MAX_TAIL_CHARS:].rstrip()
    stripped = True
    while stripped:
        stripped = False
        for marker in END_MARKERS:
            if tail.endswith(marker):
                tail = tail[: -len(marker)].rstrip()
                stripped = True
    _, found, answer = tail.rpartition(ANSWER_PREFIX)
    if not found or "\n" in answer.strip():
        return None
    try:
        return parse(answer.strip())
    except ParseError:
        return None


def solves(tree: Tree | None, numbers: Sequence[int], target: int) -> bool:
    """Whether ``tree`` uses exactly the multiset ``numbers`` and equals ``target`` exactly (None: no)."""
    if tree is None or Counter(leaves(tree)) != Counter(numbers):
        return False
    value = evaluate(tree)
    return value is not None and value == target


def is_correct(completion: str, ground_truth: str) -> bool:
    """Whether the completion's final expression solves the puzzle named by ``ground_truth`` (module docstring)."""
    numbers, target = parse_ground_truth(ground_truth)
    return solves(extract_expression(completion), numbers, target)


def answer_key(completion: str) -> object:
    """The canonical form of the completion's final expression (:func:`canonical_key`: order and grouping within a
    sum or a product do not count), or None when it has none; two correct answers are distinct when their keys
    differ."""
    tree = extract_expression(completion)
    return None if tree is None else canonical_key(tree)


def reward(completion: str, ground_truth: str) -> RewardResult:
    """``(1.0, True)`` when :func:`is_correct`, else ``(0.0, False)``: the correctness is said, not inferred."""
    correct = is_correct(completion, ground_truth)
    return RewardResult(1.0 if correct else 0.0, correct)
