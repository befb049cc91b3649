"""Tests for core.sampler: seeded epochs, batch shapes, and exact resumption."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.sampler import EpochBatch, EpochSampler


def take(sampler: EpochSampler, count: int) -> list[EpochBatch]:
    return [sampler.next_batch() for _ in range(count)]


def test_drop_last_epochs_are_disjoint_full_batches() -> None:
    sampler = EpochSampler(num_items=10, batch_size=3, seed=0)
    assert sampler.steps_per_epoch == 3
    batches = take(sampler, 6)
    assert [(b.epoch, b.step_in_epoch, b.end_of_epoch) for b in batches] == [
        (0, 0, False),
        (0, 1, False),
        (0, 2, True),
        (1, 0, False),
        (1, 1, False),
        (1, 2, True),
    ]
    for epoch in (0, 1):
        rows = [i for b in batches if b.epoch == epoch for i in b.indices]
        assert len(rows) == 9 and len(set(rows)) == 9 and set(rows) <= set(range(10))
    assert [b.indices for b in batches[:3]] != [b.indices for b in batches[3:]]  # a new order each epoch
    assert sampler.epoch == 2 and sampler.step_in_epoch == 0


def test_same_seed_same_batches_other_seed_other_batches() -> None:
    first = [b.indices for b in take(EpochSampler(100, 8, seed=5), 30)]
    again = [b.indices for b in take(EpochSampler(100, 8, seed=5), 30)]
    other = [b.indices for b in take(EpochSampler(100, 8, seed=6), 30)]
    assert first == again
    assert first != other


@settings(max_examples=40, deadline=None)
@given(
    num_items=st.integers(1, 40),
    batch_size=st.integers(1, 40),
    consumed=st.integers(0, 25),
)
def test_restored_sampler_yields_the_same_next_batches(num_items: int, batch_size: int, consumed: int) -> None:
    batch_size = min(batch_size, num_items)
    original = EpochSampler(num_items, batch_size, seed=11)
    take(original, consumed)
    restored = EpochSampler(num_items, batch_size, seed=11)
    restored.load_state_dict(original.state_dict())
    assert take(restored, 10) == take(original, 10)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_items": 5, "batch_size": 6, "seed": 0}, r"batch_size=6 > num_items=5"),
        ({"num_items": 0, "batch_size": 1, "seed": 0}, r"num_items=0"),
        ({"num_items": 5, "batch_size": 0, "seed": 0}, r"batch_size=0"),
        ({"num_items": 5, "batch_size": 1, "seed": -1}, r"seed=-1"),
    ],
)
def test_constructor_validation(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        EpochSampler(**kwargs)


def test_refuses_state_of_another_sampler() -> None:
    state = EpochSampler(10, 2, seed=0).state_dict()
    with pytest.raises(ValueError, match=r"'seed': \(0, 1\)"):
        EpochSampler(10, 2, seed=1).load_state_dict(state)
    with pytest.raises(ValueError, match=r"step_in_epoch=7"):
        EpochSampler(10, 2, seed=0).load_state_dict({**state, "step_in_epoch": 7})
