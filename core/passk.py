"""pass@k and mean@k from n samples per question, and per-source summaries of them.

pass@k is the probability that at least one of k samples, drawn without replacement from a question's n
samples of which c are correct, is correct: the unbiased estimator of Chen et al. 2021 ("Evaluating Large
Language Models Trained on Code"), `1 - C(n-c, k) / C(n, k)`, computed as a product so that it neither
overflows nor loses precision for large n. mean@k is the expected fraction of correct answers among those k
samples, which is `c / n` for every k.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

OVERALL = "all"
"""The key prefix, in `summarize`, of the figures over every question of every source."""


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one question: `n` samples, `c` of them correct (0 <= c <= n, 1 <= k <= n)."""
    _check(n, c, k)
    if n - c < k:  # every draw of k samples contains a correct one
        return 1.0
    # C(n-c, k) / C(n, k) = prod_{i = n-c+1}^{n} (1 - k / i)
    p_all_wrong = 1.0
    for i in range(n - c + 1, n + 1):
        p_all_wrong *= 1.0 - k / i
    return 1.0 - p_all_wrong


def mean_at_k(n: int, c: int, k: int) -> float:
    """Expected fraction of correct answers among k of the n samples (c correct): `c / n`, whatever k is."""
    _check(n, c, k)
    return c / n


def summarize(per_question_correct: Mapping[str, Sequence[Sequence[bool]]], ks: Iterable[int]) -> dict[str, float]:
    """Per-source and overall pass@k and mean@k, averaged over questions (each question counts once).

    `per_question_correct[source][q]` holds the correctness of every sample of question q. Returns a flat
    dict ready for logging: `"<source>/pass@<k>"`, `"<source>/mean@<k>"` and `"<source>/n_questions"` for
    every source, and the same under `"all/..."` over every question. Raises ValueError when a source has no
    questions or a question has fewer than k samples.
    """
    ks = sorted(set(ks))
    if not ks:
        raise ValueError("summarize: no k given")
    groups = dict(per_question_correct)
    if OVERALL in groups:
        raise ValueError(f"summarize: a source may not be named {OVERALL!r}")
    groups[OVERALL] = [q for questions in per_question_correct.values() for q in questions]
    summary: dict[str, float] = {}
    for source, questions in groups.items():
        if not questions:
            raise ValueError(f"summarize: source {source!r} has no questions")
        counts = [(len(samples), sum(map(bool, samples))) for samples in questions]
        short = next((i for i, (n, _) in enumerate(counts) if n < ks[-1]), None)
        if short is not None:
            raise ValueError(
                f"summarize: source {source!r} question {short} has {counts[short][0]} samples < k={ks[-1]}"
            )
        for k in ks:
            summary[f"{source}/pass@{k}"] = sum(pass_at_k(n, c, k) for n, c in counts) / len(counts)
            summary[f"{source}/mean@{k}"] = sum(mean_at_k(n, c, k) for n, c in counts) / len(counts)
        summary[f"{source}/n_questions"] = float(len(counts))
    return summary


def _check(n: int, c: int, k: int) -> None:
    if not 0 <= c <= n:
        raise ValueError(f"need 0 <= c <= n, got n={n}, c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"need 1 <= k <= n, got n={n}, k={k}")
