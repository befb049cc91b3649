"""The process environment of a run, in one Ray-free module (importing it imports no Ray, so it can be used
before Ray is).

Ray reads `LOOPBACK_ENV` when it is imported: "0" keeps a local cluster's ports on 127.0.0.1 (measured: without
it, Ray listens on every interface). Every entry point that may start a local cluster calls `keep_ray_on_loopback()`
before its first `import ray`.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "WANDB_SILENT": "true"}
"""What keeps every process off the model hub and quiet in W&B (the network reaches no hub here)."""


def keep_ray_on_loopback() -> None:
    """Ask Ray, imported after this call, to keep a local cluster's ports on 127.0.0.1 (unless the caller set
    `LOOPBACK_ENV` already)."""
    os.environ.setdefault(LOOPBACK_ENV, "0")


def ray_on_loopback() -> bool:
    """Whether a local cluster started by this process stays on loopback (`keep_ray_on_loopback` was honoured)."""
    return os.environ.get(LOOPBACK_ENV) == "0"


def worker_env() -> dict[str, str]:
    """Environment of every Ray worker process: the repo importable, no hub access, quiet libraries."""
    path = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {
        "PYTHONPATH": path,
        **OFFLINE_ENV,
        "TOKENIZERS_PARALLELISM": "false",
        "VLLM_LOGGING_LEVEL": os.environ.get("VLLM_LOGGING_LEVEL", "ERROR"),
        "TQDM_DISABLE": "1",
        "PYTHONWARNINGS": os.environ.get("PYTHONWARNINGS", "ignore"),
    }


RAY_JOB_DIR_MARK = ("runtime_resources", "working_dir_files")
"""Consecutive folders in the path of a working directory that `ray job submit --working-dir` uploaded: Ray
unpacks it under its session's temporary folder and deletes it with the session."""


def ray_job_working_dir(cwd: Path | None = None) -> Path | None:
    """The uploaded Ray job working directory that `cwd` (default: this process's) lies in, or None when it lies
    in none (a plain `python launch.py`, or a job submitted without `--working-dir`)."""
    parts = (cwd or Path.cwd()).resolve().parts
    for i in range(len(parts) - len(RAY_JOB_DIR_MARK)):
        if parts[i : i + len(RAY_JOB_DIR_MARK)] == RAY_JOB_DIR_MARK:
            return Path(*parts[: i + len(RAY_JOB_DIR_MARK) + 1])
    return None
