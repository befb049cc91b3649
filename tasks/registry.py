"""Where a run's questions, base policy and reward function come from, for each task.

The embedded default (`arithmetic`) generates its data and builds its base policy on first use, under the cache
directory; `math` reads verl-style files given in the config and needs a model directory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from core.config import RunConfig

REWARD_FNS = {"arithmetic": "tasks.arithmetic.reward:reward", "math": "tasks.math.reward:reward"}


@dataclass(frozen=True)
class TaskFiles:
    """Resolved inputs of a run."""

    train: Path | None
    """Training questions (None in `mode=eval`)."""
    valid: Path | None
    """Held-out questions evaluated before and after training, if any."""
    test: Path | None
    """Test questions for `mode=eval`, if any."""
    model: Path
    """The base policy's Hugging Face directory."""
    reward_fn: str
    """`module:function` of the reward."""


def prepare_task(cfg: RunConfig) -> TaskFiles:
    """Resolve (and for the embedded default, build if missing or stale) the run's data, model and reward."""
    data = cfg.data
    reward_fn = data.reward_fn or REWARD_FNS[data.task]
    if data.task == "arithmetic":
        from tasks.arithmetic.build_base import BasePolicyConfig, ensure_base_policy
        from tasks.arithmetic.generate import ensure_datasets

        base = BasePolicyConfig()
        cache = Path(cfg.cache_dir) / "arithmetic"
        splits = ensure_datasets(cache / "data", base.data)
        model = Path(cfg.model.path) if cfg.model.path else ensure_base_policy(cache / "base-policy", base)
        pick = lambda given, split: Path(given) if given else splits[split]  # noqa: E731
        return TaskFiles(
            train=pick(data.train_path, "train"),
            valid=pick(data.valid_path, "valid"),
            test=pick(data.test_path, "test"),
            model=model,
            reward_fn=reward_fn,
        )
    if not cfg.model.path:
        raise ValueError(f"data.task={data.task!r} needs model.path (a Hugging Face model directory)")
    as_path = lambda given: Path(given) if given else None  # noqa: E731
    return TaskFiles(
        train=as_path(data.train_path),
        valid=as_path(data.valid_path),
        test=as_path(data.test_path),
        model=Path(cfg.model.path),
        reward_fn=reward_fn,
    )
