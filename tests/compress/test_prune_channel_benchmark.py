"""``benchmarks/prune_channel.py --smoke`` runs end to end and writes its JSON and markdown."""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

pytestmark = pytest.mark.usefixtures("restore_threads")


@pytest.fixture
def benchmark(load_benchmark: Callable[[str], ModuleType]) -> ModuleType:
    pytest.importorskip("torch_pruning")
    return load_benchmark("prune_channel")


def test_smoke_run_writes_results(benchmark, tmp_path: Path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = benchmark.main(["--smoke", "--models", "resnet20", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "prune_channel.json").read_text())
    assert saved["config"]["smoke"] and saved["results"][0]["model"] == "resnet20"
    variants = {row["variant"]: row for row in report["results"][0]["variants"]}
    assert set(variants) == {
        "unpruned",
        "mobiledl-l1",
        "mobiledl-reconstruction",
        "mobiledl-reconstruction-latency",
        "torch-pruning",
    }
    for name, row in variants.items():
        assert set(row["latency"]) == {"t1_b1", "t1_b2"}
        if name != "unpruned":
            assert abs(row["macs_ratio"] - 0.5) < 0.05
    assert set(report["results"][0]["checks"]["mobiledl-l1"]) == {
        "speedup_at_least_1.6",
        "within_1_point",
        "accuracy_no_worse_than_torch_pruning",
    }
    markdown = (tmp_path / "prune_channel.md").read_text()
    assert "| mobiledl-l1 |" in markdown and "Why this task" in markdown
