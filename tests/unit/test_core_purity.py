"""Dependencies point one way: `launch.py -> cluster -> actors -> core`, `tasks` used by `actors` and `cluster`,
and `reporting` (what a run leaves to read) a leaf beside them that imports only `core`.

Two checks. Statically, every `import` statement in `core/`, `reporting/`, `actors/` and `cluster/` (lazy ones
inside functions included, relative ones resolved) names no package of a higher layer: `core` imports none of
`reporting`, `actors`, `cluster`, `tasks`, `bench`, `launch`, `ray`, `vllm`; `reporting` none of `actors`,
`cluster`, `tasks`, `bench`, `launch`; `actors` none of `cluster`, `bench`, `launch`; `cluster` none of `bench`,
`launch`. At run time, every `core` and `reporting` module imports in a fresh interpreter where the packages its
layer forbids cannot be imported, so that no third-party import pulls one in either.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
CORE_MODULES = sorted(f"core.{path.stem}" for path in (REPO_ROOT / "core").glob("*.py") if path.stem != "__init__")
# (not reporting/__main__.py: importing it runs the report's command line)
REPORTING_MODULES = sorted(f"reporting.{p.stem}" for p in (REPO_ROOT / "reporting").glob("*.py") if p.stem[0] != "_")
# package -> the top-level packages its modules must never import
FORBIDDEN = {
    "core": ("reporting", "actors", "cluster", "tasks", "bench", "launch", "ray", "vllm"),
    "reporting": ("actors", "cluster", "tasks", "bench", "launch"),
    "actors": ("cluster", "bench", "launch"),
    "cluster": ("bench", "launch"),
}


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import statement in the file at `path` (relative to REPO_ROOT),
    wherever it stands in the file; `from x import y` counts as importing `x`."""
    package = list(path.relative_to(REPO_ROOT).with_suffix("").parts[:-1])
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            found.append((node.lineno, ".".join([*base, *([node.module] if node.module else [])])))
    return found


def layer_violations(package: str, forbidden: tuple[str, ...]) -> list[str]:
    """`file:line imports module` for each import under `package/` of a module in one of the `forbidden`
    top-level packages."""
    return [
        f"{path.relative_to(REPO_ROOT)}:{line} imports {module}"
        for path in sorted((REPO_ROOT / package).rglob("*.py"))
        for line, module in imported_modules(path)
        if module.split(".")[0] in forbidden
    ]


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_import_points_up_the_layers(package: str) -> None:
    assert (REPO_ROOT / package / "__init__.py").is_file()
    assert layer_violations(package, FORBIDDEN[package]) == []


def test_the_static_check_sees_lazy_and_relative_imports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys.modules[__name__], "REPO_ROOT", tmp_path)
    (tmp_path / "core" / "sub").mkdir(parents=True)
    (tmp_path / "core" / "sub" / "m.py").write_text(
        "import os\nfrom .. import budget\n\ndef later():\n    from cluster.build import start_ray\n    import tasks\n"
    )
    assert imported_modules(tmp_path / "core" / "sub" / "m.py") == [
        (1, "os"),
        (2, "core"),
        (5, "cluster.build"),
        (6, "tasks"),
    ]
    assert layer_violations("core", FORBIDDEN["core"]) == [
        "core/sub/m.py:5 imports cluster.build",
        "core/sub/m.py:6 imports tasks",
    ]


_IMPORT_WITH_BLOCKER = textwrap.dedent(
    """
    import importlib
    import sys
    import traceback

    BLOCKED = tuple(sys.argv[1].split(","))

    class Blocker:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"this layer must not import {name!r}")
            return None

    sys.meta_path.insert(0, Blocker())
    failed = []
    for module in sys.argv[2:]:
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


def import_blocked(
    modules: list[str], blocked: tuple[str, ...] = FORBIDDEN["core"]
) -> subprocess.CompletedProcess[str]:
    """Import `modules` in a fresh interpreter (repo root as cwd) in which the `blocked` packages cannot be
    imported."""
    return subprocess.run(
        [sys.executable, "-c", _IMPORT_WITH_BLOCKER, ",".join(blocked), *modules],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_every_core_module_imports_without_the_higher_layers_ray_or_vllm() -> None:
    assert "core.budget" in CORE_MODULES and "core.grpo" in CORE_MODULES  # discovery works
    result = import_blocked(CORE_MODULES)  # one interpreter for all: torch is imported once
    assert result.returncode == 0, result.stderr


def test_every_reporting_module_imports_without_the_other_project_packages() -> None:
    assert "reporting.report" in REPORTING_MODULES and "reporting.run_log" in REPORTING_MODULES
    result = import_blocked(REPORTING_MODULES, FORBIDDEN["reporting"])
    assert result.returncode == 0, result.stderr


def test_the_blocker_blocks() -> None:
    for package in ("ray", "actors"):
        result = import_blocked([package])
        assert result.returncode != 0
        assert f"this layer must not import {package!r}" in result.stderr
