"""Build-once directories: a build is keyed by a hash of its config and of the code that builds it.

``ensure_built(out_dir, key, build)`` returns at once when ``out_dir`` holds a stamp with the same key.
Otherwise it calls ``build(tmp_dir)`` on a fresh sibling temp directory, writes the stamp there, and renames
it into place, so a killed build never leaves a half-written ``out_dir``. A file lock beside ``out_dir`` makes
concurrent callers wait for one build instead of racing.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from types import ModuleType
from typing import Any

STAMP_FILE = "build_stamp.json"
BUILD_REPORT_FILE = "build_report.json"
"""What a base-policy build writes beside the weights (its measurements; the countdown one also its longest
warm-start response, `longest_response_tokens`)."""


def config_key(config: Any, modules: Iterable[ModuleType]) -> str:
    """A hex digest of a dataclass ``config`` and the source files of ``modules`` (the code version)."""
    digest = hashlib.sha256()
    digest.update(json.dumps(dataclasses.asdict(config), sort_keys=True).encode())
    for module in modules:
        if module.__file__ is None:
            raise ValueError(f"module {module.__name__} has no source file to hash")
        digest.update(Path(module.__file__).read_bytes())
    return digest.hexdigest()


def read_stamp(out_dir: Path) -> dict[str, Any] | None:
    """The stamp written by the last completed build in ``out_dir``, or None (no build, or unreadable)."""
    try:
        return json.loads((Path(out_dir) / STAMP_FILE).read_text())
    except (OSError, ValueError):
        return None


def is_current(out_dir: Path, key: str) -> bool:
    """Whether ``out_dir`` holds a completed build for ``key``."""
    stamp = read_stamp(out_dir)
    return stamp is not None and stamp.get("key") == key


def ensure_built(out_dir: Path, key: str, build: Callable[[Path], None], description: dict[str, Any]) -> Path:
    """Make ``out_dir`` hold the build for ``key`` (see module docstring) and return it.

    ``description`` (JSON-serialisable, e.g. the config) is stored in the stamp for people to read.
    """
    out_dir = Path(out_dir).resolve()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(out_dir.parent / f".{out_dir.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if is_current(out_dir, key):
            return out_dir
        for leftover in out_dir.parent.glob(f".{out_dir.name}.tmp-*"):
            shutil.rmtree(leftover, ignore_errors=True)  # from a killed build: we hold the lock
        tmp_dir = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
        try:
            build(tmp_dir)
            stamp = {"key": key, "config": description}
            (tmp_dir / STAMP_FILE).write_text(json.dumps(stamp, indent=2, sort_keys=True) + "\n")
            tmp_dir.chmod(0o755)  # mkdtemp makes it private
            if out_dir.exists():
                stale = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
                out_dir.rename(stale / out_dir.name)
                shutil.rmtree(stale)
            tmp_dir.rename(out_dir)
        finally:
            shutil.rmtree(tmp_dir, ignore_errors=True)
    return out_dir
