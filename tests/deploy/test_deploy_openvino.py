"""OpenVINO engine (the ``openvino`` extra): IR export, fp32 parity, our int8 run as int8
kernels, failures as one line, and the engine comparison behind ``mobiledl bench``."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from mobiledl import apply
from mobiledl.cli import main
from mobiledl.compress.quantize import QuantConfig
from mobiledl.deploy import engine_for_artifact, get_engine
from mobiledl.deploy.compare import compare_engines, engines_named, fastest_engine
from mobiledl.errors import UserError
from mobiledl.models import create_model, list_models, save_model
from tests.deploy.conftest import trained

ov = pytest.importorskip(
    "openvino", reason="the openvino extra is not installed (pip install 'mobiledl[openvino]')"
)

pytestmark = pytest.mark.usefixtures("single_thread")
IMAGE_MODELS = [info.name for info in list_models(inputs="image")]


@pytest.mark.parametrize("name", IMAGE_MODELS)
def test_every_zoo_model_matches_pytorch_in_fp32(name: str, digits, tmp_path: Path) -> None:
    model = trained(name, digits, steps=2)
    engine = get_engine("openvino")
    path = engine.export(model, digits.example_input(1), tmp_path / "m.xml")
    x = digits.x_test[:64]
    scale = max(1.0, float(np.abs(model(x).detach().numpy()).max()))
    assert engine.parity_check(model, engine.load(path, threads=1), x) / scale <= 1e-4


@pytest.mark.slow
def test_our_int8_agrees_with_our_simulation_on_the_test_split(digits, tmp_path: Path) -> None:
    """Issue 15's bar on a trained model (about 99% test accuracy after 200 steps);
    ``benchmarks/engines.py`` measures it for more models."""
    model = trained("resnet20", digits, steps=200)
    quantized = apply(model, QuantConfig(calibration_samples=128), digits)
    engine = get_engine("openvino")
    runner = engine.load(engine.export(quantized, digits.example_input(1), tmp_path / "q.xml"), 1)
    assert engine.top1_agreement(quantized, runner, digits.x_test) >= 0.99


def _convolution_precisions(runner) -> set[str]:
    """The precisions the CPU plugin chose for its convolution kernels (after a run)."""
    return {
        op.get_rt_info()["runtimePrecision"].astype(str).lower()
        for op in runner.compiled.get_runtime_model().get_ordered_ops()
        if op.get_rt_info()["layerType"].astype(str) == "Convolution"
    }


def test_int8_convolutions_run_as_int8_kernels(digits, tmp_path: Path) -> None:
    model = trained("resnet8", digits, steps=5)
    quantized = apply(model, QuantConfig(calibration_samples=64), digits)
    engine = get_engine("openvino")
    int8 = engine.load(engine.export(quantized, digits.example_input(1), tmp_path / "q.xml"), 1)
    fp32 = engine.load(engine.export(model, digits.example_input(1), tmp_path / "f.xml"), 1)
    int8.run(digits.x_test[:2].numpy())
    fp32.run(digits.x_test[:2].numpy())
    assert _convolution_precisions(int8) <= {"u8", "i8"}
    assert _convolution_precisions(fp32) == {"f32"}


def test_four_bit_weights_export_unpacked_and_match_onnxruntime(digits, tmp_path: Path) -> None:
    model = trained("resnet8", digits, steps=5)
    quantized = apply(model, QuantConfig(weight_bits=4, calibration_samples=64), digits)
    x = digits.x_test[:128]
    ours = get_engine("openvino")
    ort = get_engine()
    ov_out = ours.run(ours.export(quantized, x[:1], tmp_path / "q.xml"), x)
    ort_out = ort.run(ort.export(quantized, x[:1], tmp_path / "q.onnx"), x)
    # OpenVINO 2026.4 misreads the packed codes' unpacking (29% of the largest logit off);
    # the unpacked weights it gets instead agree with ONNX Runtime to about 2%.
    assert np.abs(ov_out - ort_out).max() < 0.1 * np.abs(ort_out).max()


def test_artifact_is_graph_and_weights_with_umask_permissions(tmp_path: Path) -> None:
    model = create_model("lenet5", 10, 1, 8)
    for layer in model.modules():  # non-zero biases (a converter may drop an Add of zeros)
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            nn.init.normal_(layer.bias)
    engine = get_engine("openvino")
    old = os.umask(0o027)
    try:
        path = engine.export(model, torch.randn(1, 1, 8, 8), tmp_path / "m.xml")
    finally:
        os.umask(old)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.bin", "m.xml"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert engine.artifact_bytes(path) == path.stat().st_size + (tmp_path / "m.bin").stat().st_size
    onnx_path = get_engine().export(model, torch.randn(1, 1, 8, 8), tmp_path / "m.onnx")
    assert engine.artifact_params(path) == get_engine().artifact_params(onnx_path)
    assert engine_for_artifact(path).name == "openvino"


def test_bad_files_and_arguments_are_one_line_errors(tmp_path: Path) -> None:
    engine = get_engine("openvino")
    model = create_model("lenet5", 10, 1, 8)
    with pytest.raises(UserError, match="must end in .xml"):
        engine.export(model, torch.randn(1, 1, 8, 8), tmp_path / "m.onnx")
    with pytest.raises(UserError, match="no such OpenVINO IR file"):
        engine.load(tmp_path / "missing.xml")
    path = engine.export(model, torch.randn(1, 1, 8, 8), tmp_path / "m.xml")
    runner = engine.load(path)
    with pytest.raises(UserError, match="cannot run an input of shape"):
        runner.run(np.zeros((1, 3, 8, 8), np.float32))
    (tmp_path / "m.bin").unlink()
    with pytest.raises(UserError, match="weights file m.bin is missing"):
        engine.load(path)
    (tmp_path / "bad.xml").write_text("<net>")
    (tmp_path / "bad.bin").write_bytes(b"")
    with pytest.raises(UserError, match="not a valid OpenVINO IR"):
        engine.load(tmp_path / "bad.xml")


def test_a_failed_export_leaves_no_file(tmp_path: Path) -> None:
    class Unexportable(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.fft.fft(x).real

    with pytest.raises(UserError):
        get_engine("openvino").export(Unexportable(), torch.randn(1, 4), tmp_path / "m.xml")
    assert list(tmp_path.iterdir()) == []


def test_compare_engines_checks_and_times_every_engine(digits, tmp_path: Path) -> None:
    model = trained("resnet8", digits, steps=5)
    engines = engines_named("all")
    assert [engine.name for engine in engines][:1] == [get_engine().name]
    assert "openvino" in [engine.name for engine in engines]
    results = compare_engines(
        model, digits.x_test[:32], engines, tmp_path, batch_sizes=(1, 4), repeats=3, warmup=1
    )
    assert [result.engine for result in results] == [engine.name for engine in engines]
    for result in results:
        assert result.max_abs_diff < 1e-4 and result.top1_agreement == 1.0
        assert set(result.latency) == {1, 4} and result.latency[4].batch_size == 4
    assert fastest_engine(results, 1) in results


def test_bench_cli_compares_engines_for_a_model_file(digits, tmp_path: Path, capsys) -> None:
    model = trained("lenet5", digits, steps=3)
    save_model(tmp_path / "m.pt", model, {"task": "digits"})
    argv = ["bench", str(tmp_path / "m.pt"), "--engine", "all", "--repeats", "3", "--json"]
    assert main(argv) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {row["engine"] for row in rows} >= {"onnxruntime", "openvino"}
    assert all(row["extra"]["max_abs_diff"] < 1e-4 for row in rows)
    assert main(["bench", str(tmp_path / "m.pt"), "--engine", "openvino", "--repeats", "2"]) == 0
    assert "openvino" in capsys.readouterr().out
    assert main(["export", str(tmp_path / "m.pt"), "--engine", "openvino",
                 "--out", str(tmp_path / "m.xml")]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(["bench", str(tmp_path / "m.xml"), "--engine", "onnxruntime"]) == 2
    assert "is a openvino artifact" in capsys.readouterr().err


def test_export_auto_picks_the_fastest_installed_engine_and_says_so(digits, tmp_path, capsys):
    save_model(tmp_path / "m.pt", trained("lenet5", digits, steps=3), {"task": "digits"})
    argv = ["export", str(tmp_path / "m.pt"), "--engine", "auto", "--out", str(tmp_path / "m.onnx")]
    assert main([*argv, "--json"]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    choice = {row["engine"]: row["latency_ms_median"] for row in result["extra"]["engine_choice"]}
    assert set(choice) >= {"onnxruntime", "openvino"}
    assert result["engine"] == min(choice, key=choice.get)
    assert f"--engine auto: {result['engine']} is the fastest" in captured.err
    artifact = Path(result["extra"]["artifact"])
    assert artifact.suffix == get_engine(result["engine"]).suffix and artifact.is_file()
