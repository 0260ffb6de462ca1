"""``AdaptConfig`` reports the training memory of one batch, whatever the dataset's size."""

from __future__ import annotations

import pytest
import torch

from mobiledl import apply, report_of
from mobiledl.core.task import TensorTask
from mobiledl.models import create_model
from mobiledl.train import AdaptConfig, SparseUpdateConfig

pytestmark = pytest.mark.usefixtures("single_thread")


def task_of(train_samples: int) -> TensorTask:
    """Random 1x8x8 images in 4 classes; validation and test splits fixed."""
    generator = torch.Generator().manual_seed(0)

    def split(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn(n, 1, 8, 8, generator=generator)
        return x, torch.arange(n) % 4

    return TensorTask("random", 4, *split(train_samples), *split(32), *split(32))


def peaks(method: str, train_samples: int) -> tuple[int, int]:
    torch.manual_seed(0)
    model = create_model("mcunet", 4, 1, 8, width_mult=0.5)
    budget = 4 << 20 if method == "sparse" else None
    config = AdaptConfig(
        strategy=method,
        epochs=1,
        batch_size=16,
        memory_budget=budget,
        sparse=SparseUpdateConfig(probe_steps=1, candidate_layers=1, ratios=(1.0,)),
    )
    values = report_of(apply(model, config, task_of(train_samples))).values
    return values["training_peak_bytes"], values["measured_peak_memory_bytes"]


@pytest.mark.parametrize("method", ["full", "last", "bias", "tinytl", "sparse"])
def test_twice_the_training_samples_same_training_memory(method: str) -> None:
    (predicted, measured), (predicted_2x, measured_2x) = peaks(method, 64), peaks(method, 128)
    assert predicted == predicted_2x
    assert abs(measured - measured_2x) <= 0.01 * measured
