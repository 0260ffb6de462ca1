"""ExecuTorch engine (the ``executorch`` extra): ``.pte`` export with XNNPACK delegation, fp32
parity, our int8 delegated as int8 with our scales, failures as one line."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from mobiledl import apply
from mobiledl.compress.quantize import QuantConfig
from mobiledl.deploy import engine_for_artifact, get_engine
from mobiledl.errors import UserError
from mobiledl.models import create_model, list_models

pytest.importorskip(
    "executorch",
    reason="the executorch extra is not installed (pip install 'mobiledl[executorch]')",
)
from mobiledl.deploy.executorch import (  # noqa: E402 (after the skip)
    MAX_BATCH,
    delegated_calls,
    executorch_program,
    max_batch,
)
from tests.deploy.conftest import trained  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")
#: Zoo models quick to lower (a few seconds each); the others run with ``-m slow``.
FAST_MODELS = {"lenet5", "resnet8"}
IMAGE_MODELS = [
    name if name in FAST_MODELS else pytest.param(name, marks=pytest.mark.slow)
    for name in (info.name for info in list_models(inputs="image"))
]


@pytest.mark.parametrize("name", IMAGE_MODELS)
def test_every_zoo_model_matches_pytorch_in_fp32(name: str, digits, tmp_path: Path) -> None:
    model = trained(name, digits, steps=2)
    engine = get_engine("executorch")
    path = engine.export(model, digits.example_input(1), tmp_path / "m.pte")
    x = digits.x_test[:64]
    scale = max(1.0, float(np.abs(model(x).detach().numpy()).max()))
    assert engine.parity_check(model, engine.load(path, threads=1), x) / scale <= 1e-4


def _delegated_convolutions(program) -> list[str]:
    """Targets of the first operand of every convolution inside the XNNPACK subgraphs."""
    module = program.exported_program().graph_module
    sources = []
    for node in program.exported_program().graph.nodes:
        if node.op == "get_attr" and node.name.startswith("lowered_module"):
            graph = getattr(module, node.target).original_module.graph
            sources += [
                str(conv.args[0].target)
                for conv in graph.nodes
                if conv.op == "call_function" and "convolution" in str(conv.target)
            ]
    return sources


def test_our_int8_is_delegated_to_xnnpack_as_int8(digits, tmp_path: Path) -> None:
    model = trained("resnet8", digits, steps=5)
    quantized = apply(model, QuantConfig(calibration_samples=64), digits)
    program = executorch_program(quantized, digits.example_input(1))
    top_level = {
        str(node.target)
        for node in program.exported_program().graph.nodes
        if node.op == "call_function"
    }
    assert delegated_calls(program) >= 1
    assert not any("quantize" in target for target in top_level)  # every Q/DQ is delegated
    convolutions = _delegated_convolutions(program)
    assert len(convolutions) == sum(isinstance(m, nn.Conv2d) for m in model.modules())
    assert all("dequantize_per_tensor" in source for source in convolutions)
    engine = get_engine("executorch")
    int8 = engine.export(quantized, digits.example_input(1), tmp_path / "q.pte")
    fp32 = engine.export(model, digits.example_input(1), tmp_path / "f.pte")
    assert engine.artifact_bytes(int8) < 0.5 * engine.artifact_bytes(fp32)  # int8 weights
    runner = engine.load(int8, threads=1)
    assert engine.top1_agreement(quantized, runner, digits.x_test) >= 0.99


@pytest.mark.slow
def test_our_int8_agrees_with_our_simulation_on_the_test_split(digits, tmp_path: Path) -> None:
    """Issue 15's bar on a trained model (about 99% test accuracy after 200 steps)."""
    model = trained("resnet20", digits, steps=200)
    quantized = apply(model, QuantConfig(calibration_samples=128), digits)
    engine = get_engine("executorch")
    runner = engine.load(engine.export(quantized, digits.example_input(1), tmp_path / "q.pte"), 1)
    assert engine.top1_agreement(quantized, runner, digits.x_test) >= 0.99


def test_artifact_batches_specs_threads_and_permissions(digits, tmp_path: Path) -> None:
    model = trained("lenet5", digits, steps=3)
    engine = get_engine("executorch")
    old = os.umask(0o027)
    try:
        path = engine.export(model, digits.example_input(1), tmp_path / "m.pte")
    finally:
        os.umask(old)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pte"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert engine.artifact_bytes(path) == path.stat().st_size
    assert engine_for_artifact(path).name == "executorch"
    one, two = engine.load(path, threads=1), engine.load(path, threads=2)
    assert one.input_specs[0].name == "input" and one.input_shape == (None, 1, 8, 8)
    assert one.max_sizes[0][0] == MAX_BATCH
    assert one.threads == two.threads >= 1  # one process-wide pool, sized by the first load
    for batch in (1, 3, MAX_BATCH):  # any batch up to the bound, runners in turn
        x = digits.x_train[:batch]
        assert engine.parity_check(model, one, x) < 1e-4
        assert engine.parity_check(model, two, x) < 1e-4
    assert max_batch((torch.zeros(1, 3, 224, 224),), one.input_specs) == 64


def test_bad_files_and_arguments_are_one_line_errors(tmp_path: Path) -> None:
    engine = get_engine("executorch")
    model = create_model("lenet5", 10, 1, 8)
    with pytest.raises(UserError, match="must end in .pte"):
        engine.export(model, torch.randn(1, 1, 8, 8), tmp_path / "m.onnx")
    with pytest.raises(UserError, match="no such ExecuTorch program"):
        engine.load(tmp_path / "missing.pte")
    path = engine.export(model, torch.randn(1, 1, 8, 8), tmp_path / "m.pte")
    with pytest.raises(UserError, match="threads"):
        engine.load(path, threads=0)
    runner = engine.load(path)
    with pytest.raises(UserError, match=r"cannot run an input of shape \[1, 3, 8, 8\]"):
        runner.run(np.zeros((1, 3, 8, 8), np.float32))
    with pytest.raises(UserError, match=rf"sizes \[1..{MAX_BATCH}, 1, 8, 8\]"):
        runner.run(np.zeros((MAX_BATCH + 1, 1, 8, 8), np.float32))
    with pytest.raises(UserError, match="takes 1 input"):
        runner.run((np.zeros((1, 1, 8, 8), np.float32),) * 2)
    (tmp_path / "bad.pte").write_bytes(b"not a program")
    with pytest.raises(UserError, match="not a valid ExecuTorch program") as error:
        engine.load(tmp_path / "bad.pte")
    assert "\n" not in str(error.value)


def test_a_failed_export_names_the_module_and_leaves_no_file(tmp_path: Path) -> None:
    class DataDependent(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x if x.sum() > 0 else -x

    model = nn.Sequential(nn.Linear(4, 4), DataDependent())
    with pytest.raises(UserError, match=r"cannot export module '1' \(DataDependent\)") as error:
        get_engine("executorch").export(model, torch.randn(1, 4), tmp_path / "m.pte")
    assert "\n" not in str(error.value)
    assert list(tmp_path.iterdir()) == []
