"""What a result was measured on: CPU model and the flags that decide int8 speed, cores,
library versions, threads and the load average."""

from __future__ import annotations

import contextlib
import os
import platform
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch

#: CPU flags worth recording: AVX2 and AVX-512 widths, and the int8 dot-product extensions
#: (VNNI) without which ONNX Runtime's u8 x s8 kernels can saturate.
FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")
VERSIONS = ("numpy", "onnx", "onnxruntime")
#: Environment variables that cap the instruction set PyTorch's and oneDNN's kernels use
#: (e.g. to measure AVX2 kernels on an AVX-512 CPU); ONNX Runtime has no such cap.
ISA_CAPS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA")


def _cpuinfo() -> tuple[str, set[str]]:
    """The CPU model name and its flags from ``/proc/cpuinfo`` (empty where there is none)."""
    model, flags = platform.processor() or platform.machine(), set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model in ("", platform.machine()):
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    return model, flags


def _version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def load_average() -> float | None:
    """The 1-minute load average: other processes on the CPUs make every timing noisier."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def machine_info(packages: tuple[str, ...] = (), **extra: Any) -> dict[str, Any]:
    """CPU model, flags, cores, Python / torch / ``VERSIONS`` / ``packages`` versions, torch
    threads and the current 1-minute load average, plus ``extra``."""
    model, flags = _cpuinfo()
    return {
        "cpu": model,
        "cpu_flags": {flag: flag in flags for flag in FLAGS},
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        **{package: _version(package) for package in (*VERSIONS, *packages)},
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "isa_caps": {name: os.environ[name] for name in ISA_CAPS if name in os.environ},
        "torch_threads": torch.get_num_threads(),
        "load_average_1min": load_average(),
        **extra,
    }
