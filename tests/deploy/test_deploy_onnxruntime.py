"""ONNX Runtime engine: export, load, run, parity, failures that name the culprit."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from mobiledl.deploy import (
    Engine,
    LatencyStats,
    OnnxRuntimeEngine,
    Runner,
    get_engine,
    list_engines,
    parity_check,
)
from mobiledl.errors import UserError


def _conv_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 5),
    )


def _mlp() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Flatten(), nn.Linear(48, 16), nn.GELU(), nn.Linear(16, 3))


class SpectralPool(nn.Module):
    """Pools with a 2-D real FFT; ``aten::fft_rfft2`` has no ONNX symbolic at opset 17."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.fft.rfft2(x).abs().mean(dim=(-2, -1))


class Head(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fft = SpectralPool()
        self.fc = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.fft(x))


class SpectralNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 3, 3, padding=1), nn.ReLU())
        self.head = Head()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


@pytest.fixture(scope="module")
def engine() -> Engine:
    return get_engine("onnxruntime")


@pytest.mark.parametrize("make", [_conv_net, _mlp])
def test_export_load_run_parity(engine, tmp_path, make):
    model = make()
    x = torch.randn(2, 3, 4, 4)
    path = engine.export(model, x, tmp_path / "net.onnx")
    assert path == tmp_path / "net.onnx" and path.stat().st_size > 0
    runner = engine.load(path, threads=1)
    assert isinstance(runner, Runner)
    out = runner.run(x.numpy())
    assert isinstance(out, np.ndarray) and out.shape == (2, model[-1].out_features)
    assert parity_check(model, runner, x) < 1e-4
    assert engine.parity_check(model, path, x) < 1e-4


def test_dynamic_batch(engine, tmp_path):
    model = _conv_net()
    path = engine.export(model, torch.randn(1, 3, 8, 8), tmp_path / "net.onnx")
    runner = engine.load(path)
    assert runner.input_shape == (None, 3, 8, 8)
    x = torch.randn(4, 3, 8, 8)
    assert engine.run(runner, x).shape == (4, 5)
    assert parity_check(model, runner, x) < 1e-4


def test_numpy_float64_input_is_treated_as_float32(engine, tmp_path):
    model = _mlp()
    x = np.random.default_rng(0).standard_normal((1, 3, 4, 4))
    runner = engine.load(engine.export(model, x, tmp_path / "m.onnx"))
    assert parity_check(model, runner, x) < 1e-4


def test_export_restores_training_mode(engine, tmp_path):
    model = _conv_net().train()
    engine.export(model, torch.randn(1, 3, 8, 8), tmp_path / "net.onnx")
    assert model.training


def test_runner_accepts_tensor_and_float64(engine, tmp_path):
    model = _mlp()
    runner = engine.load(engine.export(model, torch.randn(1, 3, 4, 4), tmp_path / "m.onnx"))
    x = np.random.default_rng(0).standard_normal((3, 3, 4, 4))  # float64
    assert np.allclose(runner(x), runner.run(torch.from_numpy(x).float()), atol=1e-6)


def test_export_failure_names_the_module(engine, tmp_path, capfd):
    with pytest.raises(UserError) as info:
        engine.export(SpectralNet(), torch.randn(1, 3, 8, 8), tmp_path / "net.onnx")
    message = str(info.value)
    assert "'head.fft'" in message and "SpectralPool" in message
    assert "aten::fft_rfft2" in message and "17" in message
    assert "\n" not in message
    assert "Torch IR graph" not in capfd.readouterr().out  # stdout stays clean


