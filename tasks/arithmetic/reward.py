"""Reward for the arithmetic task: 1.0 when the completion's final answer equals the ground truth, else 0.0.

Answer format: the completion must END with a line ``Answer: <integer>`` (ASCII digits, optional sign).
Around it, any whitespace is ignored, and so are trailing ``<|im_end|>`` / ``<|endoftext|>`` markers (left in
when a decoder keeps special tokens). Integers compare by value (``Answer: 007`` matches ``7``). Anything else
scores 0 (no answer line, text after the answer, several numbers, non-ASCII digits, a non-string completion).

Work is bounded: only the last ``MAX_TAIL_CHARS`` characters of a completion are read, and the only regular
expression is a single anchored character-class match, so hostile inputs cannot make it slow.
"""

from __future__ import annotations

import re

ANSWER_PREFIX = "Answer:"
MAX_TAIL_CHARS = 512
END_MARKERS = ("<|im_end|>", "<|endoftext|>")
_INTEGER = re.compile(r"[+-]?[0-9]{1,64}")


def extract_answer(completion: object) -> int | None:
    """The integer on the completion's final ``Answer:`` line, or None when the completion is malformed.

    Never raises: a non-string, empty, or oversized completion gives None.
    """
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
    answer = answer.strip()
    if not found or _INTEGER.fullmatch(answer) is None:
        return None
    return int(answer)


def parse_ground_truth(ground_truth: str) -> int:
    """The ground truth as an integer; raises ValueError naming the value when it is not an ASCII integer."""
    text = ground_truth.strip() if isinstance(ground_truth, str) else None
    if text is None or _INTEGER.fullmatch(text) is None:
        raise ValueError(f"arithmetic ground_truth must be an integer string, got {ground_truth!r}")
    return int(text)


def is_correct(completion: str, ground_truth: str) -> bool:
    """Whether the completion's final answer (see module docstring) equals ``ground_truth``.

    Malformed completions are simply wrong; only a malformed ``ground_truth`` (a data bug) raises ValueError.
    """
    expected = parse_ground_truth(ground_truth)
    return extract_answer(completion) == expected


def reward(completion: str, ground_truth: str) -> float:
    """1.0 when :func:`is_correct`, else 0.0."""
    return 1.0 if is_correct(completion, ground_truth) else 0.0
