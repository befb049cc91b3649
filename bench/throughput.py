"""Where the time goes: generation throughput (raw engine against rollout actors), the training step's phase
breakdown, and the weight sync against model size, written as one Markdown report.

    python -m bench.throughput [--quick] [--model DIR] [--questions N] [--out bench/results/throughput.md]

(a) Generation: the same `Engine` class a rollout worker builds (`actors.engines.create_engine`), driven
    in-process, against the same prompts sent as `RolloutRequest`s through `RolloutPool.generate` to 1 and 2
    `RolloutWorker` actors, for each engine. Every path is warmed up once, then timed `repeats` times; the
    median is reported. Seeds are fixed, so every path samples the same completions.
(b) Step breakdown: `launch.train` on the embedded default (smoke overrides, more steps and questions), the
    mean of each timed phase of its step records, step 0 (warm-up) left out.
(c) Weight sync: `LearnerGroup.state_dict_ref()` and `RolloutPool.load_weights` (the object-store transport;
    the scheduler's default since issue 14 is the collective one, timed against it by `bench.weight_sync`) for
    the policy and for a wider copy (same tokenizer, random weights) about 10x larger.

Everything runs on one local Ray cluster on loopback, stopped at the end (an already running one, as in tests,
is used and left running). Ray, vLLM and the actors are imported inside functions: Ray must not be imported
before `main` has set the loopback switch (`cluster.environment.keep_ray_on_loopback`).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import logging
import math
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.machine import machine_line
from bench.random_policy import PolicyShape, save_random_policy
from cluster.environment import keep_ray_on_loopback
from core.step_record import StepRecord, step_phases
from reporting.markdown import markdown_table
from reporting.report import OTHER, load_run

if TYPE_CHECKING:
    from core.config import RunConfig
    from core.messages import RolloutRequest

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "bench" / "results" / "throughput.md"
RAY_CPUS = 4
"""Logical CPUs of the local cluster (more than the machine's cores: the actors mostly take turns)."""
CORE_PHASES = ("generate", "score", "train", "sync")
"""The step phases that do the work; the rest of the step's time is scheduler overhead."""
ACTOR_RATIO_TARGET = 0.9
OVERHEAD_TARGET = 0.05
SYNC_TARGET = 0.10


@dataclass(frozen=True)
class BenchSettings:
    """What the benchmark measures and how often."""

    questions: int = 64
    """(a) Training questions used as prompts."""
    samples: int = 8
    """(a) Completions sampled per prompt."""
    max_new_tokens: int = 64
    """(a) Longest completion, in tokens."""
    repeats: int = 3
    """(a) Timed runs of each path after the warm-up (the median is reported)."""
    engines: tuple[str, ...] = ("vllm", "hf")
    """(a) Engines measured."""
    worker_counts: tuple[int, ...] = (1, 2)
    """(a) Rollout actor counts measured."""
    train_steps: int = 8
    """(b) Training steps of the short run."""
    questions_per_step: int = 32
    """(b) Questions per training step."""
    train_engine: str = "auto"
    """(b) `rollout.engine` of the short run."""
    sync_repeats: int = 5
    """(c) Timed weight syncs per model after the warm-up (the median is reported)."""
    sync_engine: str = "auto"
    """(c) `rollout.engine` of the worker that receives the weights."""
    width_scale: int = 3
    """(c) The larger model multiplies width, MLP width and head counts by this (about scale^2 the params)."""
    quick: bool = False
    """Sizes too small to mean much (the report says so)."""

    def __post_init__(self) -> None:
        counts = {
            "questions": self.questions,
            "samples": self.samples,
            "max_new_tokens": self.max_new_tokens,
            "repeats": self.repeats,
            "train_steps": self.train_steps,
            "questions_per_step": self.questions_per_step,
            "sync_repeats": self.sync_repeats,
            "width_scale": self.width_scale,
        }
        for name, value in counts.items():
            if value < 1:
                raise ValueError(f"BenchSettings.{name}={value}: expected >= 1")
        if self.train_steps < 2:
            raise ValueError(f"BenchSettings.train_steps={self.train_steps}: expected >= 2 (step 0 is a warm-up)")
        if not self.engines or not self.worker_counts:
            raise ValueError(
                f"BenchSettings: engines={self.engines} and worker_counts={self.worker_counts} must not be empty"
            )


QUICK = BenchSettings(
    questions=8,
    samples=2,
    max_new_tokens=8,
    repeats=1,
    engines=("hf",),
    worker_counts=(1,),
    train_steps=2,
    questions_per_step=8,
    train_engine="hf",
    sync_repeats=1,
    sync_engine="hf",
    width_scale=2,
    quick=True,
)
"""A check that every part runs (transformers engine only, tiny sizes): its numbers mean little."""


@dataclass(frozen=True)
class GenerationRow:
    """One generation path: its median wall time over the timed runs and the tokens one run generated, or the
    error that stopped it (then `seconds` is NaN and `tokens` 0)."""

    engine: str
    workers: int
    """0 for the raw engine in this process, else the number of rollout actors."""
    seconds: float
    tokens: int
    error: str = ""

    @property
    def tokens_per_s(self) -> float:
        """Generated tokens per second of wall time (NaN for a failed path)."""
        return math.nan if self.error else self.tokens / self.seconds


@dataclass(frozen=True)
class StepBreakdown:
    """Mean seconds per phase over the counted steps of the short training run."""

    phases: dict[str, float]
    """The phases the steps timed, `step`, and `other` (step time outside every phase)."""
    steps: int
    """Steps averaged (the first step of the run is left out as a warm-up)."""
    samples_per_step: float
    tokens_per_step: float

    @property
    def overhead_s(self) -> float:
        """Step time outside generate, score, train and sync."""
        return self.phases["step"] - sum(self.phases.get(p, 0.0) for p in CORE_PHASES)

    def share(self, seconds: float) -> float:
        """`seconds` as a fraction of the mean step."""
        return seconds / self.phases["step"]


@dataclass(frozen=True)
class SyncRow:
    """Weight sync of one model: median seconds of the gather, the load, and both in one go."""

    label: str
    params: int
    megabytes: float
    gather_s: float
    load_s: float
    total_s: float


@dataclass(frozen=True)
class BenchResults:
    """Everything one benchmark run measured, with what it ran on."""

    settings: BenchSettings
    model: str
    generation: list[GenerationRow]
    steps: StepBreakdown
    sync: list[SyncRow]
    machine: dict[str, str]
    wall_s: dict[str, float]
    """Wall seconds of each part (`a`, `b`, `c`), start-up of actors and engines included."""


# -- measuring --------------------------------------------------------------------------------------------------


def timed_median(run: Callable[[], int], repeats: int) -> tuple[float, int]:
    """Call `run` once to warm up, then `repeats` times; the median seconds and median count it returned."""
    run()
    seconds, counts = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        counts.append(run())
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds), int(statistics.median(counts))


