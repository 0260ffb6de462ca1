"""Tiny NAS fixtures: a two-stage space on 8x8 digits (two resolutions) and a small task."""

from __future__ import annotations

import pytest
import torch

from mobiledl.automl.nas.elastic import OFASupernet
from mobiledl.automl.nas.space import SearchSpace, tiny_space
from mobiledl.data import Task, build_task


@pytest.fixture(autouse=True)
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def space() -> SearchSpace:
    return tiny_space(((6, 6), (8, 8)))


@pytest.fixture(scope="session")
def small_task() -> Task:
    task = build_task("digits", seed=0)
    task.x_train, task.y_train = task.x_train[:384], task.y_train[:384]
    task.x_val, task.y_val = task.x_val[:128], task.y_val[:128]
    task.x_test, task.y_test = task.x_test[:128], task.y_test[:128]
    return task


def randomized(supernet: OFASupernet) -> OFASupernet:
    """Non-trivial BN statistics and kernel transforms, so equalities are meaningful."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in supernet.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2, generator=generator)
                module.running_var.uniform_(0.5, 1.5, generator=generator)
                module.weight.uniform_(0.5, 1.5, generator=generator)
                module.bias.uniform_(-0.2, 0.2, generator=generator)
        for name, param in supernet.named_parameters():
            if "transforms" in name:
                param.add_(0.1 * torch.randn(param.shape, generator=generator))
    return supernet.eval()


@pytest.fixture(scope="session")
def randomize():
    """:func:`randomized`, for module-scoped fixtures in other files."""
    return randomized


@pytest.fixture
def supernet(space: SearchSpace) -> OFASupernet:
    torch.manual_seed(0)
    return randomized(OFASupernet(space, 10, 1, (8, 8)))
