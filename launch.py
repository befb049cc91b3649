"""Train a policy with GRPO + E3: Hydra composes the config, Ray starts, the cluster is built, the run goes.

python launch.py                                  # the demo: E3 on the embedded arithmetic task
python launch.py algo=grpo run_name=grpo-demo     # the GRPO baseline at the same budget
python launch.py +experiment=smoke                # 3 steps of the whole system
ray job submit --working-dir . -- python launch.py ray.address=auto +experiment=...
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from cluster.environment import keep_ray_on_loopback, ray_job_working_dir
from cluster.plan import memory_plan, print_plan
from core.config import ConfigError, RunConfig, register_configs, resolve, validate
from tasks.dataset import DatasetError

log = logging.getLogger("e3")
register_configs()


def to_run_config(raw: DictConfig) -> RunConfig:
    """The composed Hydra config as a validated `RunConfig`, with what `algo` implies applied."""
    cfg = OmegaConf.to_object(raw)
    assert isinstance(cfg, RunConfig), f"config schema mismatch: got {type(cfg).__name__}"
    validate(cfg)
    return resolve(cfg)


CONF_DIR = Path(__file__).resolve().parent / "conf"


def compose_run_config(overrides: Sequence[str] = ()) -> RunConfig:
    """The run config as `python launch.py <overrides>` would compose it from conf/, validated and resolved, for
    callers other than the command line (benchmarks, tests)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        return to_run_config(compose("config", overrides=list(overrides)))


def prepare_run_dir(cfg: RunConfig) -> tuple[Path, Path | None]:
    """The run directory, and the checkpoint to resume from (`resume=true`). A new run never overwrites an old
    one: a previous run directory of the same name is moved aside to `<run_name>.<time>`."""
    from actors.scheduler import latest_checkpoint

    run_dir = cfg.run_dir
    if cfg.resume:
        checkpoint = latest_checkpoint(run_dir / "checkpoints")
        if checkpoint is None:
            raise ConfigError(f"resume=true but {run_dir / 'checkpoints'} holds no checkpoint to resume from")
        return run_dir, checkpoint
    if run_dir.exists():
        aside = run_dir.with_name(f"{run_dir.name}.{time.strftime('%Y%m%d-%H%M%S')}")
        run_dir.rename(aside)
        log.warning("an earlier run of the same name was moved to %s", aside)
    run_dir.mkdir(parents=True)
    return run_dir, None


def refuse_paths_in_job_dir(cfg: RunConfig, cwd: Path | None = None) -> None:
    """Raise `ConfigError` when this process runs in the working directory that `ray job submit --working-dir`
    uploaded (Ray's temporary copy, deleted with its session) and `output_dir` or `cache_dir` is relative: the
    run's outputs would be lost with that copy and the base policy built again inside it. Does nothing otherwise."""
    job_dir = ray_job_working_dir(cwd)
    paths = {"output_dir": cfg.output_dir, "cache_dir": cfg.cache_dir}
    relative = [f"{key}={value!r}" for key, value in paths.items() if not Path(value).is_absolute()]
    if job_dir is not None and relative:
        raise ConfigError(
            f"{' and '.join(relative)}: relative, but this process runs in Ray's uploaded copy of the job's "
            f"working directory ({job_dir}), which Ray deletes with its session; the run's outputs would be lost "
            "with it and the base policy built again inside it. Give absolute folders that every node of the "
            "cluster sees, e.g. `output_dir=$PWD/runs cache_dir=$PWD/.cache` on the `ray job submit` command line"
        )


HELDOUT_BEFORE = "heldout_before.json"
"""The held-out evaluation of the base policy, in the run directory: written once, before the first step, and
read back (not evaluated again) when the run resumes."""


def heldout_before(run_dir: Path, resumed: bool, evaluate: Callable[[], dict[str, Any]]) -> dict | None:
    """The held-out evaluation of the policy before training. A new run evaluates it (`evaluate()`) and persists
    it as `<run_dir>/heldout_before.json`; a resumed run reads it back from there and evaluates nothing (its
    policy is the checkpoint's, not the one training started from). None when a resumed run's directory holds no
    such file (a run started before the file existed)."""
    path = run_dir / HELDOUT_BEFORE
    if resumed:
        if not path.is_file():
            log.warning("%s is missing: the held-out accuracy before training is unknown for this run", path)
            return None
        log.info("held-out evaluation before training: kept from %s, not evaluated again", path)
        return json.loads(path.read_text(encoding="utf-8"))
    log.info("held-out evaluation before training")
    before = evaluate()
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(json.dumps(before, indent=2), encoding="utf-8")
    os.replace(partial, path)
    return before


