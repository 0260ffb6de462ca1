"""One result schema for every benchmark, written atomically beside its markdown report.

``{benchmark, git_commit, argv, config, machine, created, rows, summary}``:

- ``git_commit``: the checkout's ``HEAD`` (``-dirty`` appended when tracked files differ
  from it), so a number can be traced to the code that produced it;
- ``argv``: the command that reproduces the file (``python -m benchmarks NAME ...``);
- ``config``: every argument after defaults were resolved, plus the benchmark's constants;
- ``machine``: ``machine_info`` at the end of the run, with the load average at its start;
- ``rows``: the benchmark's table rows; ``summary``: targets, checks and headline numbers.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from benchmarks.harness.machine import load_average, machine_info

SCHEMA_KEYS = ("benchmark", "git_commit", "argv", "config", "machine", "created", "rows", "summary")
ROOT = Path(__file__).resolve().parents[2]
Report = dict[str, Any]


def git_commit(root: Path = ROOT) -> str:
    """``HEAD`` of the checkout at ``root``, ``-dirty`` if tracked files changed; ``unknown``
    outside a git checkout."""

    def git(*words: str) -> str:
        done = subprocess.run(["git", "-C", str(root), *words], capture_output=True, text=True)
        if done.returncode:
            raise OSError(done.stderr.strip())
        return done.stdout.strip()

    try:
        head = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except OSError:
        return "unknown"
    return f"{head}-dirty" if dirty else head


def start_run(args: argparse.Namespace) -> None:
    """Note when the run started and the load then (``write_results`` reports both)."""
    args._started, args._load_start = time.perf_counter(), load_average()


def jsonable(value: Any) -> Any:
    """``value`` with paths as strings, dataclasses as dicts and tuples as lists."""
    if isinstance(value, Path):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return jsonable(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomic(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file renamed onto it, so a reader never
    sees half a file; the file gets the permissions the umask gives a new file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_results(
    args: argparse.Namespace,
    rows: list[dict[str, Any]],
    summary: dict[str, Any],
    render: Callable[[Report], str],
    *,
    constants: dict[str, Any] | None = None,
    packages: tuple[str, ...] = (),
    machine: dict[str, Any] | None = None,
) -> Report:
    """Write ``NAME.json`` (the schema above) and ``NAME.md`` (``render(report)``) into
    ``args.out``; return the report.

    ``constants`` join the parsed arguments in ``config``; ``packages`` are versions and
    ``machine`` extra entries for ``machine``. The run's wall time goes into
    ``summary["seconds"]``.
    """
    started = getattr(args, "_started", None)
    config = {
        k: v
        for k, v in vars(args).items()
        if not k.startswith("_") and k not in ("argv", "benchmark")
    }
    report: Report = {
        "benchmark": args.benchmark,
        "git_commit": git_commit(),
        "argv": ["python", "-m", "benchmarks", args.benchmark, *args.argv],
        "config": jsonable({**config, **(constants or {})}),
        "machine": machine_info(
            packages, load_average_1min_start=getattr(args, "_load_start", None), **(machine or {})
        ),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "rows": jsonable(rows),
        "summary": jsonable(
            {**summary, "seconds": time.perf_counter() - started} if started else summary
        ),
    }
    out = Path(args.out)
    path = write_atomic(out / f"{args.benchmark}.json", json.dumps(report, indent=2) + "\n")
    write_atomic(out / f"{args.benchmark}.md", render(report))
    print(f"wrote {path} and {path.with_suffix('.md')}", file=sys.stderr)
    return report