def test_export_failure_in_root_forward_names_the_model(engine, tmp_path):
    class Cumulative(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.cummax(x, dim=-1).values

    with pytest.raises(UserError, match=r"model \(Cumulative\).*aten::cummax"):
        engine.export(Cumulative(), torch.randn(1, 3, 4, 4), tmp_path / "net.onnx")


def test_forward_failure_is_a_user_error(engine, tmp_path):
    with pytest.raises(UserError, match=r"fails on an input of shape \[1, 3, 4, 4\]"):
        engine.export(nn.Linear(5, 2), torch.randn(1, 3, 4, 4), tmp_path / "net.onnx")


def test_failed_export_leaves_no_file(engine, tmp_path):
    target = tmp_path / "net.onnx"
    with pytest.raises(UserError):
        engine.export(SpectralNet(), torch.randn(1, 3, 8, 8), target)
    assert list(tmp_path.iterdir()) == []


def test_failed_export_keeps_the_previous_file(engine, tmp_path):
    target = engine.export(_mlp(), torch.randn(1, 3, 4, 4), tmp_path / "net.onnx")
    before = target.read_bytes()
    with pytest.raises(UserError):
        engine.export(SpectralNet(), torch.randn(1, 3, 8, 8), target)
    assert target.read_bytes() == before
    assert list(tmp_path.iterdir()) == [target]


def test_corrupt_file_is_a_user_error_naming_it(engine, tmp_path):
    bad = tmp_path / "corrupt.onnx"
    bad.write_bytes(b"this is not a protobuf \x00\x01\x02")
    with pytest.raises(UserError, match="corrupt.onnx"):
        engine.load(bad)


def test_truncated_file_is_a_user_error(engine, tmp_path):
    path = engine.export(_conv_net(), torch.randn(1, 3, 8, 8), tmp_path / "net.onnx")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(UserError, match="net.onnx"):
        engine.run(path, np.zeros((1, 3, 8, 8), np.float32))


def test_missing_file_is_a_user_error_naming_it(engine, tmp_path):
    with pytest.raises(UserError, match="missing.onnx"):
        engine.load(tmp_path / "missing.onnx")


def test_wrong_input_shape_is_a_user_error(engine, tmp_path):
    runner = engine.load(engine.export(_conv_net(), torch.randn(1, 3, 8, 8), tmp_path / "n.onnx"))
    with pytest.raises(UserError, match=r"\[1, 2, 8, 8\]"):
        runner.run(np.zeros((1, 2, 8, 8), np.float32))


def test_benchmark_returns_sane_stats(engine, tmp_path):
    runner = engine.load(
        engine.export(_conv_net(), torch.randn(1, 3, 8, 8), tmp_path / "n.onnx"), threads=1
    )
    stats = engine.benchmark(runner, np.zeros((3, 3, 8, 8), np.float32), warmup=2, repeats=7)
    assert isinstance(stats, LatencyStats)
    assert 0 < stats.min_ms <= stats.median_ms <= stats.p90_ms
    assert (stats.repeats, stats.batch_size, stats.threads) == (7, 3, 1)
    assert stats.engine == "onnxruntime"
    measurement = stats.to_measurement()
    assert measurement.latency_ms_median == stats.median_ms
    assert measurement.latency_ms_p90 == stats.p90_ms


def test_bad_thread_count_is_a_user_error(engine, tmp_path):
    path = engine.export(_mlp(), torch.randn(1, 3, 4, 4), tmp_path / "m.onnx")
    with pytest.raises(UserError, match="threads"):
        engine.load(path, threads=0)


def test_registry():
    assert isinstance(get_engine(), OnnxRuntimeEngine)
    assert get_engine().suffix == get_engine().file_suffix == ".onnx"
    assert "onnxruntime" in list_engines()
    with pytest.raises(UserError, match="unknown engine 'tflite'.*onnxruntime"):
        get_engine("tflite")


class _Doubled(nn.Module):
    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return 2 * weight


def test_export_leaves_a_parametrized_model_working(engine, tmp_path):
    model = _conv_net().eval()
    torch.nn.utils.parametrize.register_parametrization(model[0], "weight", _Doubled())
    x = torch.randn(2, 3, 8, 8)
    before = model(x)
    runner = engine.load(engine.export(model, x, tmp_path / "n.onnx"))
    assert torch.equal(model(x), before)  # the export's lowered copy took its own class
    assert parity_check(model, runner, x) < 1e-4