def run_steps(
    cfg: RunConfig, scheduler: Any, run_dir: Path, resume_from: Path | None, total_steps: int
) -> dict[str, Any]:
    """One attempt at the run on a built cluster: restore `resume_from` (if any), evaluate before training (or
    keep the persisted evaluation), run the remaining steps, checkpoint, evaluate after. Returns the run's summary
    but its wall time and recoveries."""
    import ray
    from tqdm import tqdm

    if resume_from is None:
        ray.get(scheduler.start.remote())
        first_step = 0
    else:
        first_step = ray.get(scheduler.restore.remote(str(resume_from)))
    before = heldout_before(
        run_dir,
        resumed=resume_from is not None,
        evaluate=lambda: ray.get(scheduler.evaluate.remote(sample=cfg.eval.sample_before)),
    )
    bar = tqdm(range(first_step, total_steps), desc=cfg.run_name, unit="step", dynamic_ncols=True)
    last = None
    for _ in bar:
        last = ray.get(scheduler.step.remote())
        bar.set_postfix(
            epoch=last.epoch,
            reward=f"{last.reward_mean:.3f}",
            T=f"{last.temperature:.3f}",
            H=f"{last.entropy:.3f}",
            refresh=False,
        )
    ray.get(scheduler.checkpoint.remote())
    after = ray.get(scheduler.evaluate.remote(temperatures=tuple(cfg.eval.after_temperatures)))
    summary = {
        "run_name": cfg.run_name,
        "algo": cfg.algo,
        "steps": total_steps,
        "heldout_before": before,
        "heldout_after": after,
        "final_temperature": last.next_temperature if last is not None else None,
        "run_dir": str(run_dir),
    }
    return summary


def train(cfg: RunConfig) -> dict:
    """Run training end to end and return the run's summary (also written to `<run_dir>/summary.json`): prepare
    the inputs, plan the run, run it (healing up to `train.max_failures` lost processes or nodes:
    `cluster.recovery.run_with_recovery`; `summary["recoveries"]` counts them), report."""
    from actors.settings import SchedulerSettings
    from cluster.build import build_cluster
    from cluster.recovery import run_with_recovery
    from reporting.run_log import RunLog
    from tasks.prepare import prepare_inputs

    started = time.perf_counter()
    inputs = prepare_inputs(cfg)
    refuse_gpus_that_do_not_fit(cfg, inputs.files.model)
    train_split = inputs.split(inputs.files.train, cfg.data, limit=cfg.data.max_train_questions)
    use_heldout = inputs.files.valid is not None and cfg.data.valid_size > 0
    heldout = inputs.split(inputs.files.valid, cfg.data, limit=cfg.data.valid_size) if use_heldout else None
    run_dir, resume_from = prepare_run_dir(cfg)
    checkpoints = run_dir / "checkpoints"
    settings = SchedulerSettings.from_config(
        cfg, len(train_split), inputs.pad_token_id, len(inputs.tokenizer), checkpoint_dir=str(checkpoints)
    )
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.structured(cfg)), encoding="utf-8")
    log.info("%s: %d training questions, %d steps of %d, model %s, outputs in %s", cfg.algo, len(train_split),
             settings.total_steps, settings.questions_per_step, inputs.files.model, run_dir)  # fmt: skip
    run_config = json.loads(json.dumps(asdict(cfg), default=str))
    run_log = RunLog(run_dir, cfg.run_name, cfg.wandb, run_config, resume=cfg.resume)

    def build() -> Any:
        return build_cluster(cfg, inputs.files.model, inputs.files.reward_fn, train=train_split, settings=settings,
                             heldout=heldout, run_log=run_log)  # fmt: skip

    def run(cluster: Any, resume_from: Path | None) -> dict[str, Any]:
        summary = run_steps(cfg, cluster.scheduler, run_dir, resume_from, settings.total_steps)
        return {**summary, "wall_s": time.perf_counter() - started}

    summary = run_with_recovery(cfg, build, run, checkpoints, resume_from, run_log)
    report_run(summary, run_dir)
    return summary


