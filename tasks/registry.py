"""Where a run's questions, base policy and reward function come from, for each task.

The embedded tasks (`arithmetic`, the default, and `countdown`) generate their data and build their base policy
on first use, under the cache directory; `math` reads verl-style files given in the config and needs a model directory.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.config import RunConfig

REWARD_FNS = {
    "arithmetic": "tasks.arithmetic.reward:reward",
    "countdown": "tasks.countdown.reward:reward",
    "math": "tasks.math.reward:reward",
}
ANSWER_KEY_FNS = {"countdown": "tasks.countdown.reward:answer_key"}
"""Tasks whose answers have a canonical form: `module:function` mapping a completion to it (None: no answer)."""


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


EMBEDDED_TASKS = ("arithmetic", "countdown")
"""Tasks whose data and base policy the project builds itself."""


def _embedded_builders(task: str) -> tuple[Any, Callable[..., dict[str, Path]], Callable[..., Path]]:
    """The default base-policy config, `ensure_datasets` and `ensure_base_policy` of an embedded task."""
    if task == "countdown":
        from tasks.countdown import build_base as countdown
        from tasks.countdown.generate import ensure_datasets as countdown_datasets

        return countdown.BasePolicyConfig(), countdown_datasets, countdown.ensure_base_policy
    from tasks.arithmetic import build_base as arithmetic

    return arithmetic.BasePolicyConfig(), arithmetic.ensure_datasets, arithmetic.ensure_base_policy


def prepare_task(cfg: RunConfig) -> TaskFiles:
    """Resolve (and for the embedded default, build if missing or stale) the run's data, model and reward."""
    data = cfg.data
    reward_fn = data.reward_fn or REWARD_FNS[data.task]
    if data.task in EMBEDDED_TASKS:
        base, ensure_datasets, ensure_base_policy = _embedded_builders(data.task)
        cache = Path(cfg.cache_dir) / data.task
        given = (data.train_path, data.valid_path, data.test_path)
        splits = {} if all(given) else ensure_datasets(cache / "data", base.data)  # generated only when needed
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
