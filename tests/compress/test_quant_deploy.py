"""A tiny trained zoo model through PTQ / QAT, int8 ONNX, save/load and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mobiledl import apply
from mobiledl.cli import main
from mobiledl.compress.quantize import QATConfig, QuantConfig, quantize
from mobiledl.data import build_task
from mobiledl.deploy import get_engine
from mobiledl.deploy.qdq import integer_ops
from mobiledl.models import create_model, load_model, save_model
from mobiledl.train import TrainConfig, evaluate, train

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module, object]:
    task = build_task("digits")
    model = create_model("resnet8", task.num_classes, task.in_channels, task.image_size, 0.5)
    train(model, task, TrainConfig(epochs=4, optimizer="adamw", progress=False))
    path = tmp_path_factory.mktemp("quant") / "resnet8.pt"
    save_model(path, model)
    return path, model, task


def test_int8_onnx_runs_integer_kernels_and_agrees_with_simulation(trained, tmp_path) -> None:
    _, model, task = trained
    quantized = quantize(model, QuantConfig(), task)
    engine = get_engine()
    path = engine.export(quantized, task.example_input(1), tmp_path / "q.onnx")
    ops = integer_ops(path)
    assert ops["QLinearConv"] == 9 and ops["QLinearAdd"] == 3
    x, _ = task.split("test")
    assert engine.top1_agreement(quantized, path, x) >= 0.995
    assert abs(evaluate(quantized, task) - evaluate(model, task)) <= 0.02
    float_path = get_engine().export(model, x[:1], tmp_path / "fp32.onnx")
    assert path.stat().st_size < 0.5 * float_path.stat().st_size  # a 20k-param net


def test_quantized_model_saves_and_reloads_without_user_code(trained, tmp_path) -> None:
    _, model, task = trained
    quantized = quantize(model, QuantConfig(weight_bits=4, act_bits=6, observer="mse"), task)
    save_model(tmp_path / "q.pt", quantized)
    loaded = load_model(tmp_path / "q.pt").model
    x, _ = task.split("test")
    with torch.no_grad():
        assert torch.equal(loaded(x), quantized(x))


@pytest.mark.parametrize("method", ["lsq", "pact"])
def test_qat_trains_and_reloads(trained, tmp_path, method: str) -> None:
    _, model, task = trained
    training = TrainConfig(epochs=1, lr=0.005, warmup_epochs=0.0, progress=False)
    config = QATConfig(quant=QuantConfig(weight_bits=4), algorithm=method, train=training)
    quantized = apply(model, config, task)
    assert evaluate(quantized, task) > 0.8
    save_model(tmp_path / "qat.pt", quantized)
    x, _ = task.split("test")
    with torch.no_grad():
        assert torch.equal(load_model(tmp_path / "qat.pt").model(x), quantized(x))


def test_cli_quantize_round_trip(trained, tmp_path, capsys) -> None:
    path, _, _ = trained
    out, onnx_path = tmp_path / "q.pt", tmp_path / "q.onnx"
    args = ["quantize", str(path), "--task", "digits", "--out", str(out), "--onnx", str(onnx_path)]
    assert main([*args, "--observer", "percentile", "--json", "--no-latency"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["bytes"] == onnx_path.stat().st_size
    assert result["accuracy"] > 0.8 and result["extra"]["method"] == "ptq"
    assert main(["eval", str(out), "--task", "digits", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == pytest.approx(result["accuracy"])


def test_cli_bad_flag_exits_2_with_one_line(trained, tmp_path, capsys) -> None:
    path, _, _ = trained
    args = ["quantize", str(path), "--task", "digits", "--out", str(tmp_path / "q.pt")]
    assert main([*args, "--bits", "9"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == ["mobiledl quantize: error: weight_bits must be an integer in [2, 8]; got 9"]
    assert main([*args, "--method", "fp4"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "--method must be one of" in lines[0]
    assert not (tmp_path / "q.pt").exists()
