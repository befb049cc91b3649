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


def test_an_embedded_task_given_every_file_and_a_model_builds_nothing(tmp_path, monkeypatch) -> None:
    launch = pytest.importorskip("launch")
    from tasks.countdown import build_base, generate
    from tasks.registry import prepare_task

    files = {name: tmp_path / f"{name}.parquet" for name in ("train", "valid", "test")}
    for path in files.values():
        path.write_bytes(b"")
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    monkeypatch.setattr(generate, "ensure_datasets", lambda *a: pytest.fail("generated the default splits"))
    monkeypatch.setattr(build_base, "ensure_base_policy", lambda *a: pytest.fail("built the base policy"))
    cfg = launch.compose_run_config(
        [f"output_dir={tmp_path}", "data.task=countdown", f"model.path={model}",
         *(f"data.{name}_path={path}" for name, path in files.items())]
    )  # fmt: skip
    resolved = prepare_task(cfg)
    assert (resolved.train, resolved.valid, resolved.test, resolved.model) == (*files.values(), model)


def test_the_countdown_preset_sets_the_lengths_its_base_policy_answers_in(tmp_path) -> None:
    launch = pytest.importorskip("launch")
    from tasks.countdown.policy_eval import MAX_NEW_TOKENS

    for overrides in (["+experiment=countdown"], ["+experiment=[smoke,countdown]"]):
        cfg = launch.compose_run_config([*overrides, f"output_dir={tmp_path}"])
        assert cfg.data.task == "countdown"
        assert (cfg.rollout.max_new_tokens, cfg.data.max_prompt_tokens) == (MAX_NEW_TOKENS, 64)
    assert launch.compose_run_config(["+experiment=[smoke,countdown]", f"output_dir={tmp_path}"]).train.max_steps == 3
