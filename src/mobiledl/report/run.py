"""The HTML report of a recipe run: step table, trade-off plots, per-layer profile, sensitivity.

One self-contained file (inline SVG, no scripts or external assets) built from plain data, so
it can be written by the pipeline runner or by anyone holding the same numbers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from mobiledl.profile import LayerProfile, Measurement
from mobiledl.report.html import HtmlReport, format_cell, measurement_rows

MAX_LABELLED_LAYERS = 60


@dataclass
class StepRow:
    """One finished step: its kind, wall time, measurement and method details."""

    kind: str
    seconds: float
    measurement: Measurement
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class Sensitivity:
    """Per-layer accuracy when that layer alone is pruned to each sparsity."""

    baseline: float
    sparsities: list[float]
    accuracy: dict[str, list[float]]
    description: str


@dataclass
class RunReport:
    """Everything the report shows."""

    title: str
    description: str
    steps: list[StepRow]
    layers_before: list[LayerProfile]
    layers_after: list[LayerProfile]
    sensitivity: Sensitivity | None = None
    notes: list[str] = field(default_factory=list)


def write_run_report(path: str | Path, report: RunReport) -> Path:
    """Render ``report`` into one HTML file at ``path`` (atomically)."""
    html = HtmlReport(report.title)
    if report.description:
        html.add_text(report.description)
    for note in report.notes:
        html.add_text(note)
    _steps_section(html, report.steps)
    _tradeoff_section(html, report.steps)
    _layers_section(html, report)
    _method_sections(html, report.steps)
    if report.sensitivity is not None:
        html.add_heading("Per-layer sensitivity")
        html.add_text(report.sensitivity.description)
        html.add_figure(sensitivity_figure(report.sensitivity), "accuracy with one layer pruned")
    return html.write(path)


def _steps_section(html: HtmlReport, steps: Sequence[StepRow]) -> None:
    header, rows = measurement_rows([step.measurement for step in steps])
    header = [header[0], "kind", *header[1:], "bytes basis", "seconds"]
    rows = [
        [row[0], step.kind, *row[1:], step.measurement.extra.get("bytes_basis", ""), step.seconds]
        for row, step in zip(rows, steps, strict=True)
    ]
    html.add_heading("Steps")
    html.add_text(
        "Measured after each step: test accuracy, parameters, MACs per sample, bytes (see the "
        "basis column), peak activation memory and ONNX Runtime latency (median and p90)."
    )
    html.add_table(header, rows)


def _tradeoff_section(html: HtmlReport, steps: Sequence[StepRow]) -> None:
    html.add_heading("Trade-offs")
    timed = [s.measurement for s in steps if s.measurement.latency_ms_median is not None]
    sized = [s.measurement for s in steps if s.measurement.bytes is not None]
    if timed:
        html.add_figure(
            tradeoff_figure(timed, "latency_ms_median", "ONNX Runtime latency, median (ms)"),
            "accuracy vs latency, one point per step",
        )
    if sized:
        html.add_figure(
            tradeoff_figure(sized, "bytes", "size (bytes)", log_x=True),
            "accuracy vs size, one point per step",
        )


def tradeoff_figure(
    measurements: Sequence[Measurement], key: str, label: str, log_x: bool = False
) -> Figure:
    """Accuracy against ``key`` for each measurement, in step order, labelled by name."""
    figure = Figure(figsize=(6.4, 3.6))
    axes = figure.subplots()
    xs = [getattr(m, key) for m in measurements]
    ys = [m.accuracy if m.accuracy is not None else float("nan") for m in measurements]
    axes.plot(xs, ys, color="#bbb", linewidth=1, zorder=1)
    axes.scatter(xs, ys, zorder=2)
    for m, x, y in zip(measurements, xs, ys, strict=True):
        axes.annotate(m.name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    if log_x:
        axes.set_xscale("log")
    axes.set_xlabel(label)
    axes.set_ylabel("test accuracy")
    axes.grid(alpha=0.3)
    return figure


def _layers_section(html: HtmlReport, report: RunReport) -> None:
    html.add_heading("Per-layer profile")
    html.add_figure(
        block_macs_figure(report.layers_before, report.layers_after),
        "MACs per block: the model before the first step and the final model",
    )
    html.add_figure(layer_macs_figure(report.layers_after), "MACs per layer of the final model")
    html.add_table(
        ["layer", "type", "output shape", "params", "MACs"],
        [
            [lp.name, lp.type, str(list(lp.output_shape or ())), lp.params, lp.macs]
            for lp in report.layers_after
            if lp.params or lp.macs
        ],
    )


def block_of(name: str) -> str:
    """The block a layer belongs to: its first two name components (``features.3``)."""
    return ".".join(name.split(".")[:2]) or "(model)"


def block_macs(layers: Sequence[LayerProfile]) -> dict[str, int]:
    """MACs summed per block, in order of first appearance."""
    totals: dict[str, int] = {}
    for layer in layers:
        if layer.macs:
            totals[block_of(layer.name)] = totals.get(block_of(layer.name), 0) + layer.macs
    return totals


def block_macs_figure(before: Sequence[LayerProfile], after: Sequence[LayerProfile]) -> Figure:
    """Grouped bars: MACs per block before and after."""
    first, last = block_macs(before), block_macs(after)
    blocks = list(dict.fromkeys([*first, *last]))
    figure = Figure(figsize=(8, 3.2))
    axes = figure.subplots()
    positions = range(len(blocks))
    axes.bar([p - 0.2 for p in positions], [first.get(b, 0) for b in blocks], 0.4, label="before")
    axes.bar([p + 0.2 for p in positions], [last.get(b, 0) for b in blocks], 0.4, label="final")
    axes.set_xticks(list(positions), blocks, rotation=90, fontsize=7)
    axes.set_ylabel("MACs")
    axes.legend(fontsize=8)
    return figure


def layer_macs_figure(layers: Sequence[LayerProfile]) -> Figure:
    """Bars of MACs per counted layer (names shown for up to ``MAX_LABELLED_LAYERS``)."""
    counted = [layer for layer in layers if layer.macs]
    figure = Figure(figsize=(8, 3.2))
    axes = figure.subplots()
    axes.bar(range(len(counted)), [layer.macs for layer in counted])
    if len(counted) <= MAX_LABELLED_LAYERS:
        names = [layer.name for layer in counted]
        axes.set_xticks(range(len(counted)), names, rotation=90, fontsize=6)
    axes.set_ylabel("MACs")
    return figure


def _method_sections(html: HtmlReport, steps: Sequence[StepRow]) -> None:
    """Tables of what compression steps chose (factorization ranks, k-means bits, KD)."""
    for step in steps:
        layers = step.info.get("layers")
        if step.kind == "factorize" and layers:
            html.add_heading(f"Factorization ({step.measurement.name})")
            html.add_table(
                ["layer", "method", "ranks"],
                [[name, v["method"], str(v["ranks"])] for name, v in layers.items()],
            )
        if step.kind == "finetune" and "kd" in step.info:
            html.add_heading(f"Distillation ({step.measurement.name})")
            html.add_table(["setting", "value"], _flatten(step.info))


def _flatten(info: Mapping[str, Any], prefix: str = "") -> list[list[str]]:
    rows = []
    for key, value in info.items():
        if isinstance(value, Mapping):
            rows += _flatten(value, f"{prefix}{key}.")
        else:
            rows.append([f"{prefix}{key}", format_cell(value)])
    return rows


def sensitivity_figure(result: Sensitivity) -> Figure:
    """Accuracy against the sparsity of one layer, one line per layer."""
    figure = Figure(figsize=(6.4, 4.0))
    axes = figure.subplots()
    for name, accuracy in result.accuracy.items():
        axes.plot(result.sparsities, accuracy, marker="o", markersize=3, label=name)
    axes.axhline(result.baseline, color="gray", linestyle="--", linewidth=1, label="unpruned")
    axes.set_xlabel("sparsity of the layer")
    axes.set_ylabel("validation accuracy")
    if len(result.accuracy) <= 24:
        axes.legend(fontsize=6, ncol=2)
    axes.grid(alpha=0.3)
    return figure
