"""benchmarks/engine_overhead.py --smoke runs end to end and writes JSON + markdown."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "engine_overhead.py"


def _zoo_importable() -> bool:
    try:
        from mobiledl.models import list_models

        return len(list_models()) >= 2
    except Exception:
        return False


@pytest.mark.skipif(not _zoo_importable(), reason="model zoo not importable yet")
def test_smoke_run_writes_results(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    command = [sys.executable, str(SCRIPT), "--smoke", "--repeats", "3", "--out", str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    data = json.loads((tmp_path / "engine_overhead.json").read_text())
    rows = data["rows"]
    assert len(rows) == 4  # two models x batch 1 and 2
    assert {row["batch_size"] for row in rows} == {1, 2}
    for row in rows:
        assert row["eager_median_ms"] <= row["eager_p90_ms"]
        assert row["ort_median_ms"] <= row["ort_p90_ms"]
        assert row["max_abs_diff"] < 1e-4
        assert row["repeats"] == 3
    assert data["machine"]["threads"] == 2
    table = (tmp_path / "engine_overhead.md").read_text()
    assert table.count("\n| ") >= 5  # header + 4 rows
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "engine_overhead.json",
        "engine_overhead.md",
    ]


@pytest.mark.skipif(not _zoo_importable(), reason="model zoo not importable yet")
def test_unknown_model_exits_with_user_error(
    load_benchmark: Callable[[str], ModuleType], tmp_path, capsys
):
    script = load_benchmark("engine_overhead")
    assert script.main(["--models", "nope", "--out", str(tmp_path)]) == 2
    assert "unknown model(s) nope" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
