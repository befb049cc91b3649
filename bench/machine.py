"""What machine a benchmark ran on: timings hold only for the CPU they were taken on, so every result names it
(`machine_line`).

The CPU model and its vector extensions matter here: the same run took 4 min 56 s on an Intel Xeon with
AVX-512/AMX and 9 min 10 s on an AMD EPYC without them, and kernels round differently between the two.
"""

from __future__ import annotations

import contextlib
import os
import platform
from pathlib import Path

_EXTENSIONS = (("avx512f", "AVX-512"), ("amx_tile", "AMX"), ("avx2", "AVX2"))
"""/proc/cpuinfo flags worth naming beside the CPU model, strongest first."""


def _cpuinfo_lines() -> list[str]:
    with contextlib.suppress(OSError):
        return Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines()
    return []


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo, else `platform.processor()`, else "unknown CPU")."""
    lines = _cpuinfo_lines()
    name = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "")
    return name or platform.processor() or "unknown CPU"


def cpu_extensions() -> list[str]:
    """The vector extensions of the CPU among AVX-512, AMX and AVX2 (AVX2 named only when AVX-512 is absent)."""
    flags = set(next((line.split(":", 1)[1].split() for line in _cpuinfo_lines() if line.startswith("flags")), []))
    found = [name for flag, name in _EXTENSIONS if flag in flags]
    return [name for name in found if name != "AVX2" or "AVX-512" not in found]


def cpu_description() -> str:
    """One line naming the CPU for a result: model, logical cores, vector extensions, e.g.
    "Intel(R) Xeon(R) Processor, 2 cores, AVX-512 + AMX"."""
    extensions = " + ".join(cpu_extensions()) or "no AVX2"
    return f"{cpu_model()}, {os.cpu_count()} cores, {extensions}"


def accelerator() -> str:
    """The CUDA GPUs torch sees ("NVIDIA H200", "2 x NVIDIA H200"), else "no GPU"."""
    try:
        import torch
    except ImportError:
        return "no GPU"
    if not torch.cuda.is_available():
        return "no GPU"
    names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return ", ".join(f"{names.count(n)} x {n}" if names.count(n) > 1 else n for n in dict.fromkeys(names))


def machine_line() -> str:
    """The one description of the machine a benchmark ran on, which every result carries: the CPU (model, logical
    cores, vector extensions), the architecture and the GPU, e.g.
    "Intel(R) Xeon(R) Processor, 2 cores, AVX-512 + AMX, x86_64, no GPU"."""
    return f"{cpu_description()}, {platform.machine()}, {accelerator()}"
