"""benchmarks/prune_finegrained.py --smoke runs end to end and writes JSON + markdown."""

import importlib.util
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "prune_finegrained.py"


@pytest.fixture(autouse=True)
def restore_threads() -> Iterator[None]:
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_smoke_run_writes_results(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("prune_finegrained_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    assert module.main(["--smoke", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "prune_finegrained.json").read_text())
    (row,) = data["rows"]
    assert row["model"] == "lenet300" and row["sparsity"] == pytest.approx(0.92, abs=0.005)
    assert row["sparse_format_bytes"] < row["dense_bytes"]
    assert "| lenet300 | digits |" in (tmp_path / "prune_finegrained.md").read_text()
