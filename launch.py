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

from cluster.environment import keep_ray_on_loopback
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


def memory_plan(cfg: RunConfig, model_path: Path):
    """The run's memory per GPU from the model's `config.json` (no weights loaded), and what does not fit."""
    from core.plan import GB, ModelShape, fit_problems, plan_memory

    try:
        shape = ModelShape.from_config(json.loads((model_path / "config.json").read_text(encoding="utf-8")))
    except KeyError as err:
        raise ConfigError(
            f"{model_path / 'config.json'} lacks {err} (the memory plan reads Qwen2/Llama fields)"
        ) from err
    longest = cfg.data.max_prompt_tokens + cfg.rollout.max_new_tokens
    plan = plan_memory(shape, cfg.learner, cfg.model.dtype, longest)
    gpu_bytes = cfg.learner.gpu_memory_gb * GB
    return plan, fit_problems(plan, gpu_bytes, cfg.rollout.gpu_memory_utilization, longest)


def print_plan(cfg: RunConfig) -> list[str]:
    """`mode=plan`: print the memory of each GPU and whether it fits; return the problems (empty: it fits)."""
    from core.plan import GB, plan_table
    from tasks.registry import prepare_task

    files = prepare_task(cfg)
    plan, problems = memory_plan(cfg, files.model)
    print(f"# Memory plan for {files.model}\n")
    print(plan_table(plan, cfg.learner.gpu_memory_gb * GB, cfg.rollout.gpu_memory_utilization))
    print("\n".join(f"does not fit: {p}" for p in problems) if problems else "fits.")
    return problems


def train(cfg: RunConfig) -> dict:
    """Run training end to end and return the run's summary (also written to `<run_dir>/summary.json`)."""
    import ray
    from tqdm import tqdm

    from actors.report import write_report
    from actors.run_log import RunLog
    from actors.scheduler import StepPlan, latest_checkpoint
    from cluster.build import build_cluster, ray_session, required_cpus
    from core.sampler import EpochSampler
    from tasks.prepare import prepare_inputs

    started = time.perf_counter()
    inputs = prepare_inputs(cfg)
    if cfg.learner.num_gpus > 0:  # a GPU run: stop before any actor starts if the plan does not fit
        problems = memory_plan(cfg, inputs.files.model)[1]
        if problems:
            raise ConfigError(
                "the run does not fit its GPUs (python launch.py mode=plan ... shows the plan): " + "; ".join(problems)
            )
    train_split = inputs.split(inputs.files.train, cfg.data, limit=cfg.data.max_train_questions)
    use_heldout = inputs.files.valid is not None and cfg.data.valid_size > 0
    heldout = inputs.split(inputs.files.valid, cfg.data, limit=cfg.data.valid_size) if use_heldout else None
    steps_per_epoch = EpochSampler(len(train_split), cfg.train.questions_per_step, cfg.train.seed).steps_per_epoch
    total_steps = cfg.train.epochs * steps_per_epoch
    if cfg.train.max_steps > 0:
        total_steps = min(total_steps, cfg.train.max_steps)
    run_dir, resume_from = prepare_run_dir(cfg)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.structured(cfg)), encoding="utf-8")
    log.info(
        "%s: %d training questions (%d steps/epoch, %d steps), model %s, outputs in %s",
        cfg.algo,
        len(train_split),
        steps_per_epoch,
        total_steps,
        inputs.files.model,
        run_dir,
    )

    plan = StepPlan(
        questions_per_step=cfg.train.questions_per_step,
        total_steps=total_steps,
        max_new_tokens=cfg.rollout.max_new_tokens,
        seed=cfg.train.seed,
        pad_token_id=inputs.pad_token_id,
        vocab_size=len(inputs.tokenizer),
        heldout_samples=cfg.eval.heldout_samples,
        eval_temperature=cfg.eval.temperature,
        checkpoint_dir=str(run_dir / "checkpoints"),
        checkpoint_every=cfg.train.checkpoint_every,
        heldout_every=cfg.eval.every_steps,
        max_staleness=cfg.train.max_staleness,
        stale_policy=cfg.train.stale_policy,
    )
    run_log = RunLog(
        run_dir, cfg.run_name, cfg.wandb, json.loads(json.dumps(asdict(cfg), default=str)), resume=cfg.resume
    )
    with ray_session(cfg.ray, required_cpus(cfg)):
        cluster = build_cluster(
            cfg,
            inputs.files.model,
            inputs.files.reward_fn,
            train=train_split,
            plan=plan,
            heldout=heldout,
            run_log=run_log,
        )
        scheduler = cluster.scheduler
        try:
            first_step = ray.get(scheduler.restore.remote(str(resume_from))) if resume_from else 0
            before = heldout_before(
                run_dir, resumed=resume_from is not None, evaluate=lambda: ray.get(scheduler.evaluate.remote())
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
            after = ray.get(scheduler.evaluate.remote())
            summary = {
                "run_name": cfg.run_name,
                "algo": cfg.algo,
                "steps": total_steps,
                "heldout_before": before,
                "heldout_after": after,
                "final_temperature": last.next_temperature if last is not None else None,
                "wall_s": time.perf_counter() - started,
                "run_dir": str(run_dir),
            }
            ray.get(scheduler.finish.remote(summary))
        except ray.exceptions.RayError:
            checkpoint = latest_checkpoint(run_dir / "checkpoints")
            log.error(
                "the run failed; last good checkpoint: %s. Resume with: python launch.py run_name=%s resume=true",
                checkpoint or "none (rerun from the start)",
                cfg.run_name,
            )
            raise
        finally:
            cluster.shutdown()
    report = write_report([run_dir])
    if before and after:
        print(f"held-out greedy accuracy: {before['accuracy']:.3f} before, {after['accuracy']:.3f} after training")
    print(f"outputs: {run_dir}/ (metrics.jsonl, difficulty.parquet, summary.json, checkpoints/, {report.name})")
    return summary


def evaluate(cfg: RunConfig) -> dict:
    """`mode=eval`: greedy accuracy, and the accuracy and pass@k of `eval.num_samples` sampled answers, overall
    and per source, of the model at `model.path` (or the embedded base policy) on the test questions; written to
    `<run_dir>/eval.json` (laid out as `eval_results` says) and `eval.md` (one table row per source)."""
    from actors.eval_report import eval_markdown, eval_results
    from actors.evaluation import greedy_accuracy, sampled_pass_at_k
    from cluster.build import LIGHT_ACTOR_CPUS, build_eval_cluster, ray_session
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
