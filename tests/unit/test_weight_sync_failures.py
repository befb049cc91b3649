"""The collective weight sync's verdict on a learner rank that fails in it: lost (its process gone) is raised as a
lost actor, which the run heals from; an error the rank raised stops the run. `wait_all` is replaced by the refs'
outcomes (no Ray cluster: the kill that produces them is in tests/integration/test_resume.py)."""

from __future__ import annotations

import pickle

import pytest
from ray.exceptions import ActorDiedError, RayActorError

from cluster import weight_sync
from cluster.recovery import lost_process


def _wait_with(monkeypatch, learner_error: Exception) -> None:
    outcomes = ({("worker", 0): 3}, {("learner", 0): learner_error})
    monkeypatch.setattr(weight_sync, "wait_all", lambda refs, timeout_s: outcomes)
    transport = weight_sync.CollectiveTransport(bucket_bytes=2**20, timeout_s=10.0)
    transport._wait({0: object()}, {0: "worker-ref"}, ["learner-ref"], 10.0)


def test_a_learner_rank_lost_during_a_weight_sync_is_raised_as_lost_so_the_run_heals(monkeypatch) -> None:
    with pytest.raises(RayActorError, match=r"learner ranks \[0\] lost") as raised:
        _wait_with(monkeypatch, ActorDiedError())
    assert lost_process(raised.value)
    assert lost_process(pickle.loads(pickle.dumps(raised.value)))  # as it reaches the driver from the scheduler


def test_a_learner_rank_that_raises_during_a_weight_sync_stops_the_run(monkeypatch) -> None:
    with pytest.raises(RuntimeError, match="the learner failed") as raised:
        _wait_with(monkeypatch, ValueError("a bug in the learner"))
    assert not lost_process(raised.value)
