"""Requests are spread over rollout workers by total samples."""

from hypothesis import given, settings
from hypothesis import strategies as st

from cluster.rollout_pool import assign_by_samples


def test_small_example():
    # longest first: 12 -> w0, 8 -> w1, 4 -> w1, 4 -> w0 (tie: lower index), 4 -> w1; loads 16 and 16
    assert assign_by_samples([12, 4, 4, 4, 8], 2) == [[0, 2], [1, 3, 4]]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 16), min_size=0, max_size=64), st.integers(1, 6))
def test_every_request_once_and_loads_within_one_request(counts, workers):
    plan = assign_by_samples(counts, workers)
    assert len(plan) == workers
    assert sorted(i for positions in plan for i in positions) == list(range(len(counts)))
    loads = [sum(counts[i] for i in positions) for positions in plan]
    if counts:
        assert max(loads) - min(loads) <= max(counts)
