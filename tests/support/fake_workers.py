"""Rollout workers that fail on purpose, for the pool's fault tests (tests/integration/test_weight_transport.py).

A module of their own, imported as `tests.support.fake_workers`, so that Ray's workers can import the
classes by name (pytest imports test modules under their bare names, which the workers cannot).
"""

from __future__ import annotations

import os
import signal
import time

from actors import weight_transport
from actors.rollout_worker import RolloutWorker

HANG_S = 600.0
"""How long a hung fake sleeps: far past every deadline of the tests."""


class FakeWorkerDyingMidSync(RolloutWorker):
    """Kills its own process after its engine has taken the first streamed weight (mid-sync, every time), whichever
    engine streams them (vLLM inside its weight-transfer calls, transformers in `load_weight_stream`)."""

    def receive_weights(self, layout, version):
        stream = weight_transport._bucket_stream

        def first_then_die(groups, layout):
            yield next(stream(groups, layout))
            os.kill(os.getpid(), signal.SIGKILL)

        weight_transport._bucket_stream = first_then_die
        return super().receive_weights(layout, version)


class FakeWorkerDyingInSetTemperature(RolloutWorker):
    """Takes the new temperature, then kills its own process before it answers (every time)."""

    def set_temperature(self, update):
        super().set_temperature(update)
        os.kill(os.getpid(), signal.SIGKILL)


class FakeWorkerDyingInGreedy(RolloutWorker):
    """Answers half of its greedy prompts, then kills its own process before it returns them (every time)."""

    def generate_greedy(self, prompts, max_new_tokens):
        super().generate_greedy(prompts[: len(prompts) // 2], max_new_tokens)
        os.kill(os.getpid(), signal.SIGKILL)


class FakeWorkerHungInSync(RolloutWorker):
    """Sleeps far past every deadline when asked to receive weights."""

    def receive_weights(self, layout, version):
        time.sleep(HANG_S)


class FakeWorkerHungInGeneration(RolloutWorker):
    """Sleeps far past every deadline when asked to generate."""

    def generate(self, requests):
        time.sleep(HANG_S)


class FakeWorkerDyingInJoin(RolloutWorker):
    """Kills its own process while the weight groups form, after the other members started joining (every time)."""

    def join_weight_group(self, addresses, rank, world_size, timeout_s, name):
        time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGKILL)


class FakeWorkerHungInJoin(RolloutWorker):
    """Sleeps far past every deadline when asked to join the weight groups."""

    def join_weight_group(self, addresses, rank, world_size, timeout_s, name):
        time.sleep(HANG_S)


class FakeWorkerDyingInGeneration(RolloutWorker):
    """Kills its own process when asked to generate (every time)."""

    def generate(self, requests):
        os.kill(os.getpid(), signal.SIGKILL)
