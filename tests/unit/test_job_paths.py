"""A Ray job's uploaded working directory is Ray's temporary copy: relative output and cache folders are refused
there, with a message that says why and what to give instead."""

from __future__ import annotations

import pytest

import launch
from cluster.environment import ray_job_working_dir
from core.config import ConfigError, RunConfig

JOB_DIR = "/tmp/ray/session_2026/runtime_resources/working_dir_files/_ray_pkg_0123abcd"


@pytest.mark.parametrize(
    ("cwd", "expected"),
    [
        (JOB_DIR, JOB_DIR),
        (f"{JOB_DIR}/tasks", JOB_DIR),
        ("/home/me/e3", None),
        ("/tmp/ray/session_2026/runtime_resources/working_dir_files", None),  # Ray's folder itself, no package
    ],
)
def test_ray_job_working_dir_is_found_from_any_folder_inside_it(cwd, expected, tmp_path):
    found = ray_job_working_dir(tmp_path / cwd.lstrip("/"))
    assert found == (None if expected is None else tmp_path / expected.lstrip("/"))


def test_relative_output_and_cache_dirs_are_refused_in_a_job_dir(tmp_path):
    job_dir = tmp_path / JOB_DIR.lstrip("/")
    with pytest.raises(ConfigError) as refused:
        launch.refuse_paths_in_job_dir(RunConfig(), cwd=job_dir)
    message = str(refused.value)
    assert "output_dir='runs'" in message and "cache_dir='.cache'" in message and str(job_dir) in message
    assert "output_dir=$PWD/runs cache_dir=$PWD/.cache" in message


def test_absolute_dirs_in_a_job_dir_and_relative_ones_elsewhere_pass(tmp_path):
    absolute = RunConfig(output_dir=str(tmp_path / "runs"), cache_dir=str(tmp_path / "cache"))
    launch.refuse_paths_in_job_dir(absolute, cwd=tmp_path / JOB_DIR.lstrip("/"))
    launch.refuse_paths_in_job_dir(RunConfig(), cwd=tmp_path / "home")
    with pytest.raises(ConfigError, match="cache_dir='.cache': relative"):
        launch.refuse_paths_in_job_dir(RunConfig(output_dir=str(tmp_path)), cwd=tmp_path / JOB_DIR.lstrip("/"))
