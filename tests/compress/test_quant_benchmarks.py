"""benchmarks/quantize_{ptq,speed}.py --smoke run end to end and write JSON + markdown."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

pytestmark = pytest.mark.usefixtures("restore_threads")


def test_ptq_smoke_run_writes_results(
    load_benchmark: Callable[[str], ModuleType], tmp_path: Path
) -> None:
    assert load_benchmark("quantize_ptq").main(["--smoke", "--out", str(tmp_path)]) == 0
    (row,) = json.loads((tmp_path / "quantize_ptq.json").read_text())["rows"]
    assert row["model"] == "resnet8" and row["agreement"] >= 0.99
    assert abs(row["ours_w8a8"] - row["fp32"]) <= 0.02
    assert row["integer_ops"]["QLinearConv"] == 9
    assert "| digits | resnet8 |" in (tmp_path / "quantize_ptq.md").read_text()


def test_speed_smoke_run_writes_results(
    load_benchmark: Callable[[str], ModuleType], tmp_path: Path
) -> None:
    assert load_benchmark("quantize_speed").main(["--smoke", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "quantize_speed.json").read_text())["rows"]
    assert [r["batch_size"] for r in rows] == [1, 2]
    assert all(r["size_ratio"] > 3.0 and r["integer_ops"] > 0 for r in rows)
    assert "| resnet20 | 3x16x16 | 1 |" in (tmp_path / "quantize_speed.md").read_text()
