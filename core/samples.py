"""A few whole groups of a step, as logged for people to read: the way down from a curve to the samples behind it.

Every `log.samples_every` steps the scheduler keeps `log.sample_groups` of the step's groups (`pick_groups`): the
hardest question of the step (highest difficulty rank when allocated), the easiest, the most mixed (accuracy
nearest 1/2) and then others at random, seeded by the step. Each group keeps its question, prompt and ground
truth, the rollouts it was allocated, and per response its text (cut to `log.sample_chars` characters), reward,
correctness, advantage, token count, truncation, and the weights version, temperature and staleness it was
sampled with. Cost at the paper's scale: 4 groups of 16 responses of up to 6,144 tokens, text capped at 2,000
characters: about 130 KB of JSON every 10 steps, against steps of minutes.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from core.messages import ScoredRollout

PICKS = ("hardest", "easiest", "most_mixed")
"""Why a group was kept, in the order groups are picked; the rest are `random`."""


@dataclass(frozen=True)
class SampleResponse:
    """One response of a logged group."""

    text: str
    """The response text, cut to `log.sample_chars` characters (`text_chars` says how long it was)."""
    text_chars: int
    reward: float
    correct: bool
    advantage: float
    tokens: int
    truncated: bool
    """Whether it hit the response-length limit."""
    weights_version: int
    temperature: float
    staleness: int
    """How many weights versions older than the trained policy the sampling policy was (0 in the synchronous loop)."""


@dataclass(frozen=True)
class SampleGroup:
    """One logged group: a question of step `step` with every response it got."""

    step: int
    pick: str
    """Why it was kept: one of `PICKS`, or `random`."""
    question_id: str
    prompt: str
    ground_truth: str
    rank: float
    """The question's difficulty rank when its budget was allocated (0: easiest)."""
    rollouts: int
    accuracy: float
    responses: tuple[SampleResponse, ...]

    def to_json(self) -> dict:
        """The group as one JSON-ready object (responses as a list of objects)."""
        return asdict(self)


def pick_groups(ranks: Sequence[float], accuracies: Sequence[float], count: int, seed: int) -> list[tuple[str, int]]:
    """Up to `count` distinct group positions with why each was picked: the highest rank, the lowest, the accuracy
    nearest 1/2, then random ones (seeded by `seed`), in that order; fewer when there are fewer groups."""
    left = list(range(len(ranks)))
    chosen: list[tuple[str, int]] = []
    order = {
        "hardest": lambda i: (-ranks[i], i),
        "easiest": lambda i: (ranks[i], i),
        "most_mixed": lambda i: (abs(accuracies[i] - 0.5), i),
    }
    for pick in PICKS:
        if len(chosen) == count or not left:
            return chosen
        best = min(left, key=order[pick])
        chosen.append((pick, best))
        left.remove(best)
    rng = random.Random(seed)
    while len(chosen) < count and left:
        chosen.append(("random", left.pop(rng.randrange(len(left)))))
    return chosen


def sample_groups(
    *,
    step: int,
    scored: Sequence[ScoredRollout],
    prompts: Sequence[str],
    ground_truths: Sequence[str],
    ranks: Sequence[float],
    advantages: Sequence[float],
    trained_version: int,
    count: int,
    max_chars: int,
    seed: int,
) -> list[SampleGroup]:
    """The step's logged groups (`pick_groups`). `advantages` are the train batch's, one per response in group
    order; `trained_version` is the weights version the step trained (staleness is measured against it)."""
    sizes = [len(s.rollout.completions) for s in scored]
    if len(advantages) != sum(sizes):
        raise ValueError(f"sample_groups: {len(advantages)} advantages for {sum(sizes)} responses")
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    accuracies = [sum(s.correct) / len(s.correct) for s in scored]
    groups = []
    for pick, i in pick_groups(ranks, accuracies, count, seed):
        item, rollout = scored[i], scored[i].rollout
        responses = tuple(
            SampleResponse(
                text=completion.text[:max_chars],
                text_chars=len(completion.text),
                reward=float(reward),
                correct=bool(ok),
                advantage=float(advantages[starts[i] + j]),
                tokens=len(completion.token_ids),
                truncated=completion.finish_reason == "length",
                weights_version=rollout.weights_version,
                temperature=rollout.temperature,
                staleness=trained_version - rollout.weights_version,
            )
            for j, (completion, reward, ok) in enumerate(
                zip(rollout.completions, item.rewards, item.correct, strict=True)
            )
        )
        groups.append(
            SampleGroup(
                step=step,
                pick=pick,
                question_id=rollout.question_id,
                prompt=prompts[i][:max_chars],
                ground_truth=ground_truths[i],
                rank=float(ranks[i]),
                rollouts=len(responses),
                accuracy=accuracies[i],
                responses=responses,
            )
        )
    return groups
