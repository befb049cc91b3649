"""Evaluation of a policy on held-out questions: greedy accuracy, and pass@k / mean@k from sampled answers,
overall and per data source. Runs on the rollout pool and the reward scorer that training uses."""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from actors.protocols import RolloutPoolLike, ScorerLike
from core.messages import RolloutRequest, TemperatureUpdate
from core.passk import summarize
from tasks.prepare import Split


def greedy_accuracy(
    *, rollout_pool: RolloutPoolLike, scorer: ScorerLike, split: Split, max_new_tokens: int
) -> dict[str, float]:
    """Share of `split`'s questions whose greedy answer is correct: `accuracy` overall and `accuracy/<source>`.

    Correct as the scorer's `(reward, correct)` results say (the reward function's verdict, or its reward against
    `reward.correct_threshold`), not by the size of the reward."""
    completions = rollout_pool.generate_greedy(split.prompt_token_ids, max_new_tokens)
    results = scorer.score_texts([c.text for c in completions], [q.ground_truth for q in split.questions])
    correct = np.asarray([bool(is_correct) for _, is_correct in results], dtype=float)
    result = {"accuracy": float(correct.mean())}
    sources = np.asarray([q.data_source for q in split.questions])
    for source in sorted(set(sources)):
        result[f"accuracy/{source}"] = float(correct[sources == source].mean())
    return result


def sampled_pass_at_k(
    *,
    rollout_pool: RolloutPoolLike,
    scorer: ScorerLike,
    split: Split,
    max_new_tokens: int,
    num_samples: int,
    temperature: float,
    ks: list[int],
    seed: int,
    restore_temperature: float,
) -> dict[str, float]:
    """pass@k and mean@k (keys `<source>/pass@k`, `all/mean@k`, ...) from `num_samples` answers per question
    sampled at `temperature`; the workers go back to `restore_temperature` afterwards. An answer counts by the
    scorer's correctness flag, not its reward."""
    ks = [k for k in ks if k <= num_samples]
    requests = [
        RolloutRequest(q.id, tuple(p), num_samples, max_new_tokens, seed=seed + i, step=0)
        for i, (q, p) in enumerate(zip(split.questions, split.prompt_token_ids, strict=True))
    ]
    rollout_pool.set_temperature(TemperatureUpdate(temperature, step=0))
    try:
        generated = rollout_pool.generate(requests)
    finally:
        rollout_pool.set_temperature(TemperatureUpdate(restore_temperature, step=0))
    scored = scorer.score(generated, [q.ground_truth for q in split.questions])
    per_source: dict[str, list[list[bool]]] = defaultdict(list)
    for question, item in zip(split.questions, scored, strict=True):
        per_source[question.data_source].append(list(item.correct))
    return summarize(per_source, ks)
