"""The reward scorer in real worker processes: order kept, hangs killed at the timeout, errors score 0."""

import time

import pytest

from actors.reward_scorer import RewardScorer, load_reward_fn
from core.config import RewardConfig
from core.messages import Completion, Rollout


def hanging_or_exact(completion: str, ground_truth: str) -> float:
    """Test reward: sleeps forever on 'hang', raises on 'boom', else exact match."""
    if completion == "hang":
        time.sleep(3600)
    if completion == "boom":
        raise RuntimeError("reward bug")
    return float(completion == ground_truth)


def rollout(qid: str, texts: list[str]) -> Rollout:
    completions = tuple(Completion((1,), (-0.1,), t, "stop") for t in texts)
    return Rollout(qid, 0, (1,), completions, temperature=1.0, weights_version=0)


@pytest.fixture(scope="module")
def scorer():
    s = RewardScorer(f"{__name__}:hanging_or_exact", RewardConfig(num_workers=2, timeout_s=1.0))
    yield s
    s.close()


def test_scores_in_order_and_kills_hangs(scorer):
    start = time.perf_counter()
    out = scorer.score([rollout("a", ["4", "hang", "5"]), rollout("b", ["boom", "7"])], ["4", "7"])
    elapsed = time.perf_counter() - start
    assert [s.rewards for s in out] == [(1.0, 0.0, 0.0), (0.0, 1.0)]
    assert [s.correct for s in out] == [(True, False, False), (False, True)]
    assert [s.timeouts for s in out] == [1, 0]
    assert scorer.stats() == {"reward/timeouts_total": 1, "reward/errors_total": 1}
    assert elapsed < 30  # a hang costs its timeout, not the step


def test_pool_still_works_after_a_kill(scorer):
    assert scorer.score_texts(["1", "2"], ["1", "3"]) == [1.0, 0.0]


def test_bad_reward_spec_named():
    with pytest.raises(ValueError, match="'nope'"):
        load_reward_fn("nope")
    with pytest.raises(ValueError, match="no_such_module"):
        load_reward_fn("no_such_module:reward")
