"""The run schema: defaults validate, bad values are named, GRPO resolves to a uniform budget, Hydra composes."""

import dataclasses

import pytest
from hydra import compose, initialize

import launch
from core.config import ConfigError, RunConfig, resolve, validate


def test_defaults_are_valid():
    validate(RunConfig())


@pytest.mark.parametrize(
    "change, named",
    [
        (lambda c: setattr(c, "algo", "ppo"), "algo='ppo'"),
        (lambda c: setattr(c.budget, "n_low", 10), "budget.n_low=10"),
        (lambda c: setattr(c.temperature, "initial", 0.0), "temperature.initial=0.0"),
        (lambda c: setattr(c.temperature, "initial", -1.0), "temperature.initial=-1.0"),
        (lambda c: setattr(c.temperature, "max_temperature", 0.5), "temperature.max_temperature=0.5"),
        (lambda c: setattr(c.rollout, "engine", "sglang"), "rollout.engine='sglang'"),
        (lambda c: setattr(c.learner, "num_ranks", 10_000), "learner.num_ranks=10000"),
        (lambda c: setattr(c.train, "max_steps", 0), "train.max_steps=0"),
        (lambda c: setattr(c.data, "train_path", "/no/such/file.parquet"), "data.train_path='/no/such/file.parquet'"),
        (lambda c: setattr(c.model, "path", "/no/such/model"), "model.path='/no/such/model'"),
        (lambda c: setattr(c, "run_name", "../escape"), "run_name='../escape'"),
        (lambda c: setattr(c.eval, "every_steps", -1), "eval.every_steps=-1"),
        (lambda c: (setattr(c.eval, "every_steps", 5), setattr(c.data, "valid_size", 0)), "eval.every_steps=5"),
        (lambda c: (setattr(c, "mode", "eval"), setattr(c.eval, "ks", [32])), "eval.ks=[32]"),
    ],
)
def test_bad_values_are_named(change, named):
    cfg = RunConfig()
    change(cfg)
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    assert named in str(err.value)


def test_all_problems_reported_at_once():
    cfg = RunConfig()
    cfg.algo = "x"
    cfg.budget.n = 100
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    assert "algo='x'" in str(err.value) and "budget.n=100" in str(err.value)


def test_grpo_resolves_to_uniform_budget_and_fixed_temperature():
    cfg = resolve(dataclasses.replace(RunConfig(), algo="grpo"))
    assert (cfg.budget.n_low, cfg.budget.n, cfg.budget.n_high, cfg.budget.n_update) == (8, 8, 8, 0)
    assert not cfg.temperature.enabled and not cfg.temperature.annealing
    e3 = resolve(RunConfig())
    assert (e3.budget.n_low, e3.budget.n_high) == (4, 12) and e3.temperature.enabled
    assert cfg.train == e3.train and cfg.data == e3.data  # same questions, seeds and budget total


def test_hydra_composes_overrides_and_experiments():
    with initialize(version_base="1.3", config_path="../../conf"):
        raw = compose("config", overrides=["+experiment=smoke", "algo=grpo", "train.seed=7"])
    cfg = launch.to_run_config(raw)
    assert isinstance(cfg, RunConfig)
    assert cfg.run_name == "smoke" and cfg.train.max_steps == 3 and cfg.train.seed == 7
    assert cfg.budget.n_low == cfg.budget.n_high == cfg.budget.n  # grpo applied after composition


def test_hydra_rejects_unknown_keys():
    with initialize(version_base="1.3", config_path="../../conf"):
        with pytest.raises(Exception, match="no_such_field"):
            compose("config", overrides=["train.no_such_field=1"])


@pytest.mark.parametrize("recipe", ["paper_e3_1p5b", "paper_grpo_1p5b", "paper_e3_7b", "paper_grpo_7b"])
def test_paper_recipes_compose_and_name_missing_paths(recipe, tmp_path):
    with initialize(version_base="1.3", config_path="../../conf"):
        raw = compose("config", overrides=[f"+experiment={recipe}"])
        with pytest.raises(ConfigError) as err:
            launch.to_run_config(raw)
        assert "needs data.train_path" in str(err.value) and "needs model.path" in str(err.value)
        model, data = tmp_path / "model", tmp_path / "train.parquet"
        model.mkdir()
        (model / "config.json").write_text("{}")
        data.write_bytes(b"")
        given = [f"model.path={model}", f"data.train_path={data}", f"data.valid_path={data}", f"data.test_path={data}"]
        cfg = launch.to_run_config(compose("config", overrides=[f"+experiment={recipe}", *given]))
    assert cfg.train.questions_per_step * cfg.budget.n == 512  # the paper's 512 responses a step
    assert cfg.rollout.max_new_tokens == 6144 and cfg.model.dtype == "bfloat16"
    uniform = cfg.budget.n_low == cfg.budget.n_high == 8
    assert uniform == recipe.startswith("paper_grpo") and cfg.temperature.enabled != uniform
    assert cfg.learner.lr == (5e-6 if "1p5b" in recipe else 2e-6)
    assert cfg.eval.every_steps == 10 and cfg.data.valid_size == 512  # the paper's validation curve


def test_heldout_during_training_is_off_by_default_and_needs_a_validation_file_on_math():
    assert RunConfig().eval.every_steps == 0
    with initialize(version_base="1.3", config_path="../../conf"):
        assert launch.to_run_config(compose("config")).eval.every_steps == 10  # the demo's report gets a curve
    cfg = RunConfig()
    cfg.eval.every_steps = 10
    validate(cfg)  # the embedded task always has its validation split
    cfg.data.task = "math"
    with pytest.raises(ConfigError, match="eval.every_steps=10 with data.task='math' needs data.valid_path"):
        validate(cfg)
