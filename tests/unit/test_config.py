"""The run schema: defaults validate, bad values are named, GRPO resolves to a uniform budget, Hydra composes."""

import dataclasses
import json
from dataclasses import asdict

import pytest
import torch
from hydra import compose, initialize, initialize_config_dir
from omegaconf import OmegaConf

import launch
from core.config import (
    Algo,
    ConfigError,
    Dtype,
    EngineName,
    Mode,
    RunConfig,
    Ties,
    resolve,
    validate,
)
from core.fields import Bounds, Choice, field_errors


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
        (lambda c: setattr(c.eval, "ks", []), "eval.ks=[]: expected at least 1 value(s), each >= 1"),
        (
            lambda c: setattr(c.learner, "betas", (0.9, 1.0)),
            "learner.betas=(0.9, 1.0): expected 2 values, each in [0, 1)",
        ),
        (lambda c: setattr(c.learner, "dual_clip", 1.0), "learner.dual_clip=1.0: expected > 1"),
        (lambda c: setattr(c.learner, "lr", float("nan")), "learner.lr=nan: expected > 0"),
        (
            lambda c: setattr(c.rollout, "gpu_memory_utilization", 1.5),
            "rollout.gpu_memory_utilization=1.5: expected in (0, 1]",
        ),
        (
            lambda c: setattr(c.temperature, "target_entropy", 0.0),
            "temperature.target_entropy=0.0: expected > 0 or null",
        ),
        (lambda c: setattr(c.temperature, "init_steps", 0), "temperature.init_steps=0: expected >= 1"),
        (
            lambda c: setattr(c.reward, "correct_threshold", float("inf")),
            "reward.correct_threshold=inf: expected a finite",
        ),
        (lambda c: setattr(c.model, "dtype", "float16"), "model.dtype='float16': expected one of float32, bfloat16"),
        (lambda c: setattr(c.budget, "ties", "random"), "budget.ties='random': expected one of average, index"),
        (lambda c: setattr(c.learner, "collective_timeout_s", 0.0), "learner.collective_timeout_s=0.0: expected > 0"),
        (
            lambda c: setattr(c.learner, "collective_timeout_s", -60.0),
            "learner.collective_timeout_s=-60.0: expected > 0",
        ),
    ],
)
def test_bad_values_are_named(change, named):
    cfg = RunConfig()
    change(cfg)
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    assert named in str(err.value)


def test_max_steps_takes_minus_one_or_a_positive_count():
    for good in (-1, 1, 7):
        validate(dataclasses.replace(RunConfig(), train=dataclasses.replace(RunConfig().train, max_steps=good)))
    assert field_errors(dataclasses.replace(RunConfig().train, max_steps=-2)) == ["max_steps=-2: expected -1 or >= 1"]


def test_bounds_describe_what_they_admit():
    assert Bounds(gt=0).describe() == "> 0" and Bounds(ge=0).describe() == ">= 0" and Bounds(le=2).describe() == "<= 2"
    assert Bounds(gt=0, le=1).describe() == "in (0, 1]" and Bounds(ge=0, lt=1).describe() == "in [0, 1)"
    assert Bounds(ge=1, also=(-1,)).describe() == "-1 or >= 1" and Bounds().describe() == "a finite number"
    assert Bounds(gt=0, optional=True).admits(None) and not Bounds(gt=0).admits(None)
    assert not Bounds(ge=0).admits(True) and not Bounds(ge=0).admits("1")  # a bool or a string is no number
    assert Bounds(ge=0, lt=1, length=2).admits((0.0, 0.5)) and not Bounds(ge=0, lt=1, length=2).admits((0.5,))


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
    assert cfg.budget.allocator == "uniform"
    e3 = resolve(RunConfig())
    assert (e3.budget.n_low, e3.budget.n_high) == (4, 12) and e3.temperature.enabled and e3.budget.allocator == "e3"
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
    # generation one step ahead of training, with the truncated importance-sampling correction on
    assert cfg.train.max_staleness == 1 and cfg.learner.off_policy_correction == "tis"


def test_the_demo_runs_one_step_ahead_with_tis_and_the_defaults_and_smoke_stay_synchronous():
    with initialize(version_base="1.3", config_path="../../conf"):
        demo = launch.to_run_config(compose("config"))
        smoke = launch.to_run_config(compose("config", overrides=["+experiment=smoke"]))
    assert (demo.train.max_staleness, demo.learner.off_policy_correction, demo.train.stale_policy) == (1, "tis", "wait")
    for cfg in (RunConfig(), smoke):
        assert cfg.train.max_staleness == 0 and cfg.learner.off_policy_correction == "none"


