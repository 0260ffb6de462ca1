"""``mobiledl mcu plan``: the plan, the budgets, one JSON object, one-line errors."""

from __future__ import annotations

import json

import pytest

from mobiledl import apply
from mobiledl.cli.main import main
from mobiledl.compress.quantize import QuantConfig
from mobiledl.data.builtin import digits
from mobiledl.models import save_model
from mobiledl.models.registry import create_model_for_task


def _json(capsys: pytest.CaptureFixture[str], argv: list[str]) -> dict:
    assert main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_plan_json_of_an_int8_onnx(int8_onnx, capsys) -> None:
    result = _json(capsys, ["mcu", "plan", str(int8_onnx("mcunet"))])
    assert result["fits"] and result["fits_sram"] and result["fits_flash"]
    assert result["peak_memory_bytes"] == result["arena_bytes"] >= result["lower_bound_bytes"]
    assert result["layer_by_layer_bytes"] >= result["arena_bytes"]
    assert result["in_place_depthwise_ops"] > 0 and result["code_bytes"] is None
    assert len(result["layers"]) == result["ops"] and result["advice"] == []


def test_plan_that_does_not_fit_says_what_is_live(int8_onnx, capsys) -> None:
    path = str(int8_onnx("mobilenet_v2"))
    result = _json(capsys, ["mcu", "plan", path, "--sram-kb", "16", "--flash-kb", "64"])
    assert not result["fits_sram"] and not result["fits_flash"]
    peak = result["peak"]
    assert sum(t["bytes"] for t in peak["live"]) == max(s["live_bytes"] for s in result["layers"])
    assert any(peak["layer"] in line for line in result["advice"])
    assert any("width multiplier" in line for line in result["advice"])
    assert main(["mcu", "plan", path, "--sram-kb", "16", "--no-in-place"]) == 0
    out = capsys.readouterr().out
    assert "DOES NOT FIT" in out and "to fit: in-place depthwise is off" in out


def test_quantized_pt_is_planned_and_float_pt_refused(tmp_path, capsys) -> None:
    task = digits(image_size=16)
    model = create_model_for_task("lenet5", task, width_mult=0.25)
    save_model(tmp_path / "float.pt", model)
    assert main(["mcu", "plan", str(tmp_path / "float.pt")]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "mobiledl quantize" in error
    quantized = apply(model, QuantConfig(calibration_samples=32), task)
    save_model(tmp_path / "q.pt", quantized)
    result = _json(capsys, ["mcu", "plan", str(tmp_path / "q.pt")])
    assert result["ops"] == 8 and result["fits"]


def test_patch_auto_judges_the_fit_on_patches(int8_onnx, capsys) -> None:
    path = str(int8_onnx("mobilenet_v2"))
    plain = _json(capsys, ["mcu", "plan", path, "--sram-kb", "40"])
    assert not plain["fits_sram"] and plain["patch"] is None
    assert any("--patch auto" in line for line in plain["advice"])
    patched = _json(capsys, ["mcu", "plan", path, "--sram-kb", "40", "--patch", "auto"])
    patch = patched["patch"]
    assert patched["peak_memory_bytes"] == patch["peak_bytes"] < plain["arena_bytes"]
    assert patch["mac_overhead"] <= 0.3 and patched["fits_sram"] == (
        patch["peak_bytes"] <= 40 * 1024
    )
    assert main(["mcu", "plan", path, "--patch", "auto"]) == 0
    assert "patch-based: " in capsys.readouterr().out
