"""The one load balancer: requests over rollout workers by samples, a train batch over ranks by tokens."""

from hypothesis import given, settings
from hypothesis import strategies as st

from core.balance import balance


def test_small_example():
    # longest first: 12 -> w0, 8 -> w1, 4 -> w1, 4 -> w0 (tie: lower index), 4 -> w1; loads 16 and 16
    assert balance([12, 4, 4, 4, 8], 2) == [[0, 2], [1, 3, 4]]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 16), min_size=0, max_size=64), st.integers(1, 6))
def test_every_request_once_and_loads_within_one_request(counts, workers):
    plan = balance(counts, workers)
    assert len(plan) == workers
    assert sorted(i for positions in plan for i in positions) == list(range(len(counts)))
    loads = [sum(counts[i] for i in positions) for positions in plan]
    if counts:
        assert max(loads) - min(loads) <= max(counts)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(1, 16), min_size=1, max_size=64), st.integers(1, 6))
def test_every_bin_gets_an_item_when_there_are_enough(weights, bins):
    plan = balance(weights, bins)
    assert sum(1 for positions in plan if positions) == min(len(weights), bins)
