"""Reports say what each input type and method can measure: ``eval --json`` fills every field
it can (and names the ones it cannot), channel pruning reports ratios and file sizes, mask
pruning its sparse size."""

import json
from pathlib import Path

import pytest
import torch

from mobiledl.cli import main
from mobiledl.data import build_task
from mobiledl.models import create_model, save_model

pytestmark = pytest.mark.usefixtures("single_thread")

MEASURED = ("accuracy", "params", "macs", "bytes", "peak_memory_bytes", "latency_ms_median")


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    task = build_task("digits")
    torch.manual_seed(0)
    model = create_model("lenet5", task.num_classes, task.in_channels, task.image_size)
    return save_model(tmp_path_factory.mktemp("reports") / "lenet5.pt", model, {"task": "digits"})


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> dict:
    assert main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_eval_json_of_a_model_file_fills_every_measured_field(
    model_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    result = run(capsys, "eval", str(model_file), "--task", "digits")
    assert all(result[key] is not None for key in MEASURED), result
    assert result["bytes"] > 4 * result["params"] * 0.9
    assert set(result["extra"].get("null_fields", {})) <= {"storage_bytes"}


def test_eval_json_of_an_onnx_file_says_why_fields_are_null(
    model_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    onnx = tmp_path / "lenet5.onnx"
    assert main(["export", str(model_file), "--out", str(onnx)]) == 0
    capsys.readouterr()
    result = run(capsys, "eval", str(onnx), "--task", "digits")
    assert result["bytes"] == onnx.stat().st_size
    assert result["params"] > 0 and result["latency_ms_median"] > 0
    nulls = result["extra"]["null_fields"]
    assert {key for key, value in result.items() if value is None} & set(MEASURED) == set(
        nulls
    ) & set(MEASURED)


def test_channel_prune_json_reports_ratios_and_file_sizes(
    model_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["prune", str(model_file), "--task", "digits", "--granularity", "channel"]
    out = str(tmp_path / "pruned.pt")
    result = run(capsys, *argv, "--macs-ratio", "0.5", "--out", out, "--no-latency")
    extra = result["extra"]
    assert "sparsity" not in extra and "dense_bytes" not in extra
    assert extra["model_bytes"] == Path(out).stat().st_size < extra["fp32_model_bytes"]
    assert extra["compression"] == pytest.approx(extra["fp32_model_bytes"] / extra["model_bytes"])
    assert extra["macs_ratio"] == pytest.approx(result["macs"] / extra["dense_macs"])
    assert extra["params_ratio"] == pytest.approx(result["params"] / extra["dense_params"])
    assert result["bytes"] < extra["before"]["bytes"]
    assert extra["ratios"]["bytes"] == pytest.approx(result["bytes"] / extra["before"]["bytes"])


def test_mask_prune_json_gives_the_sparse_size_as_storage_bytes(
    model_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["prune", str(model_file), "--task", "digits", "--sparsity", "0.8"]
    result = run(capsys, *argv, "--out", str(tmp_path / "masked.pt"), "--no-latency")
    extra = result["extra"]
    assert result["storage_bytes"] == extra["sparse_format_bytes"] < extra["dense_bytes"]
    assert extra["nonzero_params"] < 0.3 * result["params"]
    assert "stored densely" in extra["note"]
