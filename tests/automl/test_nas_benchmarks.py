"""``benchmarks/nas_latency_predictor.py --smoke`` runs end to end and writes its results."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_latency_predictor_smoke(tmp_path):
    report = _load("nas_latency_predictor").main(["--smoke", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "nas_latency_predictor.json").read_text())
    assert saved["config"]["smoke"] and saved["result"]["test_samples"] == 6
    assert set(report["result"]["mape"]) == {"predictor", "lut_sum", "macs_linear"}
    assert "mape_at_most_10" in report["checks"]
    assert "| learned predictor" in (tmp_path / "nas_latency_predictor.md").read_text()


def test_supernet_smoke(tmp_path):
    report = _load("nas_supernet").main(["--smoke", "--no-ray", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "nas_supernet.json").read_text())
    assert saved["config"]["smoke"]
    assert len(report["scratch"]) == 2 and len(report["mobilenet_v2"]) == 3
    for row in report["scratch"]:
        assert 0.0 <= row["supernet_accuracy"] <= 1.0 and 0.0 <= row["scratch_accuracy"] <= 1.0
    assert "supernet_within_1.5_abs" in report["checks"]
    assert "| architecture |" in (tmp_path / "nas_supernet.md").read_text()
