"""Learner.setup joins its process group with `learner.collective_timeout_s` (no Ray, no process group formed)."""

from __future__ import annotations

import datetime

import pytest

import actors.learner as learner_module
from actors.learner import Learner
from core.config import LearnerConfig


class _Joined(Exception):
    """Raised by the stand-in for `dist.init_process_group`, so that setup stops right after joining."""


def test_setup_passes_learner_collective_timeout_s_to_the_process_group(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict = {}

    def init_process_group(*args: object, **kwargs: object) -> None:
        seen.update(kwargs)
        raise _Joined

    monkeypatch.setattr(learner_module.dist, "init_process_group", init_process_group)
    monkeypatch.setattr(Learner, "_rendezvous_store", lambda self: "store")
    monkeypatch.setattr(learner_module.torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(learner_module.torch, "set_num_threads", lambda n: None)  # leave this process's threads
    monkeypatch.setattr(learner_module.torch, "manual_seed", lambda seed: None)  # and its RNG as they are
    for name in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "GLOO_SOCKET_IFNAME"):
        monkeypatch.setenv(name, "unset-by-the-test")  # restored (or removed) after the test, whatever setup writes
    config = LearnerConfig(collective_timeout_s=1234.5)
    learner = Learner("unused", config, "float32", 0, rank=0, world_size=1, master_addr="127.0.0.1", master_port=29500)
    with pytest.raises(_Joined):
        learner.setup()
    assert seen["timeout"] == datetime.timedelta(seconds=1234.5)
    assert (seen["backend"], seen["store"], seen["rank"], seen["world_size"]) == ("gloo", "store", 0, 1)
