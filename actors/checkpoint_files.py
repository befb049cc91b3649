"""A checkpoint's folder on disk: written whole or not taken at all.

A checkpoint is written into a hidden `.step_<k>.partial` folder (by the scheduler, with learner rank 0 writing
its `policy/`), then `publish` makes it `step_<k>`: it fsyncs every file and folder, writes `manifest.json` last
(every file's relative path and size), moves an earlier `step_<k>` aside to `.step_<k>.old`, renames the new one
into place, fsyncs the parent and only then removes the old one. `latest_checkpoint` takes the highest step whose
folder matches its manifest, skipping (with a warning naming it) one that does not; a `.step_<k>.old` left by a
publish cut short between its two renames stands in for its missing `step_<k>`.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
from pathlib import Path

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
"""In a checkpoint folder, written last: `{"files": {relative path: size in bytes}}` of every other file."""

WEIGHTS_FILE = "model.safetensors"
"""A policy's weights in its folder: the learner's `policy/` of a checkpoint, a queued version's `v<version>/`
(written by the rollout pool's `save_weights`), an embedded base policy's folder."""

STEP_PREFIX = "step_"
LEGACY_FILES = ("scheduler.json", "difficulty.parquet", f"policy/{WEIGHTS_FILE}", "policy/optimizer.pt")
"""What every checkpoint written before manifests holds: such a folder is taken when all of them are there (its
sizes cannot be checked), so that a run checkpointed by an older version still resumes."""


def partial_folder(final: Path) -> Path:
    """The hidden folder (`.step_<k>.partial` beside `final`) a checkpoint is written into before `publish`;
    emptied of what an earlier, interrupted save left there and created (with its parents)."""
    partial = final.with_name(f".{final.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    return partial


def aside_folder(final: Path) -> Path:
    """Where `publish` moves an existing `final` while it renames the new one into place (`.step_<k>.old`)."""
    return final.with_name(f".{final.name}.old")


def _fsync(path: Path, directory: bool = False) -> None:
    """Flush `path` (a file, or a folder's entries) to disk; a folder whose file system cannot fsync one is
    left as it is."""
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    except OSError as err:
        if not directory or err.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def fsync_tree(folder: Path) -> None:
    """Flush every file under `folder`, then every folder under it and `folder` itself, to disk."""
    folders = [folder]
    for root, dirs, files in os.walk(folder):
        for name in files:
            _fsync(Path(root) / name)
        folders.extend(Path(root) / name for name in dirs)
    for path in reversed(folders):  # deepest first: a folder's entries after the files in it
        _fsync(path, directory=True)


def _files(folder: Path) -> dict[str, int]:
    """Every file under `folder` but the manifest: relative path (with `/`) -> size in bytes."""
    sizes = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path != folder / MANIFEST:
            sizes[path.relative_to(folder).as_posix()] = path.stat().st_size
    return sizes


def write_manifest(folder: Path) -> Path:
    """Write `folder/manifest.json`, listing every other file under `folder` with its size, and flush it and
    the folder to disk; returns its path. Call it when everything else is written: it marks the folder whole."""
    path = folder / MANIFEST
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"files": _files(folder)}, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    _fsync(folder, directory=True)
    return path


def incompleteness(folder: Path) -> str | None:
    """None when `folder` holds its manifest and every file the manifest lists, at its size; otherwise what is
    wrong (no manifest, an unreadable one, a missing file, a file of another size)."""
    path = folder / MANIFEST
    try:
        files = json.loads(path.read_text(encoding="utf-8"))["files"]
    except FileNotFoundError:
        if folder.name.startswith(STEP_PREFIX) and all((folder / name).is_file() for name in LEGACY_FILES):
            log.warning(
                "checkpoint %s has no %s (written by an older version); its files are all there", folder, MANIFEST
            )
            return None
        return f"no {MANIFEST} (its save did not finish)"
    except (OSError, ValueError, KeyError, TypeError) as err:
        return f"unreadable {MANIFEST} ({err})"
    for name, size in files.items():
        try:
            found = (folder / name).stat().st_size
        except OSError:
            return f"{name} is missing"
        if found != size:
            return f"{name} has {found} bytes, the manifest says {size}"
    return None


def publish(partial: Path, final: Path) -> Path:
    """Make the fully written folder `partial` the checkpoint `final`: flush it to disk, write its manifest, move
    an existing `final` aside (`.step_<k>.old`), rename `partial` to `final`, flush the parent folder, then
    remove the old copy. At every moment a complete copy of the step is on disk (`final`, or its aside copy that
    `latest_checkpoint` falls back to). Returns `final`."""
    fsync_tree(partial)
    write_manifest(partial)
    aside = aside_folder(final)
    if final.exists():
        shutil.rmtree(aside, ignore_errors=True)  # left by an earlier publish cut short after its second rename
        final.rename(aside)
    os.replace(partial, final)
    _fsync(final.parent, directory=True)
    shutil.rmtree(aside, ignore_errors=True)
    return final


def _step_folders(root: Path) -> dict[int, list[Path]]:
    """The folders under `root` that may hold step k's checkpoint, by step, in the order to try them:
    `step_<k>`, then `.step_<k>.old`."""
    found: dict[int, list[Path]] = {}
    for path in root.glob(f"{STEP_PREFIX}*"):
        step = path.name.removeprefix(STEP_PREFIX)
        if step.isdigit() and path.is_dir():
            found.setdefault(int(step), []).insert(0, path)
    for path in root.glob(f".{STEP_PREFIX}*.old"):
        step = path.name.removeprefix(f".{STEP_PREFIX}").removesuffix(".old")
        if step.isdigit() and path.is_dir():
            found.setdefault(int(step), []).append(path)
    return found


def latest_checkpoint(checkpoint_dir: str | Path) -> Path | None:
    """The complete checkpoint (it matches its manifest) with the highest step under `checkpoint_dir`, or None
    if there is none. An incomplete folder is skipped with a warning naming it and what is wrong; a step whose
    `step_<k>` is missing or incomplete is taken from its `.step_<k>.old` (a publish cut short) if that is
    complete, with a warning."""
    candidates = _step_folders(Path(checkpoint_dir))
    for step in sorted(candidates, reverse=True):
        for folder in candidates[step]:
            problem = incompleteness(folder)
            if problem is None:
                if folder.name != f"{STEP_PREFIX}{step}":
                    log.warning(
                        "checkpoint %s: taking %s, its earlier copy (a save that replaced it was cut short)",
                        folder.with_name(f"{STEP_PREFIX}{step}"),
                        folder,
                    )
                return folder
            log.warning("checkpoint %s is incomplete and skipped: %s", folder, problem)
    return None
