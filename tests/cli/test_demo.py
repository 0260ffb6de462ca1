"""``mobiledl demo`` end to end with a one-epoch budget (the real demo trains longer)."""

import json
from pathlib import Path

import pytest

from mobiledl.cli import main
from mobiledl.deploy.qdq import integer_ops


def test_demo_writes_model_onnx_json_and_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], chromium
) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--epochs", "1", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert isinstance(rows, list) and rows
    fp32, pruned, int8 = rows
    assert fp32["latency_ms_median"] > 0 and fp32["macs"] > 0 and 0 <= fp32["accuracy"] <= 1
    assert fp32["extra"]["max_abs_diff"] < 1e-4 and pruned["extra"]["max_abs_diff"] < 1e-4
    # channel pruning removed half the MACs physically; int8 shrank the file about 4x
    assert pruned["macs"] <= 0.55 * fp32["macs"] and pruned["params"] < fp32["params"]
    assert int8["bytes"] < 0.4 * pruned["bytes"]
    assert int8["peak_memory_bytes"] == pruned["peak_memory_bytes"] // 4  # 8-bit activations
    assert int8["extra"]["top1_agreement"] >= 0.95
    assert integer_ops(out / "pruned_int8.onnx")["QLinearConv"] > 0
    for name in ("model.pt", "model.onnx", "pruned.pt", "pruned.onnx", "pruned_int8.onnx"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "demo.json").read_text())
    assert summary["measurements"][0]["name"] == fp32["name"]
    html = (out / "report.html").read_text()
    assert "<table>" in html and "Pareto front" in html and "engine time per layer" in html
    assert not list(out.glob(".*.tmp")), "no temporary files left behind"
    data = json.loads((out / "report.json").read_text())
    assert list(data["layer_times"]) == [fp32["name"], pruned["name"], int8["name"]]
    assert all(sum(times.values()) > 0 for times in data["layer_times"].values())

    # `mobiledl report` renders the same page from report.json alone
    (out / "report.html").unlink()
    assert main(["report", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["steps"] == 3
    assert (out / "report.html").read_text() == html

    page = chromium.run("--dump-dom", (out / "report.html").as_uri())
    assert page.returncode == 0 and not chromium.console_errors(page.stderr)
    assert page.stdout.count("<svg") == 6  # latency, size, training, blocks, layers, engine


def test_report_command_errors_are_one_line(tmp_path: Path, capsys) -> None:
    assert main(["report", str(tmp_path / "none")]) == 2
    assert "no such run folder" in capsys.readouterr().err
    assert main(["report", str(tmp_path)]) == 2
    assert "has no report.json" in capsys.readouterr().err