def bench_generation(settings: BenchSettings, model: Path, train_file: Path) -> list[GenerationRow]:
    """(a) For each engine: the raw engine in this process, then the pool with each worker count."""
    from transformers import AutoTokenizer

    import launch
    from core.messages import RolloutRequest
    from tasks.prepare import load_split

    rows = []
    for engine in settings.engines:
        base = [f"model.path={model}", f"rollout.engine={engine}", f"rollout.max_new_tokens={settings.max_new_tokens}"]
        cfg = launch.compose_run_config(base)
        split = load_split(train_file, AutoTokenizer.from_pretrained(model), cfg.data, limit=settings.questions)
        requests = [
            RolloutRequest(f"q{i}", tuple(prompt), settings.samples, settings.max_new_tokens, seed=1000 + i, step=0)
            for i, prompt in enumerate(split.prompt_token_ids)
        ]
        rows.append(attempt(engine, 0, partial(measure_raw_engine, cfg, model, requests, settings.repeats)))
        for workers in settings.worker_counts:
            pool_cfg = launch.compose_run_config([*base, f"rollout.num_workers={workers}"])
            rows.append(attempt(engine, workers, partial(measure_pool, pool_cfg, model, requests, settings.repeats)))
    return rows


def attempt(engine: str, workers: int, measure: Callable[[], tuple[float, int]]) -> GenerationRow:
    """The row `measure()` measures, or, when it raises, a failed row holding the error's last line (a failing
    engine must not lose the other paths' results)."""
    try:
        return GenerationRow(engine, workers, *measure())
    except Exception as error:  # noqa: BLE001 - reported in the table instead
        lines = str(error).strip().splitlines() or [""]
        reason = lines[-1] if lines[-1].startswith(type(error).__name__) else f"{type(error).__name__}: {lines[-1]}"
        log.error("generation with %s, %d workers failed: %s", engine, workers, reason)
        return GenerationRow(engine, workers, math.nan, 0, error=reason)


