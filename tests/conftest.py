"""Fixtures shared across the test suite.

None of these is autouse: a module opts in with
``pytestmark = pytest.mark.usefixtures("single_thread")`` (or ``"restore_threads"``), and
``load_benchmark`` is requested by name.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


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
def load_benchmark() -> Callable[[str], ModuleType]:
    """Return a loader importing ``benchmarks/<stem>.py`` as module ``<stem>_benchmark``.

    The module is registered in ``sys.modules`` before it runs, so that dataclasses (which
    look their module up there) work in the script, and ``benchmarks/`` is on ``sys.path``
    (as it is for ``python benchmarks/<stem>.py``) so the scripts' shared ``bench_common``
    imports.
    """
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))

    def load(stem: str) -> ModuleType:
        spec = importlib.util.spec_from_file_location(
            f"{stem}_benchmark", BENCHMARKS / f"{stem}.py"
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        return module

    return load


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
