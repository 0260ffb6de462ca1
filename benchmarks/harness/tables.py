"""Markdown tables and the small formatting helpers the reports share."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any


def markdown_table(
    headers: Sequence[str], rows: Iterable[Sequence[object]], align: str = ""
) -> list[str]:
    """The lines of a markdown table. ``align`` has one letter per column, ``l`` or ``r``
    (default: every column unaligned, ``---``)."""
    marks = {"l": "---", "r": "---:"}
    rule = [marks[a] for a in align] if align else ["---"] * len(headers)
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(rule) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return lines


def pct(value: float | None, digits: int = 2) -> str:
    """A fraction as a percentage without the sign, or a dash for a missing value."""
    return "—" if value is None else f"{100 * value:.{digits}f}"


def yes(flag: bool) -> str:
    """A check's verdict, loud when it failed."""
    return "yes" if flag else "NO"


def plural(count: int, noun: str) -> str:
    """``1 thread``, ``2 threads``."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def machine_line(report: dict[str, Any]) -> str:
    """The closing line of a report: where, with what and how long it ran, when, and the
    command line and commit that produced it."""
    machine = report["machine"]
    seconds = report["summary"].get("seconds")
    took = "" if seconds is None else f"{seconds:.0f} s in total; "
    threads = plural(machine["torch_threads"], "torch thread")
    kernels = machine.get("torch_cpu_capability")
    caps = " ".join(f"{k}={v}" for k, v in machine.get("isa_caps", {}).items())
    isa = "" if kernels is None else f" ({kernels} kernels{f', {caps}' if caps else ''})"
    command = " ".join(report.get("argv", []))
    provenance = f" Command: `{command}` at commit {report['git_commit']}." if command else ""
    return (
        f"Machine: {machine['cpu']} ({machine['cores']} cores), torch {machine['torch']}{isa}, "
        f"onnxruntime {machine['onnxruntime']}, {threads}; {took}{report['created']}.{provenance}"
    )