def measure_raw_engine(
    cfg: RunConfig, model: Path, requests: Sequence[RolloutRequest], repeats: int
) -> tuple[float, int]:
    """Median seconds and tokens of one engine call for `requests`, with the engine and torch thread count a
    rollout worker of `cfg` would have, at temperature 1."""
    import torch

    from actors.engines import create_engine

    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.rollout.torch_threads)
    engine = create_engine(
        cfg.rollout,
        str(model),
        dtype=cfg.model.dtype,
        seed=cfg.train.seed,
        max_model_len=cfg.data.max_prompt_tokens + cfg.rollout.max_new_tokens,
    )
    prompts = [list(r.prompt_token_ids) for r in requests]
    counts, seeds = [r.num_samples for r in requests], [r.seed for r in requests]

    def generate() -> int:
        groups = engine.generate(prompts, counts, 1.0, cfg.rollout.max_new_tokens, seeds)
        return sum(len(c.token_ids) for group in groups for c in group)

    try:
        return timed_median(generate, repeats)
    finally:
        engine.close()
        torch.set_num_threads(threads)


def measure_pool(cfg: RunConfig, model: Path, requests: Sequence[RolloutRequest], repeats: int) -> tuple[float, int]:
    """Median seconds and tokens of `RolloutPool.generate(requests)` on the pool `cfg` describes, at
    temperature 1."""
    from cluster.build import build_rollout_pool
    from core.messages import TemperatureUpdate

    pool = build_rollout_pool(cfg, model)
    try:
        pool.set_temperature(TemperatureUpdate(1.0, step=0))
        return timed_median(
            lambda: sum(len(c.token_ids) for r in pool.generate(list(requests)) for c in r.completions), repeats
        )
    finally:
        pool.shutdown()


def bench_steps(settings: BenchSettings, model: Path, work_dir: Path) -> StepBreakdown:
    """(b) A short `launch.train` run; its per-step timings, summarised by `summarize_steps`."""
    import launch

    cfg = launch.compose_run_config(
        [
            "+experiment=smoke",
            "run_name=throughput",
            f"output_dir={work_dir}",
            f"model.path={model}",
            f"rollout.engine={settings.train_engine}",
            f"train.max_steps={settings.train_steps}",
            f"train.questions_per_step={settings.questions_per_step}",
            f"data.max_train_questions={settings.train_steps * settings.questions_per_step}",  # one epoch
            "data.valid_size=4",
            "eval.heldout_samples=0",
            "wandb.mode=disabled",
            f"ray.num_cpus={RAY_CPUS}",
        ]
    )
    launch.train(cfg)
    return summarize_steps(load_run(cfg.run_dir).steps)


def summarize_steps(records: Sequence[StepRecord]) -> StepBreakdown:
    """Mean seconds of each timed phase over every step but the first (a warm-up), and the time left over.

    Raises ValueError when fewer than two steps were recorded or a step was not timed as a whole.
    """
    if len(records) < 2:
        raise ValueError(f"summarize_steps: {len(records)} steps recorded; need at least 2 (step 0 is a warm-up)")
    counted = records[1:]
    missing = [r.step for r in counted if not math.isfinite(r.step_seconds)]
    if missing:
        raise ValueError(f"summarize_steps: steps {missing} have no step time")
    mean = lambda of: statistics.fmean(of(r) for r in counted)  # noqa: E731
    phases = {p: mean(lambda r, p=p: r.step_phases.get(p, 0.0)) for p in step_phases(counted)}
    phases["step"] = mean(lambda r: r.step_seconds)
    phases[OTHER] = phases["step"] - sum(v for p, v in phases.items() if p != "step")
    return StepBreakdown(
        phases=phases,
        steps=len(counted),
        samples_per_step=mean(lambda r: r.rollouts_total),
        tokens_per_step=mean(lambda r: r.generated_tokens),
    )


def build_wider_model(base: Path, out: Path, scale: int, seed: int = 0) -> int:
    """Save to `out` a model like `base` with width, MLP width and head counts times `scale` (head size kept),
    randomly initialised, with `base`'s tokenizer and generation files; returns its parameter count."""
    shape = PolicyShape.of(base, seed=seed)
    wider = dataclasses.replace(
        shape, hidden_size=shape.hidden_size * scale, intermediate_size=shape.intermediate_size * scale,
        num_heads=shape.num_heads * scale, num_kv_heads=shape.num_kv_heads * scale,
    )  # fmt: skip
    return save_random_policy(out, wider, base)


