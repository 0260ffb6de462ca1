"""``mobiledl inspect``: ONNX Runtime's per-kernel profile mapped back to a model's modules,
for a float, a channel-pruned and an int8 ResNet-8, from a model and from an .onnx file."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
import torch
from torch import nn

from mobiledl import apply
from mobiledl.cli import main
from mobiledl.compress.prune import ChannelPruneConfig
from mobiledl.compress.quantize import QuantConfig
from mobiledl.core.task import TensorTask
from mobiledl.deploy import get_engine
from mobiledl.deploy.profiling import inspect_model, profile_artifact
from mobiledl.errors import UserError
from mobiledl.models import create_model, save_model
from mobiledl.profile.engine_profile import EngineProfile

pytestmark = pytest.mark.usefixtures("single_thread")

RUNS = {"warmup": 3, "repeats": 15}
ROW_KEYS = ("name", "kind", "ops", "time_ms", "share", "macs", "macs_per_s", "bytes", "kernels")


def _task() -> TensorTask:
    generator = torch.Generator().manual_seed(0)
    x = [torch.randn(32, 3, 32, 32, generator=generator) for _ in range(3)]
    y = [torch.randint(0, 10, (32,), generator=generator) for _ in range(3)]
    return TensorTask("noise", 10, x[0], y[0], x[1], y[1], x[2], y[2])


@pytest.fixture(scope="module")
def variants() -> dict[str, nn.Module]:
    """ResNet-8 (width 2, 32x32 RGB: convolutions dominate the time) as fp32, channel-pruned
    to half its MACs and int8 (PTQ)."""
    torch.manual_seed(0)
    task = _task()
    model = create_model("resnet8", 10, 3, 32, width_mult=2.0).eval()
    return {
        "fp32": model,
        "pruned": apply(model, ChannelPruneConfig(macs_ratio=0.5), task),
        "int8": apply(model, QuantConfig(), task),
    }


@pytest.fixture(scope="module")
def profiles(variants: dict[str, nn.Module]) -> dict[str, EngineProfile]:
    example = torch.randn(1, 3, 32, 32)
    return {kind: inspect_model(model, example, **RUNS) for kind, model in variants.items()}


@pytest.mark.parametrize("kind", ["fp32", "pruned", "int8"])
def test_time_maps_to_modules_and_adds_up_within_the_run(
    profiles: dict[str, EngineProfile], kind: str
) -> None:
    profile = profiles[kind]
    assert profile.coverage >= 0.9
    assert profile.runs == RUNS["repeats"]
    # Kernels run inside ORT's model_run; between them the profiler records its events.
    assert 0.4 < profile.totals()["layers_over_engine_run"] <= 1.0


@pytest.mark.parametrize("kind", ["fp32", "pruned", "int8"])
def test_every_convolution_has_a_row(
    variants: dict[str, nn.Module], profiles: dict[str, EngineProfile], kind: str
) -> None:
    convs = {name for name, m in variants[kind].named_modules() if isinstance(m, nn.Conv2d)}
    rows = {layer.name: layer for layer in profiles[kind].layers}
    assert len(convs) == 9 and convs <= set(rows)
    assert all(rows[name].macs > 0 and rows[name].bytes > 0 for name in convs)


def test_fused_and_int8_kernels_name_their_modules(profiles: dict[str, EngineProfile]) -> None:
    float_rows = {layer.name: layer for layer in profiles["fp32"].layers}
    assert float_rows["features.0.conv"].ops == ["Conv+Relu"]  # NCHWc, named after the ReLU
    assert float_rows["features.1.conv2.conv"].ops == ["Conv+Add+Relu"]  # the residual fused
    int8_rows = {layer.name: layer for layer in profiles["int8"].layers}
    assert int8_rows["features.0.conv"].ops == ["QLinearConv"]
    assert int8_rows["features.2"].ops == ["QLinearAdd"]  # the residual add of the block
    assert int8_rows["classifier"].ops == ["QGemm"]
    assert int8_rows["(unmapped: QuantizeLinear)"].kind == "unmapped"
    macs = {name: row.macs for name, row in float_rows.items()}
    assert macs["features.1.conv1.conv"] == 32 * 32 * 32 * 32 * 9


def test_an_onnx_file_maps_by_its_names(variants: dict[str, nn.Module], tmp_path: Path) -> None:
    example = torch.randn(1, 3, 32, 32)
    path = get_engine().export(variants["int8"], example, tmp_path / "q.onnx")
    profile = profile_artifact(path, batch_size=2, **RUNS)
    rows = {layer.name: layer for layer in profile.layers}
    assert profile.coverage >= 0.9 and profile.batch_size == 2
    assert {"features.0.conv", "features.1", "classifier"} <= set(rows)
    assert rows["features.0.conv"].macs == 2 * 32 * 32 * 32 * 3 * 9


def test_cli_json_and_text(
    variants: dict[str, nn.Module], tmp_path: Path, capsys, monkeypatch
) -> None:
    model_file = tmp_path / "r8.pt"
    save_model(model_file, variants["fp32"])
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    before = set(Path(tempfile.gettempdir()).glob("mobiledl-inspect-*"))
    assert main(["inspect", str(model_file), "--repeats", "5", "--warmup", "1", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["engine"] == "onnxruntime" and result["batch_size"] == 1
    assert result["latency_ms_median"] > 0 and result["bytes"] > 0
    extra = result["extra"]
    for key in ("layers_ms", "mapped_ms", "coverage", "engine_run_ms", "layers_over_latency"):
        assert isinstance(extra[key], float)
    assert set(extra["layers"][0]) == set(ROW_KEYS)
    assert main(["inspect", str(model_file), "--repeats", "5", "--top", "3"]) == 0
    text = capsys.readouterr().out
    assert "more rows" in text and "mapped to named modules" in text
    assert not list(work.iterdir())  # the trace and the artifact live in a deleted temp dir
    assert set(Path(tempfile.gettempdir()).glob("mobiledl-inspect-*")) == before


def test_errors_are_one_line(tmp_path: Path, capsys) -> None:
    assert main(["inspect", str(tmp_path / "missing.pt")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["inspect", str(tmp_path / "m.pt"), "--engine", "executorch"]) == 2
    err = capsys.readouterr().err
    assert "no per-layer profiler" in err and "onnxruntime" in err and len(err.splitlines()) == 1
    assert main(["inspect", str(tmp_path / "m.pt"), "--batch", "0"]) == 2
    assert "--batch" in capsys.readouterr().err
    with pytest.raises(UserError, match="batch size"):
        profile_artifact(tmp_path / "m.onnx", batch_size=0)
