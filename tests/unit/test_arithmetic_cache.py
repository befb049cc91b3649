"""Build-once directories and the base-policy config's validation."""

from pathlib import Path

import pytest

from tasks.arithmetic import cache
from tasks.arithmetic.build_base import BasePolicyConfig
from tasks.arithmetic.generate import ArithmeticDataConfig


def write_marker(text: str) -> object:
    def build(tmp: Path) -> None:
        (tmp / "marker.txt").write_text(text)

    return build


def test_builds_once_per_key_and_replaces_on_a_new_key(tmp_path: Path) -> None:
    out = tmp_path / "thing"
    assert cache.ensure_built(out, "k1", write_marker("one"), {"v": 1}) == out.resolve()
    assert cache.ensure_built(out, "k1", write_marker("two"), {"v": 1}) == out.resolve()
    assert (out / "marker.txt").read_text() == "one"
    assert cache.read_stamp(out) == {"key": "k1", "config": {"v": 1}}
    cache.ensure_built(out, "k2", write_marker("three"), {"v": 2})
    assert (out / "marker.txt").read_text() == "three"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".thing.lock", "thing"]


def test_a_failed_build_leaves_nothing_behind(tmp_path: Path) -> None:
    def explode(tmp: Path) -> None:
        (tmp / "half.bin").write_bytes(b"x")
        raise RuntimeError("killed mid-build")

    with pytest.raises(RuntimeError, match="killed"):
        cache.ensure_built(tmp_path / "thing", "k", explode, {})
    assert sorted(p.name for p in tmp_path.iterdir()) == [".thing.lock"]
    assert not cache.is_current(tmp_path / "thing", "k")


def test_leftovers_of_a_killed_build_are_removed(tmp_path: Path) -> None:
    (tmp_path / ".thing.tmp-dead").mkdir()
    cache.ensure_built(tmp_path / "thing", "k", write_marker("ok"), {})
    assert sorted(p.name for p in tmp_path.iterdir()) == [".thing.lock", "thing"]


def test_config_key_follows_the_config_and_the_code() -> None:
    base = cache.config_key(BasePolicyConfig(), [cache])
    assert cache.config_key(BasePolicyConfig(), [cache]) == base
    assert cache.config_key(BasePolicyConfig(seed=1), [cache]) != base
    assert cache.config_key(BasePolicyConfig(), [cache, pytest]) != base


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"sft_level_weights": (1.0, 2.0)}, "sft_level_weights"),
        ({"sft_level_weights": (0.0,) * 6}, "sft_level_weights"),
        ({"sft_level_weights": (-1.0,) + (1.0,) * 5}, "sft_level_weights"),
        ({"stop_accuracy": 1.5}, "stop_accuracy"),
        ({"sft_steps": 0}, "sft_steps"),
        ({"probe_per_level": -1}, "probe_per_level"),
        ({"hidden_size": 100, "num_heads": 3}, "hidden_size"),
    ],
)
def test_bad_base_policy_config_names_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        BasePolicyConfig(**kwargs)


def test_level_weights_are_one_per_level_and_empty_means_equal() -> None:
    assert BasePolicyConfig().level_weights() == (2.0, 1.0, 1.0, 1.0, 1.0, 1.0)
    two_levels = BasePolicyConfig(data=ArithmeticDataConfig(levels=(1, 3)), sft_level_weights=())
    assert two_levels.level_weights() == (1.0, 1.0)
