"""bench.machine names the CPU that every benchmark result and README timing is tied to."""

import os
import platform
from pathlib import Path

from bench.machine import accelerator, cpu_description, cpu_extensions, cpu_model, machine_line


def test_cpu_description_names_model_cores_and_extensions() -> None:
    description = cpu_description()
    assert description.startswith(cpu_model() + ", ")
    assert f"{os.cpu_count()} cores" in description
    flags = next(
        (
            line.split(":", 1)[1].split()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("flags")
        ),
        [],
    )
    assert ("AVX-512" in cpu_extensions()) == ("avx512f" in flags)
    assert ("AMX" in cpu_extensions()) == ("amx_tile" in flags)
    if "avx512f" in flags:
        assert "AVX2" not in cpu_extensions()  # implied, not repeated


def test_machine_line_is_the_cpu_then_architecture_and_gpu() -> None:
    assert machine_line() == f"{cpu_description()}, {platform.machine()}, {accelerator()}"
