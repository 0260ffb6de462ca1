"""A self-contained HTML report: tables and matplotlib figures inlined as SVG."""

from __future__ import annotations

import html
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
from matplotlib.figure import Figure  # noqa: E402

from mobiledl.fileio import write_text_atomic  # noqa: E402
from mobiledl.profile.measurement import Measurement  # noqa: E402

MEASUREMENT_COLUMNS = (
    ("name", "step"),
    ("accuracy", "test accuracy"),
    ("params", "params"),
    ("macs", "MACs"),
    ("bytes", "bytes"),
    ("peak_memory_bytes", "peak act. memory (B)"),
    ("latency_ms_median", "latency median (ms)"),
    ("latency_ms_p90", "latency p90 (ms)"),
)

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f2f2f2; }
figure { margin: 1em 0; }
.note { color: #555; font-size: 0.9em; }
"""


def format_cell(value: Any) -> str:
    """Human formatting: thousands separators for ints, 4 decimals for floats."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def measurement_rows(measurements: Sequence[Measurement]) -> tuple[list[str], list[list[str]]]:
    """Header and formatted rows of the standard measurement table."""
    header = [label for _, label in MEASUREMENT_COLUMNS]
    rows = [[format_cell(getattr(m, key)) for key, _ in MEASUREMENT_COLUMNS] for m in measurements]
    return header, rows


class HtmlReport:
    """Collects sections and writes one HTML file that needs nothing else to render."""

    def __init__(self, title: str) -> None:
        self.title = title
        self._parts: list[str] = []

    def add_heading(self, text: str) -> None:
        self._parts.append(f"<h2>{html.escape(text)}</h2>")

    def add_text(self, text: str) -> None:
        self._parts.append(f"<p class='note'>{html.escape(text)}</p>")

    def add_table(self, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(format_cell(c))}</td>" for c in row) + "</tr>"
            for row in rows
        )
        self._parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")

    def add_figure(self, figure: Figure, caption: str) -> None:
        buffer = io.StringIO()
        with matplotlib.rc_context({"svg.hashsalt": "mobiledl"}):  # same ids every time
            figure.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Date": None})
        svg = buffer.getvalue()
        svg = svg[svg.index("<svg") :]
        self._parts.append(f"<figure>{svg}<figcaption>{html.escape(caption)}</figcaption></figure>")

    def render(self) -> str:
        body = "\n".join(self._parts)
        return (
            "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            f"<title>{html.escape(self.title)}</title><style>{_STYLE}</style></head>"
            f"<body><h1>{html.escape(self.title)}</h1>\n{body}\n</body></html>\n"
        )

    def write(self, path: str | Path) -> Path:
        return write_text_atomic(path, self.render())
