"""Tests for core.temperature: the E3 temperature rule step by step, annealing, clamp, state (E3_SPEC section 3)."""

from __future__ import annotations

import logging
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.config import TemperatureConfig
from core.temperature import TemperatureController

QWEN2_VOCAB = 151936


def test_k_is_ln_v_plus_ln_ln_v() -> None:
    controller = TemperatureController(vocab_size=QWEN2_VOCAB)
    assert controller.k == pytest.approx(math.log(QWEN2_VOCAB) + math.log(math.log(QWEN2_VOCAB)))
    assert controller.k == pytest.approx(14.41, abs=0.005)


def test_spec_example() -> None:
    controller = TemperatureController(vocab_size=QWEN2_VOCAB)
    assert controller.step == 1
    assert controller.update(0.76) == 1.0  # step 1 <= init_steps: only remembered
    assert controller.target_entropy is None
    temperature = controller.update(0.70)
    assert controller.target_entropy == 0.76
    assert temperature == pytest.approx(1.0057, abs=1e-4)
    assert temperature == pytest.approx(1.0 + math.log(0.76 / 0.70) / controller.k, rel=1e-12)
    assert controller.step == 3


def test_rule_step_by_step_with_given_target() -> None:
    controller = TemperatureController(vocab_size=1000, target_entropy=1.0, init_steps=1)
    k = math.log(1000) + math.log(math.log(1000))
    assert controller.update(2.0) == 1.0  # init step: temperature holds even with a given target
    t2 = 1.0 * (1 + 1.0 * math.log(1.0 / 0.5) / k)  # entropy below target raises T
    assert controller.update(0.5) == pytest.approx(t2, rel=1e-12)
    assert t2 > 1.0
    t3 = t2 * (1 + t2 * math.log(1.0 / 2.0) / k)  # above target lowers it
    assert controller.update(2.0) == pytest.approx(t3, rel=1e-12)
    assert t3 < t2
    assert controller.update(1.0) == pytest.approx(t3, rel=1e-12)  # at target: no change
    assert controller.target_entropy == 1.0


def test_target_is_mean_of_init_entropies() -> None:
    controller = TemperatureController(vocab_size=1000, init_steps=3, initial_temperature=0.8)
    assert [controller.update(h) for h in (0.5, 0.7, 0.9)] == [0.8, 0.8, 0.8]
    assert controller.target_entropy is None
    controller.update(0.7)
    assert controller.target_entropy == pytest.approx(0.7)
    assert controller.initial_target_entropy == pytest.approx(0.7)
    assert controller.temperature == pytest.approx(0.8, rel=1e-12)


def test_annealing_schedule_by_hand() -> None:
    # max_steps=10, ratio 0.4: a = 10 - int(4.0) = 6; progress at steps 6..10 is 0, .25, .5, .75, 1.
    controller = TemperatureController(
        vocab_size=1000, target_entropy=1.0, annealing=True, max_steps=10, annealing_ratio=0.4, annealing_factor=0.9
    )
    assert controller.annealing_start_step == 6
    # f + (1 - f) * 0.5 * (1 + cos(pi * p)) with f = 0.9, by hand:
    expected = {6: 1.0, 7: 0.9853553390593274, 8: 0.95, 9: 0.9146446609406726, 10: 0.9, 11: 0.9, 12: 0.9}
    k = controller.k
    temperature = 1.0
    target_in_force = 1.0
    for step in range(1, 13):
        assert controller.step == step
        out = controller.update(0.95)
        if step > 1:  # the update at this step used the target set by the previous step
            temperature = temperature * (1 + temperature * math.log(target_in_force / 0.95) / k)
        assert out == pytest.approx(temperature, rel=1e-12), step
        target_in_force = expected.get(step, 1.0)
        assert controller.target_entropy == pytest.approx(target_in_force, rel=1e-12), step
    assert controller.initial_target_entropy == 1.0


def test_disabled_keeps_temperature_but_tracks_target_and_step() -> None:
    controller = TemperatureController(
        vocab_size=1000, initial_temperature=0.6, enabled=False, annealing=True, max_steps=5, annealing_ratio=0.4
    )
    outputs = [controller.update(h) for h in (0.8, 0.2, 3.0, 0.1, 0.5)]
    assert outputs == [0.6] * 5
    assert controller.step == 6
    assert controller.initial_target_entropy == 0.8
    assert controller.target_entropy == pytest.approx(0.8 * 0.9)  # annealed to the end (step 5 = max_steps)


