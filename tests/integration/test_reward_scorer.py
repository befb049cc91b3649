"""The reward scorer in real worker processes: order kept, hangs killed at the timeout, errors score 0,
correctness as the reward function says it, and a close that never catches a worker starting."""

import os
import signal
import time
from pathlib import Path

import pytest

from actors.reward_scorer import RewardContractError, RewardScorer, load_reward_fn
from core.config import RewardConfig
from core.messages import Completion, RewardResult, Rollout
from tests.support.partial_credit import BAD_RETURNS, EXACT, VERBOSE

IGNORE_TERM = "ignore-sigterm"
"""`hanging_or_exact` text: the worker ignores SIGTERM from then on, once two workers have met (see below)."""


def hanging_or_exact(completion: str, ground_truth: str) -> float:
    """Test reward: sleeps forever on 'hang', raises on 'boom', else exact match.

    On `IGNORE_TERM <folder>` the worker ignores SIGTERM (pebble then needs its 3 s grace and a SIGKILL to stop
    it), records its pid in the folder and waits until two workers have done so, so that both workers take one.
    """
    if completion == "hang":
        time.sleep(3600)
    if completion == "boom":
        raise RuntimeError("reward bug")
    if completion.startswith(IGNORE_TERM):
        folder = Path(completion.split(maxsplit=1)[1])
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        (folder / str(os.getpid())).touch()
        while len(list(folder.iterdir())) < 2:
            time.sleep(0.01)
        return 1.0
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
    assert [s.errors for s in out] == [0, 1]  # "boom" raised: scored 0 and counted for the step's metrics
    assert elapsed < 30  # a hang costs its timeout, not the step


def test_pool_still_works_after_a_kill(scorer):
    results = scorer.score_texts(["1", "2"], ["1", "3"])
    assert results == [(1.0, True), (0.0, False)]
    assert all(isinstance(r, RewardResult) for r in results)


@pytest.mark.parametrize("fn", ["partial_credit", "partial_credit_tuple"])
def test_a_reward_function_that_says_correctness_is_taken_at_its_word(fn):
    scorer = RewardScorer(f"tests.support.partial_credit:{fn}", RewardConfig(num_workers=2, correct_threshold=1.0))
    try:
        texts = [EXACT.format(7), VERBOSE.format(7), EXACT.format(8), "no idea"]
        out = scorer.score([rollout("a", texts)], ["7"])
        assert out[0].rewards == (1.2, 0.8, 0.5, 0.0)
        assert out[0].correct == (True, True, False, False)  # 0.8 is right, 0.5 is partial credit for a wrong one
        assert scorer.score_texts(texts, ["7"] * 4) == list(zip(out[0].rewards, out[0].correct, strict=True))
    finally:
        scorer.close()


@pytest.mark.parametrize(
    ("threshold", "expected"), [(1.0, (True, False, False, False)), (0.5, (True, True, True, False))]
)
def test_a_plain_reward_is_correct_at_or_above_the_threshold(threshold, expected):
    config = RewardConfig(num_workers=1, correct_threshold=threshold)
    scorer = RewardScorer("tests.support.partial_credit:partial_credit_float", config)
    try:
        out = scorer.score([rollout("a", [EXACT.format(7), VERBOSE.format(7), EXACT.format(8), "no idea"])], ["7"])
        assert out[0].rewards == (1.2, 0.8, 0.5, 0.0)
        assert out[0].correct == expected
    finally:
        scorer.close()


def test_a_return_value_outside_the_contract_stops_scoring_with_the_function_and_the_value():
    scorer = RewardScorer("tests.support.partial_credit:bad_return", RewardConfig(num_workers=1))
    try:
        for text, value in BAD_RETURNS.items():
            with pytest.raises(RewardContractError) as caught:
                scorer.score([rollout("a", ["fine", text])], ["7"])  # raises: not scored as an error
            assert "'tests.support.partial_credit:bad_return'" in str(caught.value) and repr(value) in str(caught.value)
        out = scorer.score([rollout("a", ["fine"])], ["7"])  # the pool goes on working
        assert (out[0].rewards, out[0].timeouts, out[0].errors) == ((0.0,), 0, 0)
    finally:
        scorer.close()


@pytest.mark.slow  # waits out pebble's 3 s stop grace per worker, several times (18 s on 2 cores)
def test_closing_right_after_start_or_a_kill_leaves_no_worker_error(capfd, tmp_path):
    # pebble unlinks the pool's semaphores before it stops the workers; a worker still starting then dies in
    # SemLock._rebuild with FileNotFoundError, printed on the stderr it inherited (captured here, at the fd).
    # 1) closing as soon as the first result is back, while the second worker may still be starting
    for _ in range(3):
        scorer = RewardScorer(f"{__name__}:hanging_or_exact", RewardConfig(num_workers=2))
        assert scorer.score_texts(["1"], ["1"]) == [(1.0, True)]
        scorer.close()
    # 2) closing right after a kill, while the replacement worker is starting for certain: the workers ignore
    # SIGTERM, so pebble takes its 3 s grace to stop each of them, time enough for a starting one to reach the
    # unlinked semaphores (the old close printed the error here every time)
    met = tmp_path / "met"
    met.mkdir()
    scorer = RewardScorer(f"{__name__}:hanging_or_exact", RewardConfig(num_workers=2, timeout_s=1.0))
    assert scorer.score_texts([f"{IGNORE_TERM} {met}"] * 2, ["x"] * 2) == [(1.0, True)] * 2
    assert len(list(met.iterdir())) == 2  # both workers now ignore SIGTERM
    assert scorer.score_texts(["hang"], ["x"]) == [(0.0, False)]
    scorer.close()
    err = capfd.readouterr().err
    assert "Traceback" not in err and "Error" not in err, err


def test_bad_reward_spec_named():
    with pytest.raises(ValueError, match="'nope'"):
        load_reward_fn("nope")
    with pytest.raises(ValueError, match="no_such_module"):
        load_reward_fn("no_such_module:reward")
