"""`mode=plan` prints the memory of each GPU from a model's config.json (no weights anywhere), and a GPU run whose
plan does not fit stops before Ray or any actor starts, naming what does not fit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import launch
from cluster.plan import memory_plan
from core.config import ConfigError
from tests.support.config import SHARED, paper_config, run_config
from tests.support.paper_models import QWEN_1P5B


@pytest.mark.skipif(not SHARED.is_dir(), reason="needs shared/datasets/e3 beside the checkout")
def test_plan_of_the_paper_recipe_fits_an_80_gb_gpu(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert launch.print_plan(paper_config(tmp_path)) == []
    out = capsys.readouterr().out
    assert "learner total" in out and "micro-batch of 32,768 tokens" in out and out.rstrip().endswith("fits.")


@pytest.mark.skipif(not SHARED.is_dir(), reason="needs shared/datasets/e3 beside the checkout")
def test_plan_names_what_does_not_fit(tmp_path: Path) -> None:
    problems = launch.print_plan(paper_config(tmp_path, "learner.num_ranks=1", "learner.gpu_memory_gb=24"))
    assert any("learner.num_ranks" in p for p in problems)


def test_a_gpu_run_that_does_not_fit_stops_before_anything_starts(tmp_path: Path, embedded_task) -> None:
    cfg = run_config(tmp_path, "learner.num_gpus=1", "rollout.num_gpus=1", "learner.gpu_memory_gb=0.001")
    with pytest.raises(ConfigError, match="does not fit its GPUs"):
        launch.train(cfg)
    assert not (tmp_path / cfg.run_name).exists()  # nothing was written: it stopped before the run directory


@pytest.mark.skipif(not SHARED.is_dir(), reason="needs shared/datasets/e3 beside the checkout")
@pytest.mark.parametrize(
    ("overrides", "verdict"),
    [
        ((), "fits"),
        (("learner.gpu_memory_gb=48", "rollout.gpu_memory_utilization=0.45", "learner.max_tokens_per_micro_batch=8192"),
         "fits"),
        (("learner.gpu_memory_gb=24",), "weights, gradients and AdamW state (float32, sharded) (28.4 GB)"),
    ],
)  # fmt: skip
def test_the_one_gpu_recipe_plans_as_its_file_says_for_80_48_and_24_gb(tmp_path, capsys, overrides, verdict):
    cfg = paper_config(tmp_path, *overrides, recipe="one_gpu_e3_1p5b")
    assert cfg.rollout.placement == "colocated" and cfg.learner.num_ranks == cfg.rollout.num_workers == 1
    problems = launch.print_plan(cfg)
    out = capsys.readouterr().out
    assert "colocated, training, engine asleep: total" in out and "colocated, generation: total" in out
    if verdict == "fits":
        assert problems == [] and out.rstrip().endswith("fits.")
    else:
        assert any(verdict in p for p in problems), problems


def test_the_one_gpu_countdown_recipe_composes_colocated_and_fits_80_gb(tmp_path):
    model = tmp_path / "qwen-1.5b-shape"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({**QWEN_1P5B, "model_type": "qwen2"}))
    cfg = launch.compose_run_config(["+experiment=one_gpu_e3_countdown_1p5b", "mode=plan", f"model.path={model}"])
    assert (cfg.data.task, cfg.rollout.placement, cfg.train.max_staleness) == ("countdown", "colocated", 0)
    plan, problems = memory_plan(cfg, model)
    assert problems == [] and plan.tokens_per_micro_batch == 4 * 1280  # micro_batch_size x the longest sequence
    assert memory_plan(cfg, model)[0].learner_resident == pytest.approx(12 * 1.777e9, rel=1e-3)