def refuse_gpus_that_do_not_fit(cfg: RunConfig, model_path: Path) -> None:
    """A GPU run whose memory plan does not fit its GPUs stops here, before any actor starts (`mode=plan` shows
    the plan); a CPU run is not planned."""
    if cfg.learner.num_gpus > 0:
        problems = memory_plan(cfg, model_path)[1]
        if problems:
            raise ConfigError(
                "the run does not fit its GPUs (python launch.py mode=plan ... shows the plan): " + "; ".join(problems)
            )


def report_run(summary: dict[str, Any], run_dir: Path) -> None:
    """Write the run's report page and print where its outputs are, with the held-out accuracy before and after."""
    from reporting.report import write_report

    report = write_report([run_dir])
    before, after = summary["heldout_before"], summary["heldout_after"]
    if summary["recoveries"]:
        log.info("the run recovered %d time(s) from a lost process or node (summary.json: recoveries)",
                 summary["recoveries"])  # fmt: skip
    if before and after:
        print(f"held-out greedy accuracy: {before['accuracy']:.3f} before, {after['accuracy']:.3f} after training")
    print(f"outputs: {run_dir}/ (metrics.jsonl, difficulty.parquet, summary.json, checkpoints/, {report.name})")


def evaluate(cfg: RunConfig) -> dict:
    """`mode=eval`: greedy accuracy, and the accuracy and pass@k of `eval.num_samples` sampled answers, overall
    and per source, of the model at `model.path` (or the embedded base policy) on the test questions; written to
    `<run_dir>/eval.json` (laid out as `eval_results` says) and `eval.md` (one table row per source)."""
    from actors.evaluation import greedy_accuracy, sampled_pass_at_k
    from cluster.build import LIGHT_ACTOR_CPUS, build_eval_cluster, ray_session
    from reporting.eval_report import eval_markdown, eval_results
    from tasks.prepare import prepare_inputs

    inputs = prepare_inputs(cfg)
    if inputs.files.test is None:
        raise ConfigError("mode=eval needs data.test_path")
    test = inputs.split(inputs.files.test, cfg.data)
    run_dir = cfg.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    ks = sorted({k for k in cfg.eval.ks if k <= cfg.eval.num_samples})
    with ray_session(cfg.ray, cfg.rollout.num_workers * cfg.rollout.num_cpus + LIGHT_ACTOR_CPUS):
        workers = build_eval_cluster(cfg, inputs.files.model, inputs.files.reward_fn)
        try:
            greedy = greedy_accuracy(
                rollout_pool=workers.rollout_pool,
                scorer=workers.scorer,
                split=test,
                max_new_tokens=cfg.rollout.max_new_tokens,
            )
            sampled = None
            if cfg.eval.num_samples:
                sampled = sampled_pass_at_k(
                    rollout_pool=workers.rollout_pool,
                    scorer=workers.scorer,
                    split=test,
                    max_new_tokens=cfg.rollout.max_new_tokens,
                    num_samples=cfg.eval.num_samples,
                    temperature=cfg.eval.temperature,
                    ks=ks,
                    seed=cfg.train.seed,
                    restore_temperature=cfg.eval.temperature,
                )
        finally:
            workers.shutdown()
    results = eval_results(
        model=str(inputs.files.model),
        test=str(inputs.files.test),
        sources_of_questions=[q.data_source for q in test.questions],
        greedy=greedy,
        sampled=sampled,
        num_samples=cfg.eval.num_samples,
        temperature=cfg.eval.temperature,
        ks=ks,
    )
    (run_dir / "eval.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
    (run_dir / "eval.md").write_text(eval_markdown(results), encoding="utf-8")
    print(eval_markdown(results))
    print(f"outputs: {run_dir}/eval.json, {run_dir}/eval.md")
    return results


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(raw: DictConfig) -> None:
    """Entry point: validate the config before anything starts, then train."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = to_run_config(raw)
        refuse_paths_in_job_dir(cfg)
        if not cfg.ray.address:  # a local cluster: keep every port on loopback (read when Ray is imported)
            keep_ray_on_loopback()
        if cfg.mode == "plan":
            sys.exit(1 if print_plan(cfg) else 0)
        evaluate(cfg) if cfg.mode == "eval" else train(cfg)
    except (ConfigError, DatasetError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
