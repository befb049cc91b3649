"""Run configurations for the tests that train or evaluate end to end."""

from __future__ import annotations

import json
from pathlib import Path

from core.config import RunConfig
from tests.support.paper_models import QWEN_1P5B

SHARED = Path(__file__).resolve().parents[3] / "shared" / "datasets" / "e3"
"""The paper's data beside the checkout (the tests that need it skip without it)."""


def run_config(tmp_path, *overrides: str) -> RunConfig:
    """The smoke experiment, writing under `tmp_path`, with `overrides` on top (as on the command line)."""
    import launch

    return launch.compose_run_config(["+experiment=smoke", f"output_dir={tmp_path}", "wandb.mode=offline", *overrides])


def paper_config(tmp_path: Path, *overrides: str, recipe: str = "paper_e3_1p5b") -> RunConfig:
    """A 1.5B recipe (the paper's by default) in `mode=plan`, with a config-only model directory (config.json, no
    weights) and the paper's data files."""
    import launch

    model = tmp_path / "qwen-1.5b-shape"
    model.mkdir(exist_ok=True)
    (model / "config.json").write_text(json.dumps({**QWEN_1P5B, "model_type": "qwen2"}))
    return launch.compose_run_config(
        [
            f"+experiment={recipe}", "mode=plan", f"output_dir={tmp_path}", f"model.path={model}",
            f"data.train_path={SHARED / 'train_data.parquet'}", f"data.valid_path={SHARED / 'valid_data.parquet'}",
            *overrides,
        ]
    )  # fmt: skip
