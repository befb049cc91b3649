"""Sampling a policy on countdown puzzles and scoring the samples: correctness, pass@k, distinct solutions.

Generation is the arithmetic task's (:func:`tasks.arithmetic.policy_eval.generate`: transformers, batched, pure
sampling at the given temperature). Two correct answers are *distinct* when their expressions' canonical keys
differ (:func:`tasks.countdown.expression.canonical_key`: order and grouping within a sum or a product do not
count).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from core.passk import pass_at_k
from tasks.arithmetic.policy_eval import generate
from tasks.countdown.expression import canonical_key
from tasks.countdown.reward import extract_expression, parse_ground_truth, solves

MAX_NEW_TOKENS = 160
"""Longest sampled response; the default base policy's longest search trace (146 tokens, eos included) fits
(:mod:`tasks.countdown.search`)."""


@dataclass(frozen=True)
class ScoredPuzzle:
    """One puzzle's samples, scored."""

    level: int
    correct: tuple[bool, ...]
    """Whether each sample solves the puzzle, in sampling order."""
    solution_keys: tuple[object, ...]
    """The canonical key of each sample's expression where it is correct, None where it is not."""

    def distinct_solutions(self, first: int) -> int:
        """How many distinct correct expressions the first ``first`` samples hold."""
        return len({key for key in self.solution_keys[:first] if key is not None})


def score_samples(completions: Sequence[str], ground_truth: str, level: int) -> ScoredPuzzle:
    """Score one puzzle's completions against its ground truth (``"3 5 7 8 -> 24"``)."""
    numbers, target = parse_ground_truth(ground_truth)
    correct, keys = [], []
    for text in completions:
        tree = extract_expression(text)
        ok = solves(tree, numbers, target)
        correct.append(ok)
        keys.append(canonical_key(tree) if ok else None)
    return ScoredPuzzle(level, tuple(correct), tuple(keys))


def sample_and_score(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    questions: Sequence[str],
    ground_truths: Sequence[str],
    levels: Sequence[int],
    samples: int,
    temperature: float | None,
) -> list[ScoredPuzzle]:
    """``samples`` completions per puzzle (greedy when ``temperature`` is None), each puzzle's scored."""
    if not len(questions) == len(ground_truths) == len(levels):
        raise ValueError(
            f"questions, ground_truths and levels differ in length: "
            f"{len(questions)}, {len(ground_truths)}, {len(levels)}"
        )
    completions = generate(model, tokenizer, questions, samples, temperature, max_new_tokens=MAX_NEW_TOKENS)
    return [
        score_samples(texts, truth, level)
        for texts, truth, level in zip(completions, ground_truths, levels, strict=True)
    ]


def accuracy_by_level(scored: Sequence[ScoredPuzzle]) -> dict[int, float]:
    """Mean correctness of all samples, per level, levels ascending."""
    by_level: dict[int, list[bool]] = defaultdict(list)
    for puzzle in scored:
        by_level[puzzle.level].extend(puzzle.correct)
    return {level: sum(flags) / len(flags) for level, flags in sorted(by_level.items())}


def pass_at_k_by_level(scored: Sequence[ScoredPuzzle], k: int) -> dict[int, float]:
    """Mean unbiased pass@k (:func:`core.passk.pass_at_k`) over each level's puzzles, levels ascending."""
    by_level: dict[int, list[float]] = defaultdict(list)
    for puzzle in scored:
        by_level[puzzle.level].append(pass_at_k(len(puzzle.correct), sum(puzzle.correct), k))
    return {level: sum(values) / len(values) for level, values in sorted(by_level.items())}


def mean_distinct_on_solved(scored: Sequence[ScoredPuzzle], first: int) -> tuple[float, int]:
    """The mean number of distinct correct expressions among the first ``first`` samples, over the puzzles those
    samples solve at least once, and how many such puzzles there are (mean 0.0 when none)."""
    counts = [p.distinct_solutions(first) for p in scored if any(p.correct[:first])]
    return (sum(counts) / len(counts) if counts else 0.0), len(counts)
