"""Issue 2's bar for every zoo model, on real data through mobiledl's own stack:
train a step on digits, export with the ONNX Runtime engine, match PyTorch within 1e-4."""

from pathlib import Path

import pytest
import torch

from mobiledl.data import build_task
from mobiledl.deploy import get_engine
from mobiledl.models import create_model, list_models

MODEL_NAMES = [info.name for info in list_models(inputs="image")]


@pytest.fixture(scope="module")
def digits():
    return build_task("digits", seed=0)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_trains_a_step_exports_and_matches_onnxruntime(name: str, digits, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = create_model(name, digits.num_classes, digits.in_channels, digits.image_size)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = digits.x_train[:64], digits.y_train[:64]
    loss = torch.nn.functional.cross_entropy(model(x), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)

    engine = get_engine("onnxruntime")
    runner = engine.load(engine.export(model, digits.example_input(1), tmp_path / "m.onnx"))
    test_x = digits.x_test[:64]
    assert engine.parity_check(model, runner, test_x) <= 1e-4