@pytest.mark.parametrize("mode", ["train", "plan"])
def test_generation_ahead_without_a_correction_is_refused_naming_both_keys_unless_allowed(mode):
    cfg = RunConfig(mode=mode)
    cfg.train.max_staleness = 2
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    assert "train.max_staleness=2 with learner.off_policy_correction=none" in str(err.value)
    assert "train.allow_uncorrected=true" in str(err.value)  # and says how to run it all the same
    cfg.train.allow_uncorrected = True
    validate(cfg)
    cfg.train.allow_uncorrected = False
    for correction in ("tis", "icepop"):
        cfg.learner.off_policy_correction = correction
        validate(cfg)


def test_generation_ahead_without_a_correction_is_not_refused_in_eval_mode_nor_when_synchronous():
    cfg = RunConfig(mode="eval")
    cfg.train.max_staleness = 1
    validate(cfg)  # nothing trains
    assert not RunConfig().train.allow_uncorrected and RunConfig().train.max_staleness == 0
    validate(RunConfig())


@pytest.mark.parametrize(("learner_gpus", "rollout_gpus"), [(1.0, 0.0), (0.0, 1.0), (0.5, 0.0), (0.0, 0.25)])
def test_a_learner_and_rollout_workers_on_different_devices_are_refused_naming_both_keys(learner_gpus, rollout_gpus):
    cfg = RunConfig()
    cfg.learner.num_gpus, cfg.rollout.num_gpus = learner_gpus, rollout_gpus
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    assert f"learner.num_gpus={learner_gpus} with rollout.num_gpus={rollout_gpus}" in str(err.value)
    assert "must both be on GPUs or both on CPUs" in str(err.value)


@pytest.mark.parametrize(("learner_gpus", "rollout_gpus"), [(0.0, 0.0), (1.0, 1.0), (1.0, 0.5)])
def test_a_learner_and_rollout_workers_on_one_kind_of_device_pass(learner_gpus, rollout_gpus):
    cfg = RunConfig()
    cfg.learner.num_gpus, cfg.rollout.num_gpus = learner_gpus, rollout_gpus
    validate(cfg)


def test_the_paper_recipes_bound_the_learners_collectives_by_their_checkpoint_write():
    """12 B/param (float32 policy and AdamW's two moments) over 200 MB/s, with a factor of 4 or more to spare."""
    assert RunConfig().learner.collective_timeout_s == 1800.0
    with initialize(version_base="1.3", config_path="../../conf"):
        for recipe, params in (("paper_e3_1p5b", 1.78e9), ("paper_grpo_1p5b", 1.78e9), ("paper_e3_7b", 7.62e9)):
            raw = compose("config", overrides=[f"+experiment={recipe}"])
            write_s = 12 * params / 200e6
            assert raw.learner.collective_timeout_s >= 4 * write_s, recipe


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


def test_heldout_ks_run_from_one_to_the_samples_through_the_configured_ks():
    cfg = RunConfig()
    assert (cfg.eval.heldout_samples, cfg.eval.ks) == (8, [1, 2, 4, 8, 16])
    assert cfg.eval.heldout_ks() == (1, 2, 4, 8)  # 16 needs more than 8 samples
    cfg.eval.heldout_samples, cfg.eval.ks = 64, [4, 16, 64, 128]
    assert cfg.eval.heldout_ks() == (1, 4, 16, 64)
    cfg.eval.heldout_samples, cfg.eval.ks = 6, [2]
    assert cfg.eval.heldout_ks() == (1, 2, 6)
    cfg.eval.heldout_samples = 0
    assert cfg.eval.heldout_ks() == ()


# ------------------------------------------------------------------------------------------ choices are Enums


def test_choices_behave_as_their_strings():
    assert Mode.eval == "eval" and "eval" == Mode.eval and Mode.eval != "train"
    assert {"float32": 1, "bfloat16": 2}[Dtype.bfloat16] == 2 and Dtype.float32 in Dtype.values()
    assert f"{EngineName.vllm}" == str(EngineName.vllm) == "vllm" and f"{Algo.e3:>4}" == "  e3"
    assert repr(Ties.index) == "'index'" and f"ties={Ties.index!r}" == "ties='index'"
    assert json.dumps({"algo": Algo.grpo}) == '{"algo": "grpo"}'
    assert getattr(torch, Dtype.bfloat16) is torch.bfloat16
    assert Dtype("float32") is Dtype["float32"] is Dtype.float32  # named by value, as OmegaConf looks them up


def test_every_choice_member_is_named_by_its_value():
    for kind in Choice.__subclasses__():
        assert [m.name for m in kind] == list(kind.values()), kind


def compose_run(*overrides: str) -> RunConfig:
    with initialize(version_base="1.3", config_path="../../conf"):
        return launch.to_run_config(compose("config", overrides=list(overrides)))


