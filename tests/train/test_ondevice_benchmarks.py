"""benchmarks/ondevice_transfer.py and benchmarks/training_memory.py --smoke run end to end."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

pytestmark = pytest.mark.usefixtures("restore_threads")


def test_transfer_smoke_run_writes_results(
    load_benchmark: Callable[[str], ModuleType], tmp_path: Path
) -> None:
    module = load_benchmark("ondevice_transfer")
    assert module.main(["--smoke", "--threads", "1", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "ondevice_transfer.json").read_text())
    methods = [row["method"] for row in data["rows"]]
    assert methods == ["full", "last", "bias", "tinytl", "sparse", "tinytl"]
    for row in data["rows"]:
        assert 0.0 <= row["accuracy"] <= 1.0 and row["measured_peak_bytes"] > 0
    assert data["summary"]["sparse_all_within_budget"]
    budgeted = data["rows"][-1]
    assert budgeted["measured_peak_bytes"] <= budgeted["memory_budget_bytes"]
    pair = data["summary"]["sparse_vs_tinytl_at_budget"][0]
    assert pair["tinytl"] == budgeted["accuracy"]
    assert "| tinytl |" in (tmp_path / "ondevice_transfer.md").read_text()


@pytest.mark.usefixtures("avx2_memory_kernels")
def test_training_memory_smoke_run_writes_results(
    load_benchmark: Callable[[str], ModuleType], tmp_path: Path
) -> None:
    module = load_benchmark("training_memory")
    assert module.main(["--smoke", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "training_memory.json").read_text())
    assert len(data["rows"]) == 2 * len(module.METHODS)
    assert all(row["within_tolerance"] for row in data["rows"])
