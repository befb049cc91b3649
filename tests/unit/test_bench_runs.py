"""bench.runs: a benchmark's run is the named run at its seed, W&B off, the benchmark's overrides winning; a
finished run is kept when asked. `launch.train` is replaced by a recorder here (the config it would get is the
point; training itself is tested in tests/integration)."""

from __future__ import annotations

import launch
from bench.runs import SYNCHRONOUS, train_run


def test_a_run_is_named_seeded_and_the_overrides_win(monkeypatch, tmp_path):
    trained = []
    monkeypatch.setattr(launch, "train", trained.append)
    folder = train_run(tmp_path, "grpo-seed3", 3, ["algo=grpo", *SYNCHRONOUS, "wandb.mode=offline"])
    [cfg] = trained
    assert folder == tmp_path / "grpo-seed3"
    assert (cfg.run_name, cfg.train.seed, cfg.output_dir, cfg.algo) == ("grpo-seed3", 3, str(tmp_path), "grpo")
    assert (cfg.train.max_staleness, cfg.learner.off_policy_correction) == (0, "none")
    assert cfg.wandb.mode == "offline"  # the caller's override wins over the default "disabled"


def test_reuse_keeps_a_finished_run_and_trains_an_unfinished_one(monkeypatch, tmp_path):
    trained = []
    monkeypatch.setattr(launch, "train", trained.append)
    (tmp_path / "done").mkdir()
    (tmp_path / "done" / "summary.json").write_text("{}", encoding="utf-8")
    (tmp_path / "half").mkdir()  # started, no summary: trained again
    assert train_run(tmp_path, "done", 0, [], reuse=True) == tmp_path / "done"
    assert trained == []
    train_run(tmp_path, "half", 0, [], reuse=True)
    train_run(tmp_path, "done", 0, [])  # without reuse a finished run is trained again
    assert [cfg.run_name for cfg in trained] == ["half", "done"]
    assert all(cfg.wandb.mode == "disabled" for cfg in trained)
