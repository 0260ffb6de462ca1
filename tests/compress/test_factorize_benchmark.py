"""benchmarks/factorize.py and benchmarks/distill.py --smoke run end to end and write JSON
and markdown."""

import json
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

pytestmark = pytest.mark.usefixtures("restore_threads")


def test_factorize_smoke_run_writes_results(
    load_benchmark: Callable[[str], ModuleType], tmp_path: Path
) -> None:
    args = ["--smoke", "--out", str(tmp_path), "--threads", "1", "--no-comparison"]
    report = load_benchmark("factorize").main(args)
    data = json.loads((tmp_path / "factorize.json").read_text())
    assert data["results"] == json.loads(json.dumps(report["results"]))
    rows = {(row["model"], row["variant"]): row for row in data["results"]}
    assert set(rows) == {("resnet20", "tucker2+spatial"), ("lenet300", "svd")}
    for row in rows.values():
        assert row["macs_ratio"] <= 0.5 and row["ranks"]
        assert set(row["latency"]["factorized"]) == {"t1_b1", "t1_b32"}
        assert set(row["checks"]) == {"macs_at_most_half", "within_1_point", "speedup_at_least_1.4"}
    assert "| resnet20 | tucker2+spatial | 16 |" in (tmp_path / "factorize.md").read_text()


def test_distill_smoke_run_writes_results(
    load_benchmark: Callable[[str], ModuleType], tmp_path: Path
) -> None:
    load_benchmark("distill").main(["--smoke", "--out", str(tmp_path)])
    data = json.loads((tmp_path / "distill.json").read_text())
    assert {run["variant"] for run in data["runs"]} == {"none", "logits", "logits+attention"}
    assert "| logits |" in (tmp_path / "distill.md").read_text()
