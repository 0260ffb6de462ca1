"""Resumable stages: a long benchmark keeps each finished stage under its output directory,
and a re-run with the same inputs loads it instead of computing it again."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.harness.results import jsonable, write_atomic


class StageStore:
    """Stage results under ``directory``, each saved with the key (the inputs) it was
    computed from; a stored result is used only when its key equals the one asked for."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)

    def path(self, name: str, suffix: str = ".json") -> Path:
        """Where stage ``name`` keeps its result (a stage may store its own files)."""
        return self.directory / f"{name}{suffix}"

    def json(self, name: str, key: Any, compute: Callable[[], Any]) -> Any:
        """The result of stage ``name``: loaded if stored with ``key``, else ``compute()``d
        and stored. Either way it comes back as JSON data (tuples as lists, ...)."""
        path, key = self.path(name), jsonable(key)
        if path.is_file():
            saved = json.loads(path.read_text())
            if saved.get("key") == key:
                print(f"stage {name}: done before, loaded from {path}", file=sys.stderr)
                return saved["value"]
        text = json.dumps({"key": key, "value": jsonable(compute())}, indent=1)
        write_atomic(path, text + "\n")
        return json.loads(text)["value"]
