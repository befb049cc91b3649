"""A checkpoint's folder on disk: the manifest marks it whole, `latest_checkpoint` skips one that is not (naming
it), a step written again never leaves the step without a complete copy, and everything is fsynced."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import pytest

from actors import checkpoint_files
from actors.checkpoint_files import (
    MANIFEST,
    aside_folder,
    incompleteness,
    latest_checkpoint,
    partial_folder,
    publish,
    write_manifest,
)
from tests.support.fsync import record_fsyncs


def write_checkpoint(root: Path, step: int, content: str = "weights") -> Path:
    """A checkpoint of `step` under `root` as `Scheduler.checkpoint` writes one: files in a partial folder
    (a `policy/` subfolder among them), then published."""
    final = root / f"step_{step}"
    partial = partial_folder(final)
    fill(partial, content)
    return publish(partial, final)


def fill(folder: Path, content: str) -> None:
    (folder / "policy").mkdir()
    (folder / "policy" / "model.safetensors").write_text(content * 10)
    (folder / "policy" / "config.json").write_text("{}")
    (folder / "scheduler.json").write_text(json.dumps({"content": content}))


def content_of(folder: Path) -> str:
    return json.loads((folder / "scheduler.json").read_text())["content"]


def test_the_manifest_lists_every_file_with_its_size(tmp_path):
    fill(tmp_path, "abc")
    path = write_manifest(tmp_path)
    assert path == tmp_path / MANIFEST
    assert json.loads(path.read_text())["files"] == {
        "policy/config.json": 2,
        "policy/model.safetensors": 30,
        "scheduler.json": len(json.dumps({"content": "abc"})),
    }
    assert incompleteness(tmp_path) is None


def test_a_published_checkpoint_is_complete_and_the_latest(tmp_path):
    from actors.scheduler import latest_checkpoint as scheduler_latest_checkpoint

    first, second = write_checkpoint(tmp_path, 1), write_checkpoint(tmp_path, 2)
    assert incompleteness(first) is None and incompleteness(second) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_1", "step_2"]  # no partial, no aside folder left
    assert latest_checkpoint(tmp_path) == second
    assert scheduler_latest_checkpoint(tmp_path) == second  # launch.py and the tests import it from there


def test_no_checkpoint_at_all(tmp_path):
    assert latest_checkpoint(tmp_path) is None
    assert latest_checkpoint(tmp_path / "absent") is None


def truncate(folder: Path) -> str:
    (folder / "policy" / "model.safetensors").write_text("cut")
    return "policy/model.safetensors has 3 bytes"


def remove_file(folder: Path) -> str:
    (folder / "scheduler.json").unlink()
    return "scheduler.json is missing"


def remove_manifest(folder: Path) -> str:
    (folder / MANIFEST).unlink()
    return f"no {MANIFEST}"


def garble_manifest(folder: Path) -> str:
    (folder / MANIFEST).write_text('{"files": ')
    return f"unreadable {MANIFEST}"


@pytest.mark.parametrize("damage", [truncate, remove_file, remove_manifest, garble_manifest])
def test_an_incomplete_folder_is_skipped_with_a_warning_naming_it(tmp_path, caplog, damage):
    write_checkpoint(tmp_path, 1)
    broken = write_checkpoint(tmp_path, 2)
    why = damage(broken)
    with caplog.at_level(logging.WARNING, logger="actors.checkpoint_files"):
        assert latest_checkpoint(tmp_path) == tmp_path / "step_1"
    assert str(broken) in caplog.text and why in caplog.text


def test_a_partial_folder_is_never_a_checkpoint(tmp_path):
    write_checkpoint(tmp_path, 1)
    shutil.copytree(tmp_path / "step_1", tmp_path / ".step_3.partial")  # whole, but its save was not published
    assert latest_checkpoint(tmp_path) == tmp_path / "step_1"


class Crash(Exception):
    """A process killed at this point of `publish`."""


def crash_at(monkeypatch, n: int) -> list[str]:
    """Make the `n`-th file-system effect of `publish` (an fsync, the manifest, a rename, a removal) raise
    `Crash` instead of happening; returns the list the effects are named in as they happen (or crash)."""
    effects: list[str] = []

    def wrap(name, function):
        def effect(*args, **kwargs):
            effects.append(f"{name} {args[0]}")
            if len(effects) == n:
                raise Crash(effects[-1])
            return function(*args, **kwargs)

        return effect

    monkeypatch.setattr(checkpoint_files, "_fsync", wrap("fsync", checkpoint_files._fsync))
    monkeypatch.setattr(checkpoint_files, "write_manifest", wrap("manifest", checkpoint_files.write_manifest))
    monkeypatch.setattr(Path, "rename", wrap("rename", Path.rename))
    monkeypatch.setattr(checkpoint_files.os, "replace", wrap("replace", os.replace))
    monkeypatch.setattr(checkpoint_files.shutil, "rmtree", wrap("rmtree", shutil.rmtree))
    return effects


def test_writing_a_step_again_never_leaves_it_without_a_complete_copy(tmp_path, monkeypatch):
    """A checkpoint of a step that exists already (a run's last step is saved twice; a healed run repeats steps)
    is killed at each point of `publish` in turn: the step's old or new copy is always found whole, and the
    next save of it cleans up."""
    n = 0
    while True:
        n += 1
        root = tmp_path / f"crash_{n}"
        write_checkpoint(root, 1, "first")
        write_checkpoint(root, 2, "old")
        partial = partial_folder(root / "step_2")
        fill(partial, "new")
        with monkeypatch.context() as patch:
            effects = crash_at(patch, n)
            try:
                publish(partial, root / "step_2")
                crashed = False
            except Crash:
                crashed = True
        found = latest_checkpoint(root)
        assert found is not None and found.parent == root and incompleteness(found) is None, effects
        expected = {"old", "new"} if crashed else {"new"}
        assert found.name in ("step_2", ".step_2.old") and content_of(found) in expected, effects
        if found.name == ".step_2.old":
            assert effects[-1].startswith("replace"), "only between the two renames is the step's copy aside"
        write_checkpoint(root, 2, "again")  # the next save of the step, after a restart
        assert latest_checkpoint(root) == root / "step_2" and content_of(root / "step_2") == "again"
        assert sorted(p.name for p in root.iterdir()) == ["step_1", "step_2"]
        if not crashed:
            break
    kinds = [effect.split()[0] for effect in effects]  # every kind of effect was a crash point
    assert {"fsync", "manifest", "rename", "replace"} <= set(kinds) and kinds.count("rmtree") == 2


def test_an_aside_copy_stands_in_for_its_missing_step_with_a_warning(tmp_path, caplog):
    write_checkpoint(tmp_path, 1)
    old = write_checkpoint(tmp_path, 2, "old")
    old.rename(aside_folder(old))  # killed after moving the old copy aside, before the new one was in place
    with caplog.at_level(logging.WARNING, logger="actors.checkpoint_files"):
        assert latest_checkpoint(tmp_path) == tmp_path / ".step_2.old"
    assert str(tmp_path / ".step_2.old") in caplog.text


def test_a_stale_aside_copy_is_ignored_when_its_step_is_whole(tmp_path):
    new = write_checkpoint(tmp_path, 2, "new")
    old = write_checkpoint(tmp_path / "elsewhere", 2, "old")
    shutil.copytree(old, aside_folder(new))  # killed after the new copy was in place, before removing the old
    assert latest_checkpoint(tmp_path) == new and content_of(new) == "new"


def test_publish_fsyncs_every_file_and_folder_before_the_rename(tmp_path, monkeypatch):
    synced = record_fsyncs(monkeypatch)
    final = tmp_path.resolve() / "checkpoints" / "step_3"
    partial = partial_folder(final)
    fill(partial, "w")
    publish(partial, final)
    expected = {partial / "policy" / "model.safetensors", partial / "policy" / "config.json"}
    expected |= {partial / "scheduler.json", partial / MANIFEST, partial / "policy", partial, final.parent}
    assert expected <= set(synced)
    assert synced.index(partial / "scheduler.json") < synced.index(partial / MANIFEST) < synced.index(final.parent)


def test_a_checkpoint_of_an_older_version_without_a_manifest_is_taken_when_its_files_are_there(tmp_path, caplog):
    folder = tmp_path / "step_3"
    for name in checkpoint_files.LEGACY_FILES:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text("x")
    with caplog.at_level(logging.WARNING):
        assert latest_checkpoint(tmp_path) == folder
    assert "written by an older version" in caplog.text
    (folder / "policy" / "optimizer.pt").unlink()  # a folder the old writer left half deleted
    assert latest_checkpoint(tmp_path) is None
