"""Fixtures shared across the test suite.

None of these is autouse: a module opts in with
``pytestmark = pytest.mark.usefixtures("single_thread")`` (or ``"restore_threads"``).
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--enable-logging=stderr",
    "--v=0",
]


@pytest.fixture(scope="module")
def single_thread() -> Iterator[None]:
    """Run a whole module with one torch thread, restoring the count afterwards.

    The nets and tensors in these tests are tiny: one thread is as fast, and on a shared,
    loaded 2-core machine two threads contend and run far slower.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def restore_threads() -> Iterator[None]:
    """Restore torch's thread count after a test: benchmark ``main``s set their own."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def avx2_memory_kernels() -> None:
    """Skip a test comparing the training-memory model with a measured step off AVX2.

    The model encodes the scratch space of PyTorch's AVX2 CPU kernels. On an AVX-512 CPU,
    oneDNN's depthwise-convolution weight gradient can allocate 257x the weight as scratch
    (seen on AMD Zen 4, PyTorch 2.13), which the model does not describe yet.
    """
    capability = torch.backends.cpu.get_cpu_capability()
    if capability != "AVX2":
        pytest.skip(f"training-memory model is calibrated on AVX2 kernels; this CPU: {capability}")


class Chromium:
    """Headless Chromium for rendering the HTML reports: ``run(*flags)`` returns the finished
    process; ``console_errors`` picks script errors and failed loads out of its log."""

    def __init__(self, profiles: Path) -> None:
        self.profiles = profiles
        self.count = 0

    def run(self, *args: str) -> subprocess.CompletedProcess:
        self.count += 1
        user_dir = self.profiles / f"profile-{self.count}"
        return subprocess.run(
            [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={user_dir}", *args],
            capture_output=True,
            text=True,
            timeout=120,
        )

    @staticmethod
    def console_errors(stderr: str) -> list[str]:
        return [
            line
            for line in stderr.splitlines()
            if "CONSOLE" in line or "Uncaught" in line or "Failed to load resource" in line
        ]


@pytest.fixture
def chromium(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., object]:
    """A ``Chromium`` (skips the test when Chromium is not installed)."""
    if CHROMIUM is None:
        pytest.skip("chromium is not installed")
    return Chromium(tmp_path_factory.mktemp("chromium"))
