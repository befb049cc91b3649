"""bench/gpu_check.py, the check prepared for a lent GPU, run here as its CPU dry run: the same steps (a policy
built from a config, the colocated rank's learner step, the in-process handover, generation) at tiny shapes, so
that the script is known to work before a GPU is spent on it. (The GPU itself cannot run here.)"""

from __future__ import annotations

import json

import pytest

from bench import gpu_check
from core.config import LearnerConfig
from tests.support.config import SHARED, paper_config


def test_gpu_check_cpu_dry_run_trains_hands_over_and_generates(tmp_path):
    doc = gpu_check.main(["--dry-run", "--out", str(tmp_path)])
    written = json.loads((tmp_path / "gpu_check.json").read_text())
    assert written["params"] == doc["params"] > 0 and written["recipe"] == "one_gpu_e3_1p5b"
    train = written["train"]
    assert train["device"] == "cpu" and train["samples"] == 4 and train["sequence_tokens"] == 64
    assert train["micro_batches"] >= 1 and train["tokens_per_s"] > 0 and train["plan_learner_bytes"] > 0
    # every parameter of the tiny shape is checked bit for bit: embedding, untied head, final norm, and 12 a layer
    # (q/k/v weights and biases, o, gate, up, down, two norms) over 2 layers
    assert written["handover"]["version"] == 2 and written["handover"]["tensors_checked"] == 3 + 2 * 12
    generation = written["generation"]
    assert generation["engine"] == "hf" and generation["rows"] == 4
    assert 4 <= generation["generated_tokens"] <= 4 * 8  # each sample 1..8 new tokens
    assert "peak over plan" in (tmp_path / "gpu_check.md").read_text()


@pytest.mark.skipif(not SHARED.is_dir(), reason="needs shared/datasets/e3 beside the checkout")
def test_gpu_check_reads_the_recipe_as_hydra_composes_it(tmp_path):
    """The check reads the recipe's YAML without Hydra (the lent machines have none): its learner settings are the
    ones `launch.py +experiment=one_gpu_e3_1p5b` runs with."""
    composed = paper_config(tmp_path, recipe="one_gpu_e3_1p5b")
    learner, rollout = gpu_check.learner_and_rollout_configs(gpu_check.recipe_settings(), dry_run=False)
    for name in ("micro_batch_size", "max_tokens_per_micro_batch", "logits_chunk_tokens", "gradient_checkpointing",
                 "lr", "off_policy_correction", "num_gpus"):  # fmt: skip
        assert getattr(learner, name) == getattr(composed.learner, name), name
    assert isinstance(learner, LearnerConfig) and learner.num_ranks == composed.learner.num_ranks == 1
    assert rollout.gpu_memory_utilization == composed.rollout.gpu_memory_utilization
    assert composed.rollout.placement == rollout.placement == "colocated"
