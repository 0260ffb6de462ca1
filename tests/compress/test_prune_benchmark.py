"""benchmarks/prune_finegrained.py --smoke runs end to end and writes JSON + markdown."""

import json
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

pytestmark = pytest.mark.usefixtures("restore_threads")


def test_smoke_run_writes_results(
    load_benchmark: Callable[[str], ModuleType], tmp_path: Path
) -> None:
    module = load_benchmark("prune_finegrained")
    assert module.main(["--smoke", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "prune_finegrained.json").read_text())
    (row,) = data["rows"]
    assert row["model"] == "lenet300" and row["sparsity"] == pytest.approx(0.92, abs=0.005)
    assert row["sparse_format_bytes"] < row["dense_bytes"]
    assert "| lenet300 | digits |" in (tmp_path / "prune_finegrained.md").read_text()