def bench_sync(settings: BenchSettings, model: Path, work_dir: Path) -> list[SyncRow]:
    """(c) Weight sync of the policy and of a model `width_scale`^2 times wider, one learner rank and one worker."""
    wider = work_dir / "wider-model"
    build_wider_model(model, wider, settings.width_scale)
    return [
        measure_sync(model, "policy", settings),
        measure_sync(wider, f"policy x{settings.width_scale} width (random weights)", settings),
    ]


def measure_sync(model: Path, label: str, settings: BenchSettings) -> SyncRow:
    """Median times of `state_dict_ref()` (gather), `load_weights` (load) and both, after one warm-up sync."""
    import launch
    from cluster.build import build_rollout_pool
    from cluster.learner_group import LearnerGroup

    cfg = launch.compose_run_config(
        [f"model.path={model}", f"rollout.engine={settings.sync_engine}", f"ray.num_cpus={RAY_CPUS}"]
    )
    learner = LearnerGroup(str(model), cfg.learner, cfg.model.dtype, cfg.train.seed)
    with contextlib.ExitStack() as stack:
        stack.callback(learner.shutdown)
        pool = build_rollout_pool(cfg, model)
        stack.callback(pool.shutdown)
        gather, load, total = [], [], []
        for version in range(1, settings.sync_repeats + 2):
            start = time.perf_counter()
            ref = learner.state_dict_ref()
            gathered = time.perf_counter()
            pool.load_weights(ref, version)
            done = time.perf_counter()
            if version == 1:  # warm-up; measure the state dict once
                params, megabytes = _state_dict_size(ref)
            else:
                gather.append(gathered - start)
                load.append(done - gathered)
                total.append(done - start)
            del ref
    median = statistics.median
    return SyncRow(label, params, megabytes, median(gather), median(load), median(total))


def _state_dict_size(ref: Any) -> tuple[int, float]:
    """Distinct parameters (a tied output layer counted once) and megabytes of the state dict behind `ref`."""
    import ray

    tensors = {t.data_ptr(): t for t in ray.get(ref).values()}.values()
    return sum(t.numel() for t in tensors), sum(t.numel() * t.element_size() for t in tensors) / 1e6


# -- the run ----------------------------------------------------------------------------------------------------


