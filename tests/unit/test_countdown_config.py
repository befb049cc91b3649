"""The config names the countdown task, the knapsack allocator and the difficulty table's window."""

import pytest

from core.allocators import ALLOCATORS
from core.config import AllocatorName, Task
from tasks.registry import EMBEDDED_TASKS, REWARD_FNS


def test_countdown_and_knapsack_are_choices_with_their_code() -> None:
    assert "countdown" in Task.values() and "countdown" in EMBEDDED_TASKS
    assert REWARD_FNS["countdown"] == "tasks.countdown.reward:reward"
    assert set(AllocatorName.values()) == set(ALLOCATORS)


def test_composes_from_the_command_line(tmp_path) -> None:
    launch = pytest.importorskip("launch")
    cfg = launch.compose_run_config(
        ["+experiment=smoke", f"output_dir={tmp_path}", "data.task=countdown", "budget.allocator=knapsack",
         "budget.p_window=8"]
    )  # fmt: skip
    assert (cfg.data.task, cfg.budget.allocator, cfg.budget.p_window) == ("countdown", "knapsack", 8)
    assert launch.compose_run_config([f"output_dir={tmp_path}"]).budget.p_window == 16
