"""`core` must never import ray or vllm (ARCHITECTURE.md): import every core module where those are blocked."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
CORE_MODULES = sorted(f"core.{path.stem}" for path in (REPO_ROOT / "core").glob("*.py") if path.stem != "__init__")

_IMPORT_WITH_BLOCKER = textwrap.dedent(
    """
    import importlib
    import sys
    import traceback

    BLOCKED = ("ray", "vllm")

    class Blocker:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"core must not import {name!r}")
            return None

    sys.meta_path.insert(0, Blocker())
    failed = []
    for module in sys.argv[1:]:
        try:
            importlib.import_module(module)
        except Exception:
            failed.append(module)
            traceback.print_exc()
    leaked = sorted(name for name in sys.modules if name.split(".")[0] in BLOCKED)
    if failed or leaked:
        sys.exit(f"failed to import {failed}; blocked packages loaded: {leaked}")
    """
)


def import_blocked(modules: list[str]) -> subprocess.CompletedProcess[str]:
    """Import `modules` in a fresh interpreter (repo root as cwd) in which ray and vllm cannot be imported."""
    return subprocess.run(
        [sys.executable, "-c", _IMPORT_WITH_BLOCKER, *modules],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_every_core_module_imports_without_ray_or_vllm() -> None:
    assert "core.budget" in CORE_MODULES and "core.grpo" in CORE_MODULES  # discovery works
    result = import_blocked(CORE_MODULES)  # one interpreter for all: torch is imported once
    assert result.returncode == 0, result.stderr


def test_the_blocker_blocks() -> None:
    result = import_blocked(["ray"])
    assert result.returncode != 0
    assert "core must not import 'ray'" in result.stderr
