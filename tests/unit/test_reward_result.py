"""A reward function's return value as a (reward, correct) result: numbers against the threshold, pairs taken as
they are, anything else refused with the function's name and the value; the threshold is a validated field."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from actors.reward_scorer import RewardContractError, as_reward_result
from core.config import ConfigError, RewardConfig, RunConfig, validate
from core.messages import RewardResult
from tests.support.partial_credit import EXACT, VERBOSE, partial_credit

SPEC = "tasks.example:reward"


@pytest.mark.parametrize(
    ("value", "threshold", "expected"),
    [
        (1.0, 1.0, (1.0, True)),  # the shipped 0/1 rewards, at the default threshold
        (0.0, 1.0, (0.0, False)),
        (1.2, 1.0, (1.2, True)),
        (0.8, 1.0, (0.8, False)),  # a number says nothing more than its size: below the threshold, wrong
        (0.8, 0.75, (0.8, True)),
        (0.5, 0.75, (0.5, False)),
        (-1.0, -1.0, (-1.0, True)),  # the threshold is inclusive
        (True, 1.0, (1.0, True)),  # tasks.math.reward:is_correct returns a bool
        (False, 1.0, (0.0, False)),
        (np.bool_(True), 1.0, (1.0, True)),
        (np.float32(0.25), 0.25, (0.25, True)),
        (3, 1.0, (3.0, True)),
    ],
)
def test_a_number_is_correct_at_or_above_the_threshold(value, threshold, expected):
    result = as_reward_result(SPEC, value, threshold)
    assert isinstance(result, RewardResult)
    assert result == expected
    assert type(result.reward) is float and type(result.correct) is bool


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (RewardResult(0.5, False), (0.5, False)),
        (RewardResult(0.8, True), (0.8, True)),
        ((1.2, True), (1.2, True)),  # a plain tuple
        ((0.5, np.bool_(False)), (0.5, False)),
        ((2, False), (2.0, False)),  # a reward above any threshold, and still wrong
    ],
)
def test_a_pair_decides_correctness_whatever_the_threshold(value, expected):
    for threshold in (-10.0, 1.0, 10.0):
        result = as_reward_result(SPEC, value, threshold)
        assert isinstance(result, RewardResult) and result == expected
        assert type(result.reward) is float and type(result.correct) is bool


@pytest.mark.parametrize(
    "value",
    [None, "1.0", [1.0, True], (1.0, 1), (1.0, "yes"), (1.0, True, 0.0), ("1.0", True), (), math.nan, (math.inf, True)],
)
def test_anything_else_is_refused_with_the_spec_and_the_value(value):
    with pytest.raises(RewardContractError) as caught:
        as_reward_result(SPEC, value, 1.0)
    message = str(caught.value)
    assert repr(SPEC) in message and repr(value) in message
    assert "(reward: float, correct: bool)" in message
    assert isinstance(caught.value, TypeError)


def test_partial_credit_helper_disagrees_with_the_size_of_its_reward():
    # the test helper the integration tests score with: its verdicts differ from `reward >= 1.0` both ways
    assert partial_credit(EXACT.format(7), "7") == (1.2, True)
    assert partial_credit(VERBOSE.format(7), "7") == (0.8, True)
    assert partial_credit(EXACT.format(8), "7") == (0.5, False)
    assert partial_credit("no idea", "7") == (0.0, False)


def test_correct_threshold_defaults_to_one_and_must_be_finite():
    assert RewardConfig().correct_threshold == 1.0
    validate(dataclasses.replace(RunConfig(), reward=RewardConfig(correct_threshold=0.5)))
    for bad in (math.nan, math.inf, -math.inf):
        cfg = dataclasses.replace(RunConfig(), reward=RewardConfig(correct_threshold=bad))
        with pytest.raises(ConfigError, match=rf"reward\.correct_threshold={bad}"):
            validate(cfg)