def test_hydra_turns_yaml_strings_and_overrides_into_members():
    cfg = compose_run(
        "+experiment=smoke", "mode=eval", "rollout.engine=hf", "budget.ties=index", "model.dtype=bfloat16"
    )
    assert (cfg.mode, cfg.rollout.engine, cfg.budget.ties, cfg.model.dtype) == ("eval", "hf", "index", "bfloat16")
    assert cfg.mode is Mode.eval and cfg.model.dtype is Dtype.bfloat16 and cfg.algo is Algo.e3
    with initialize(version_base="1.3", config_path="../../conf"):
        paper = compose("config", overrides=["+experiment=paper_grpo_7b"])
    assert OmegaConf.to_object(paper).model.dtype is Dtype.bfloat16  # a YAML file's string, too


@pytest.mark.parametrize(
    "override, key",
    [
        ("mode=evaluate", "mode"),
        ("algo=ppo", "algo"),
        ("rollout.engine=sglang", "rollout.engine"),
        ("model.dtype=float16", "model.dtype"),
        ("budget.ties=random", "budget.ties"),
        ("data.overlong_prompts=truncate", "data.overlong_prompts"),
        ("data.task=code", "data.task"),
        ("wandb.mode=cloud", "wandb.mode"),
    ],
)
def test_hydra_rejects_a_bad_choice_while_composing_and_names_the_key(override, key):
    bad = override.split("=")[1]
    with initialize(version_base="1.3", config_path="../../conf"):
        with pytest.raises(Exception) as err:
            compose("config", overrides=[override])
    message = f"{err.value}\n{err.value.__cause__}"  # Hydra prints both: "Error merging override ..." and why
    assert f"full_key: {key}" in message and f"Invalid value '{bad}'" in message, message


def test_hydra_rejects_a_bad_choice_in_a_yaml_file_and_names_the_key(tmp_path):
    (tmp_path / "config.yaml").write_text("defaults:\n  - run_schema\n  - _self_\nmodel:\n  dtype: fp16\n")
    with initialize_config_dir(version_base="1.3", config_dir=str(tmp_path)):
        with pytest.raises(Exception) as err:
            compose("config")
    message = f"{err.value}\n{err.value.__cause__}"
    assert "full_key: model.dtype" in message and "Invalid value 'fp16'" in message, message


def test_saved_config_is_plain_and_composes_back(tmp_path):
    cfg = compose_run("+experiment=smoke", "algo=grpo", "rollout.engine=hf", "model.dtype=bfloat16")
    text = OmegaConf.to_yaml(OmegaConf.structured(cfg))  # what launch.py writes to config.yaml
    assert "algo: grpo\n" in text and "engine: hf\n" in text and "dtype: bfloat16\n" in text and "!!" not in text
    plain = json.loads(json.dumps(asdict(cfg), default=str))  # what launch.py gives W&B
    assert plain["algo"] == "grpo" and plain["model"]["dtype"] == "bfloat16" and plain["budget"]["ties"] == "average"
    saved = tmp_path / "config.yaml"
    saved.write_text(text)
    back = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(RunConfig), OmegaConf.load(saved)))
    assert back == cfg and back.algo is Algo.grpo


def test_a_colocated_placement_with_generation_ahead_is_refused_at_composition_naming_both_keys():
    with pytest.raises(ConfigError) as err:
        compose_run("rollout.placement=colocated")  # the demo runs one step ahead
    assert "rollout.placement=colocated with train.max_staleness=1" in str(err.value)
    assert "set train.max_staleness=0" in str(err.value)
    cfg = compose_run("rollout.placement=colocated", "train.max_staleness=0")
    assert cfg.rollout.placement == "colocated"


def test_a_colocated_placement_needs_one_engine_per_learner_rank():
    cfg = RunConfig()
    cfg.rollout.placement, cfg.learner.num_ranks, cfg.rollout.num_workers = "colocated", 2, 1
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    assert "rollout.num_workers=1 and learner.num_ranks=2" in str(err.value)
    assert "set rollout.num_workers=2" in str(err.value)
    cfg.rollout.num_workers = 2
    validate(cfg)
    cfg.learner.num_gpus = 1.0  # one process per rank holds both: the rollout workers' own devices are not used
    validate(cfg)


def test_colocated_engines_reserve_no_resources_of_their_own():
    from cluster.build import required_cpus

    cfg = RunConfig()
    cfg.rollout.num_workers, cfg.rollout.num_cpus, cfg.learner.num_cpus = 1, 0.5, 1.0
    split = required_cpus(cfg)
    cfg.rollout.placement = "colocated"
    assert split - required_cpus(cfg) == pytest.approx(0.5)


def test_a_colocated_rank_takes_at_most_one_gpu():
    cfg = RunConfig()
    cfg.rollout.placement, cfg.learner.num_gpus, cfg.rollout.num_gpus = "colocated", 2.0, 2.0
    with pytest.raises(ConfigError, match="rollout.placement=colocated with learner.num_gpus=2.0"):
        validate(cfg)
