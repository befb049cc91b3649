"""bench.runs: a benchmark's run is the named run at its seed, W&B off, the benchmark's overrides winning; a
finished run is kept when asked; a grid trains every variant at every seed, and starts no Ray when every run is
finished. `launch.train` and the Ray session are replaced by recorders here (the configs they would get are the
point; training itself is tested in tests/integration)."""

from __future__ import annotations

import contextlib

import pytest

import launch
from bench.runs import SYNCHRONOUS, train_grid, train_run
from cluster import build


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


def _finish(folder) -> None:
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text("{}", encoding="utf-8")


def test_a_grid_trains_seed_by_seed_in_one_ray_session_with_the_first_only_overrides_once(monkeypatch, tmp_path):
    trained, sessions = [], []
    monkeypatch.setattr(launch, "train", trained.append)
    monkeypatch.setattr(build, "ray_session", lambda *a, **k: sessions.append(a) or contextlib.nullcontext())
    variants = {name: [f"algo={name}", "eval.sample_before=false"] for name in ("grpo", "e3")}
    run_dirs = train_grid(tmp_path, [3, 5], variants, first_only=["eval.sample_before=true"])
    assert run_dirs == {name: [tmp_path / f"{name}-seed3", tmp_path / f"{name}-seed5"] for name in variants}
    assert [(cfg.run_name, cfg.train.seed, cfg.algo) for cfg in trained] == [
        ("grpo-seed3", 3, "grpo"), ("e3-seed3", 3, "e3"), ("grpo-seed5", 5, "grpo"), ("e3-seed5", 5, "e3")
    ]  # fmt: skip
    assert [cfg.eval.sample_before for cfg in trained] == [True, False, False, False]
    assert len(sessions) == 1


def test_a_finished_grid_is_only_read_back_and_a_half_finished_one_trains_the_rest(monkeypatch, tmp_path):
    trained = []
    monkeypatch.setattr(launch, "train", trained.append)
    monkeypatch.setattr(build, "ray_session", lambda *a, **k: pytest.fail("started Ray for finished runs"))
    for name in ("grpo-seed0", "grpo-seed1"):
        _finish(tmp_path / name)
    assert train_grid(tmp_path, [0, 1], {"grpo": []}, reuse=True) == {"grpo": [tmp_path / "grpo-seed0",
                                                                               tmp_path / "grpo-seed1"]}  # fmt: skip
    assert trained == []
    monkeypatch.setattr(build, "ray_session", lambda *a, **k: contextlib.nullcontext())
    train_grid(tmp_path, [0, 1, 2], {"grpo": []}, reuse=True)
    assert [cfg.run_name for cfg in trained] == ["grpo-seed2"]
