"""Run configurations for the tests that train or evaluate end to end."""

from __future__ import annotations

from core.config import RunConfig


def run_config(tmp_path, *overrides: str) -> RunConfig:
    """The smoke experiment, writing under `tmp_path`, with `overrides` on top (as on the command line)."""
    import launch

    return launch.compose_run_config(["+experiment=smoke", f"output_dir={tmp_path}", "wandb.mode=offline", *overrides])
