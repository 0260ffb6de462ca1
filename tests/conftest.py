"""Fixtures shared across the test suite.

None of these is autouse: a module opts in with
``pytestmark = pytest.mark.usefixtures("single_thread")`` (or ``"restore_threads"``).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


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
