"""Every published results file carries the one schema and says how to reproduce it."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest

from benchmarks import available
from benchmarks.harness import SCHEMA_KEYS

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
FILES = sorted(RESULTS.glob("*.json"))


def test_every_benchmark_has_published_results() -> None:
    assert {path.stem for path in FILES} == set(available())


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_results_file_has_the_schema(path: Path) -> None:
    data = json.loads(path.read_text())
    assert set(SCHEMA_KEYS) <= set(data)
    assert data["benchmark"] == path.stem
    assert isinstance(data["git_commit"], str) and data["git_commit"]
    argv = data["argv"]
    assert isinstance(argv, list) and argv[:4] == ["python", "-m", "benchmarks", path.stem]
    assert isinstance(data["rows"], list) and data["rows"]
    assert isinstance(data["summary"], dict) and isinstance(data["machine"], dict)
    assert (path.with_suffix(".md")).is_file()


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_published_tables_render_from_the_json(path: Path) -> None:
    """The benchmark's own report, rendered from its JSON, has the published table rows."""
    rendered = importlib.import_module(f"benchmarks.{path.stem}").markdown(
        json.loads(path.read_text())
    )

    def rows(text: str) -> list[str]:
        return [" ".join(line.split()) for line in text.splitlines() if line.startswith("|")]

    assert rows(rendered) == rows(path.with_suffix(".md").read_text())