def test_clamp_is_applied_logged_and_reported(caplog: pytest.LogCaptureFixture) -> None:
    controller = TemperatureController(vocab_size=1000, target_entropy=1.0, max_temperature=1.01, min_temperature=0.9)
    controller.update(1.0)
    with caplog.at_level(logging.WARNING, logger="core.temperature"):
        assert controller.update(0.01) == 1.01  # unclamped: 1 + ln(100)/k = 1.52
    assert controller.last_clamped
    assert "clamped to 1.01" in caplog.text
    assert controller.update(1.0) == 1.01
    assert not controller.last_clamped
    assert controller.update(100.0) == 0.9  # unclamped: 1.01 * (1 - 1.01 * ln(100)/k) = 0.54
    assert controller.last_clamped


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -0.5, 0.0])
def test_bad_entropy_raises_and_leaves_state_unchanged(bad: float) -> None:
    controller = TemperatureController(vocab_size=1000)
    controller.update(0.7)
    controller.update(0.6)
    before = controller.state_dict()
    with pytest.raises(ValueError, match=r"entropy must be a finite number > 0"):
        controller.update(bad)
    assert controller.state_dict() == before


@settings(max_examples=50, deadline=None)
@given(
    history=st.lists(st.floats(0.05, 3.0), min_size=0, max_size=12),
    future=st.lists(st.floats(0.05, 3.0), min_size=1, max_size=12),
)
def test_state_round_trip_gives_identical_next_outputs(history: list[float], future: list[float]) -> None:
    def make() -> TemperatureController:
        return TemperatureController(vocab_size=1000, init_steps=2, annealing=True, max_steps=12)

    original = make()
    for h in history:
        original.update(h)
    restored = make()
    restored.load_state_dict(original.state_dict())
    assert restored.state_dict() == original.state_dict()
    assert [restored.update(h) for h in future] == [original.update(h) for h in future]
    assert restored.target_entropy == original.target_entropy


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"vocab_size": 1}, r"vocab_size=1"),
        ({"vocab_size": 100, "annealing": True}, r"max_steps > 0, got max_steps=-1"),
        ({"vocab_size": 100, "annealing": True, "max_steps": 2}, r"int\(2 \* 0.4\) = 0"),
        ({"vocab_size": 100, "init_steps": 0}, r"init_steps=0"),
        ({"vocab_size": 100, "initial_temperature": 5.0}, r"0.05 <= 5.0 <= 3.0"),
        ({"vocab_size": 100, "target_entropy": -1.0}, r"target_entropy=-1.0"),
        ({"vocab_size": 100, "annealing": True, "max_steps": 10, "annealing_factor": 1.5}, r"annealing_factor=1.5"),
    ],
)
def test_constructor_validation(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TemperatureController(**kwargs)


def test_init_steps_zero_with_given_target_adapts_from_step_one() -> None:
    controller = TemperatureController(vocab_size=1000, init_steps=0, target_entropy=1.0)
    assert controller.update(0.5) == pytest.approx(1 + math.log(2) / controller.k)


def test_load_state_dict_rejects_bad_state_without_changing() -> None:
    controller = TemperatureController(vocab_size=1000)
    good = controller.state_dict()
    with pytest.raises(ValueError, match=r"missing keys \['step'\]"):
        controller.load_state_dict({key: value for key, value in good.items() if key != "step"})
    with pytest.raises(ValueError, match=r"temperature=9.0"):
        controller.load_state_dict({**good, "temperature": 9.0})
    with pytest.raises(ValueError, match=r"neither a target entropy nor entropies"):
        controller.load_state_dict({**good, "step": 5})
    assert controller.state_dict() == good


@pytest.mark.parametrize(
    "config",
    [
        TemperatureConfig(),
        TemperatureConfig(
            enabled=False,
            initial=0.7,
            init_steps=2,
            target_entropy=0.9,
            annealing=True,
            annealing_ratio=0.5,
            annealing_factor=0.6,
            min_temperature=0.1,
            max_temperature=2.0,
        ),
        TemperatureConfig(initial=1.2, init_steps=3, annealing=True, max_temperature=1.3),
    ],
)
def test_from_config_equals_the_keyword_construction(config: TemperatureConfig) -> None:
    built = TemperatureController.from_config(config, vocab_size=1000, max_steps=10)
    by_hand = TemperatureController(
        vocab_size=1000,
        initial_temperature=config.initial,
        init_steps=config.init_steps,
        target_entropy=config.target_entropy,
        enabled=config.enabled,
        annealing=config.annealing,
        max_steps=10,
        annealing_ratio=config.annealing_ratio,
        annealing_factor=config.annealing_factor,
        min_temperature=config.min_temperature,
        max_temperature=config.max_temperature,
    )
    assert repr(built) == repr(by_hand) and built.annealing_start_step == by_hand.annealing_start_step
    for entropy in [0.8, 0.7, 0.5, 1.1, 0.9, 0.6, 0.75, 1.0, 0.4, 0.8, 0.8, 0.8]:  # past max_steps as well
        assert built.update(entropy) == by_hand.update(entropy)
        assert built.state_dict() == by_hand.state_dict()


def test_from_config_rejects_what_the_constructor_rejects() -> None:
    with pytest.raises(ValueError, match=r"max_steps > 0, got max_steps=-1"):
        TemperatureController.from_config(TemperatureConfig(annealing=True), vocab_size=100, max_steps=-1)