def machine_info() -> dict[str, str]:
    """The machine (`bench.machine.machine_line`), RAM, library versions, load average now."""
    import ray
    import torch
    import transformers

    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    versions = f"torch {torch.__version__}, ray {ray.__version__}, transformers {transformers.__version__}"
    with contextlib.suppress(ImportError):
        import vllm

        versions += f", vllm {vllm.__version__}"
    return {
        "machine": machine_line(),
        "ram": f"{ram:.1f} GiB",
        "python": platform.python_version(),
        "libraries": versions,
        "load average (1, 5, 15 min) at start": ", ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


@contextlib.contextmanager
def local_ray() -> Iterator[None]:
    """A local Ray cluster on loopback for the block (one already running in this process is used and kept)."""
    keep_ray_on_loopback()
    import ray

    from cluster.build import start_ray
    from core.config import RayConfig

    connected = start_ray(RayConfig(num_cpus=RAY_CPUS), needed_cpus=RAY_CPUS)
    try:
        yield
    finally:
        if connected:
            ray.shutdown()


def run(settings: BenchSettings, model: Path | None = None) -> BenchResults:
    """Run (a), (b) and (c) on `model` (default: the embedded base policy, built if missing)."""
    keep_ray_on_loopback()
    from core.config import ModelConfig, RunConfig
    from tasks.registry import prepare_task

    files = prepare_task(RunConfig(model=ModelConfig(path=str(model) if model else "")))
    assert files.train is not None, "the arithmetic task always has a training split"
    machine = machine_info()
    wall: dict[str, float] = {}
    with local_ray(), tempfile.TemporaryDirectory(prefix="bench-throughput-") as tmp:
        with _stopwatch(wall, "a"):
            generation = bench_generation(settings, files.model, files.train)
        with _stopwatch(wall, "b"):
            steps = bench_steps(settings, files.model, Path(tmp))
        with _stopwatch(wall, "c"):
            sync = bench_sync(settings, files.model, Path(tmp))
    machine["load average (1, 5, 15 min) at end"] = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return BenchResults(settings, str(files.model), generation, steps, sync, machine, wall)


@contextlib.contextmanager
def _stopwatch(wall: dict[str, float], part: str) -> Iterator[None]:
    """Record the block's wall seconds as `wall[part]` and log them."""
    start = time.perf_counter()
    yield
    wall[part] = time.perf_counter() - start
    log.info("part (%s) took %.1f s", part, wall[part])


# -- the report -------------------------------------------------------------------------------------------------


def _verdict(ok: bool) -> str:
    return "meets" if ok else "**misses**"


def generation_table(rows_in: Sequence[GenerationRow]) -> list[str]:
    """(a) as Markdown lines: one row per path, with the ratio to the same engine's raw throughput."""
    raw = {r.engine: r.tokens_per_s for r in rows_in if r.workers == 0}
    rows = []
    for r in rows_in:
        path = (
            "raw engine, in-process"
            if r.workers == 0
            else f"RolloutPool, {r.workers} worker actor{'s' * (r.workers > 1)}"
        )
        if r.error:
            rows.append([r.engine, path, f"failed: `{r.error}`", "", "", ""])
            continue
        ratio = "1.00" if r.workers == 0 else f"{r.tokens_per_s / raw[r.engine]:.2f}"
        rows.append([r.engine, path, r.tokens, f"{r.seconds:.2f}", f"{r.tokens_per_s:,.0f}", ratio])
    headers = ["engine", "path", "tokens / run", "median s", "tokens/s", "actor / raw"]
    return markdown_table(headers, rows, left_columns=2)


def steps_table(steps: StepBreakdown) -> list[str]:
    """(b) as Markdown lines: mean seconds and share of the step per phase, then the derived overheads."""
    order = [p for p in steps.phases if p not in (OTHER, "step")] + [OTHER, "step"]
    rows = [[p, f"{steps.phases[p]:.3f}", f"{steps.share(steps.phases[p]):.1%}"] for p in order]
    overhead = "**scheduler overhead** = step - (generate + score + train + sync)"
    rows.append([overhead, f"{steps.overhead_s:.3f}", f"{steps.share(steps.overhead_s):.1%}"])
    return markdown_table(["phase", "mean s", "share of step"], rows)


def sync_table(rows: Sequence[SyncRow]) -> list[str]:
    """(c) as Markdown lines: one row per model."""
    headers = ["model", "params", "MB", "state_dict_ref() s", "load_weights s", "together s", "together ms / M params"]
    cells = lambda r: [  # noqa: E731
        r.label,
        f"{r.params / 1e6:.2f} M",
        f"{r.megabytes:.1f}",
        f"{r.gather_s:.3f}",
        f"{r.load_s:.3f}",
        f"{r.total_s:.3f}",
        f"{1e3 * r.total_s / (r.params / 1e6):.1f}",
    ]
    return markdown_table(headers, [cells(r) for r in rows])


def reading(results: BenchResults) -> list[str]:
    """What meets the targets and what does not, with the numbers that say why."""
    lines = []
    raw = {r.engine: r for r in results.generation if r.workers == 0}
    for r in results.generation:
        if r.error:
            where = "the raw engine" if r.workers == 0 else f"{r.workers} rollout actor(s)"
            lines.append(f"- {r.engine}, {where}: **failed** with `{r.error}`.")
        if r.workers == 0 or r.error or raw[r.engine].error:
            continue
        ratio = r.tokens_per_s / raw[r.engine].tokens_per_s
        extra = r.seconds - raw[r.engine].seconds
        target = (
            f" ({_verdict(ratio >= ACTOR_RATIO_TARGET)} the >= {ACTOR_RATIO_TARGET} target)" if r.workers == 1 else ""
        )
        actors = "1 actor" if r.workers == 1 else f"{r.workers} actors"
        lines.append(
            f"- {r.engine}, {actors}: {ratio:.2f}x the raw engine's tokens/s{target}; a run takes "
            f"{extra:+.3f} s against the in-process engine ({r.seconds:.3f} s vs {raw[r.engine].seconds:.3f} s)."
        )
    s = results.steps
    overhead, sync = s.share(s.overhead_s), s.share(s.phases.get("sync", 0.0))
    biggest = max(CORE_PHASES, key=lambda p: s.phases.get(p, 0.0))
    rest = ", ".join(f"{p} {v:.3f} s" for p, v in s.phases.items() if p not in (*CORE_PHASES, "step"))
    lines += [
        f"- Step: {s.phases['step']:.2f} s on average ({s.samples_per_step:.0f} samples, {s.tokens_per_step:,.0f} "
        f"generated tokens); {biggest} is the largest phase ({s.share(s.phases[biggest]):.0%} of the step).",
        f"- Scheduler overhead {overhead:.1%} of the step ({_verdict(overhead < OVERHEAD_TARGET)} the "
        f"< {OVERHEAD_TARGET:.0%} target); it is made of: {rest}.",
        f"- Sync {sync:.1%} of the step ({_verdict(sync < SYNC_TARGET)} the < {SYNC_TARGET:.0%} target).",
    ]
    small, large = results.sync[0], results.sync[-1]
    lines.append(
        f"- Weight sync: {large.params / small.params:.1f}x the parameters took {large.total_s / small.total_s:.1f}x "
        f"the time ({small.total_s:.3f} s -> {large.total_s:.3f} s); the gather is "
        f"{large.gather_s / large.total_s:.0%} and the load {large.load_s / large.total_s:.0%} of the larger sync."
    )
    return lines


def render(results: BenchResults, command: str) -> str:
    """The whole report as Markdown."""
    st = results.settings
    m = results.machine
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    quick = " (**--quick**: tiny sizes, numbers are not meaningful)" if st.quick else ""
    parts = [
        f"# Throughput: where the time goes{quick}",
        "",
        f"Produced by `{command}` on {when}, from the repository root.",
        "",
        f"Machine: {m['machine']}, {m['ram']} RAM; Python {m['python']}; {m['libraries']}.",
        "**Shared machine**: other jobs ran on the same cores during this benchmark (load average "
        f"{m['load average (1, 5, 15 min) at start']} at the start, {m['load average (1, 5, 15 min) at end']} at "
        "the end), so absolute numbers are noisy; ratios within this run are the meaningful part.",
        "",
        f"Model: `{results.model}`. One local Ray cluster ({RAY_CPUS} logical CPUs, loopback only). Wall time: "
        + ", ".join(f"({part}) {seconds:.0f} s" for part, seconds in results.wall_s.items())
        + " (actor and engine start-up included).",
        "",
        "## (a) Generation throughput: raw engine against rollout actors",
        "",
        f"{st.questions} training questions rendered with the chat template, {st.samples} samples each, "
        f"max_new_tokens {st.max_new_tokens}, temperature 1, fixed seeds (every path samples the same "
        f"completions). One warm-up run, then the median of {st.repeats}. The raw engine is the `Engine` a worker "
        "builds, called in this process with the worker's torch thread count; the actor paths go through "
        "`RolloutPool.generate` with `RolloutRequest`s.",
        "",
        *generation_table(results.generation),
        "",
        "## (b) Step time breakdown (embedded default)",
        "",
        f"`launch.train` with `+experiment=smoke`, {st.train_steps} steps of {st.questions_per_step} questions, "
        f"rollout.engine={st.train_engine}, W&B disabled. Mean over steps 1-{st.train_steps - 1} "
        f"({results.steps.steps} steps; step 0 is a warm-up and is left out), from `timing/*_s` in metrics.jsonl.",
        "",
        *steps_table(results.steps),
        "",
        "## (c) Weight sync against model size",
        "",
        f"`LearnerGroup.state_dict_ref()` (gather, 1 FSDP2 rank) and `RolloutPool.load_weights` (1 worker, "
        f"rollout.engine={st.sync_engine}) timed separately within each sync; median of {st.sync_repeats} after "
        "one warm-up sync.",
        "",
        *sync_table(results.sync),
        "",
        "## Reading",
        "",
        *reading(results),
        "",
    ]
    return "\n".join(parts)


def main(argv: Sequence[str] | None = None) -> BenchResults:
    """The command line: run the benchmark, write the report to `--out` and print it."""
    parser = argparse.ArgumentParser(prog="python -m bench.throughput", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks that every part runs (< 1 min)")
    parser.add_argument("--model", type=Path, help="a Hugging Face model directory (default: the embedded policy)")
    parser.add_argument("--questions", type=int, help="(a): prompts per generation call (default: 64; quick: 8)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"report file (default: {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.model is not None and not (args.model / "config.json").is_file():
        parser.error(f"--model {args.model}: not a model directory (no config.json)")
    settings = QUICK if args.quick else BenchSettings()
    if args.questions is not None:
        settings = dataclasses.replace(settings, questions=args.questions)
    results = run(settings, args.model)
    words = ["python", "-m", "bench.throughput", *(sys.argv[1:] if argv is None else argv)]
    text = render(results, shlex.join(words))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    print(text)
    print(f"written: {args.out}")
    return results


if __name__ == "__main__":
    main()
