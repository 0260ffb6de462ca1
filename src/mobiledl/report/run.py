"""The HTML report of a recipe run: step table, trade-off plots, per-layer profile, sensitivity.

One self-contained file (inline SVG, no scripts or external assets) built from plain data, so
it can be written by the pipeline runner, the demo, or anyone holding the same numbers. The
data is saved beside the page as JSON (``save_report_data``), from which ``mobiledl report
RUN_DIR`` renders the page again without re-running anything.

The trade-off plots mark the Pareto front (steps no other step beats on both accuracy and
cost); the per-layer section compares MACs and, where the engine profiled the step's artifact
(``mobiledl.deploy.profiling``), engine time per layer between the first and the last step.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from mobiledl.errors import UserError
from mobiledl.fileio import write_json_atomic
from mobiledl.profile import LayerProfile, Measurement
from mobiledl.report.html import HtmlReport, format_cell, measurement_rows

MAX_LABELLED_LAYERS = 60
#: Layers shown in the engine-time bars (the slowest in any profiled step).
MAX_TIMED_LAYERS = 30
#: Version of the JSON ``save_report_data`` writes.
DATA_VERSION = 1
#: The page and its data in a run folder (``mobiledl run``, ``mobiledl demo``).
REPORT_PAGE = "report.html"
REPORT_DATA = "report.json"


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
    """Everything the report shows.

    ``layer_times`` maps a step's name to the engine time of each layer of its artifact (ms
    per run, ``mobiledl inspect``'s rows), for the steps that were profiled; ``training``
    maps a step's name to its validation accuracy after each epoch.
    """

    title: str
    description: str
    steps: list[StepRow]
    layers_before: list[LayerProfile]
    layers_after: list[LayerProfile]
    sensitivity: Sensitivity | None = None
    notes: list[str] = field(default_factory=list)
    layer_times: dict[str, dict[str, float]] = field(default_factory=dict)
    training: dict[str, list[float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (``from_dict`` reads it back)."""
        return {
            "version": DATA_VERSION,
            "title": self.title,
            "description": self.description,
            "steps": [
                {
                    "kind": s.kind,
                    "seconds": s.seconds,
                    "measurement": s.measurement.to_dict(),
                    "info": s.info,
                }
                for s in self.steps
            ],  # fmt: skip
            "layers_before": [layer.to_dict() for layer in self.layers_before],
            "layers_after": [layer.to_dict() for layer in self.layers_after],
            "sensitivity": None if self.sensitivity is None else asdict(self.sensitivity),
            "notes": self.notes,
            "layer_times": self.layer_times,
            "training": self.training,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunReport:
        """The report a ``to_dict`` describes; ``KeyError`` / ``TypeError`` if it does not."""
        sensitivity = data.get("sensitivity")
        return cls(
            title=str(data["title"]),
            description=str(data.get("description", "")),
            steps=[
                StepRow(
                    s["kind"],
                    float(s["seconds"]),
                    Measurement(**s["measurement"]),
                    dict(s.get("info", {})),
                )
                for s in data["steps"]
            ],  # fmt: skip
            layers_before=[LayerProfile.from_dict(layer) for layer in data["layers_before"]],
            layers_after=[LayerProfile.from_dict(layer) for layer in data["layers_after"]],
            sensitivity=None if sensitivity is None else Sensitivity(**sensitivity),
            notes=[str(note) for note in data.get("notes", [])],
            layer_times={
                str(step): {str(k): float(v) for k, v in times.items()}
                for step, times in data.get("layer_times", {}).items()
            },
            training={
                str(step): [float(v) for v in curve]
                for step, curve in data.get("training", {}).items()
            },
        )


def save_report_data(path: str | Path, report: RunReport) -> Path:
    """Write the report's data as JSON (atomically); ``load_report_data`` reads it."""
    return write_json_atomic(path, report.to_dict())


def load_report_data(path: str | Path) -> RunReport:
    """The report saved at ``path``; a one-line ``UserError`` naming the file otherwise."""
    source = Path(path)
    if not source.is_file():
        raise UserError(f"{source}: no such report data file")
    try:
        data = json.loads(source.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise UserError(f"{source}: not a JSON report data file ({str(exc)[:80]})") from None
    if not isinstance(data, dict) or data.get("version") != DATA_VERSION:
        raise UserError(f"{source}: not a mobiledl report data file (version {DATA_VERSION})")
    try:
        return RunReport.from_dict(data)
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(
            f"{source}: report data is incomplete ({type(exc).__name__}: {exc})"
        ) from None


def write_run_folder_report(folder: Path, report: RunReport) -> Path:
    """Save ``report``'s data (``REPORT_DATA``) and render it (``REPORT_PAGE``) in ``folder``;
    returns the page."""
    save_report_data(folder / REPORT_DATA, report)
    return write_run_report(folder / REPORT_PAGE, report)


def write_run_report(path: str | Path, report: RunReport) -> Path:
    """Render ``report`` into one HTML file at ``path`` (atomically)."""
    html = HtmlReport(report.title)
    if report.description:
        html.add_text(report.description)
    for note in report.notes:
        html.add_text(note)
    _steps_section(html, report.steps)
    _tradeoff_section(html, report.steps)
    if report.training:
        html.add_heading("Training")
        html.add_figure(training_figure(report.training), "validation accuracy per epoch")
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
    """Accuracy against ``key`` for each measurement, in step order, labelled by name; the
    Pareto front (no other step as accurate at a lower ``key``) drawn in colour."""
    figure = Figure(figsize=(6.4, 3.6))
    axes = figure.subplots()
    xs = [getattr(m, key) for m in measurements]
    ys = [m.accuracy if m.accuracy is not None else float("nan") for m in measurements]
    axes.plot(xs, ys, color="#bbb", linewidth=1, zorder=1, label="steps in order")
    front = pareto_indices(xs, ys)
    rest = [i for i in range(len(xs)) if i not in front]
    axes.scatter([xs[i] for i in rest], [ys[i] for i in rest], color="#999", zorder=2)
    axes.step(
        [xs[i] for i in front], [ys[i] for i in front], where="post", color="#d62728",
        linewidth=1.2, zorder=3,
    )  # fmt: skip
    axes.scatter(
        [xs[i] for i in front], [ys[i] for i in front], color="#d62728", zorder=4,
        label="Pareto front",
    )  # fmt: skip
    for m, x, y in zip(measurements, xs, ys, strict=True):
        axes.annotate(m.name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    if log_x:
        axes.set_xscale("log")
    axes.set_xlabel(label)
    axes.set_ylabel("test accuracy")
    axes.legend(fontsize=7, loc="lower right")
    axes.grid(alpha=0.3)
    return figure


def pareto_indices(costs: Sequence[float], accuracies: Sequence[float]) -> list[int]:
    """Indices of the points no other point dominates (cost no higher and accuracy no lower,
    one of them strictly), ordered by cost; points without an accuracy are never on it."""
    points = [
        (cost, accuracy, i)
        for i, (cost, accuracy) in enumerate(zip(costs, accuracies, strict=True))
        if accuracy == accuracy  # not NaN
    ]
    front = [
        i
        for cost, accuracy, i in points
        if not any(c <= cost and a >= accuracy and (c < cost or a > accuracy) for c, a, _ in points)
    ]
    return sorted(front, key=lambda i: (costs[i], -accuracies[i]))


def training_figure(curves: Mapping[str, Sequence[float]]) -> Figure:
    """Validation accuracy per epoch, one line per training step."""
    figure = Figure(figsize=(6, 3))
    axes = figure.subplots()
    for step, curve in curves.items():
        axes.plot(range(1, len(curve) + 1), curve, marker="o", markersize=3, label=step)
    axes.set_xlabel("epoch")
    axes.set_ylabel("validation accuracy")
    axes.legend(fontsize=7)
    axes.grid(alpha=0.3)
    return figure


def _layers_section(html: HtmlReport, report: RunReport) -> None:
    html.add_heading("Per-layer profile")
    html.add_figure(
        block_macs_figure(report.layers_before, report.layers_after),
        "MACs per block: the model before the first step and the final model",
    )
    html.add_figure(layer_macs_figure(report.layers_after), "MACs per layer of the final model")
    if report.layer_times:
        steps = ", ".join(report.layer_times)
        html.add_figure(
            layer_time_figure(
                report.layer_times,
                [layer.name for layer in [*report.layers_before, *report.layers_after]],
            ),
            f"engine time per layer (ms per run; {steps}); layers that map to no module "
            "(quantize/dequantize steps, reformats) are shown under their operator",
        )
    header, rows = layer_comparison(report)
    html.add_text(
        "Each layer before the first step and after the last: output channels, parameters, "
        "MACs and, for each profiled step, its engine time (ms per run)."
    )
    html.add_table(header, rows)


def layer_comparison(report: RunReport) -> tuple[list[str], list[list[Any]]]:
    """Header and rows of the before/after table: per layer (of either model) its output
    channels, parameters and MACs before and after, and each profiled step's engine time."""
    before = {lp.name: lp for lp in report.layers_before if lp.params or lp.macs}
    after = {lp.name: lp for lp in report.layers_after if lp.params or lp.macs}
    steps = list(report.layer_times)
    header = ["layer", "type", "channels", "params before", "params after", "MACs before",
              "MACs after", *(f"{step} (ms)" for step in steps)]  # fmt: skip
    rows = []
    for name in dict.fromkeys([*before, *after]):
        old, new = before.get(name), after.get(name)
        rows.append(
            [name, (after.get(name) or before[name]).type, f"{_channels(old)} -> {_channels(new)}",
             old.params if old else None, new.params if new else None,
             old.macs if old else None, new.macs if new else None,
             *(report.layer_times[step].get(name) for step in steps)]
        )  # fmt: skip
    return header, rows


def _channels(layer: LayerProfile | None) -> str:
    """Output channels of a layer's first output (``-`` when absent or unknown)."""
    if layer is None or not layer.output_shape or len(layer.output_shape) < 2:
        return "-"
    return str(layer.output_shape[1])


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


def layer_time_figure(
    layer_times: Mapping[str, Mapping[str, float]], order: Sequence[str] = ()
) -> Figure:
    """Grouped bars: each profiled step's engine time per layer, for the ``MAX_TIMED_LAYERS``
    slowest layers of any step, in ``order`` (the model's layer order; others after)."""
    steps = list(layer_times)
    peak: dict[str, float] = {}
    for times in layer_times.values():
        for name, ms in times.items():
            peak[name] = max(peak.get(name, 0.0), ms)
    chosen = set(sorted(peak, key=lambda name: -peak[name])[:MAX_TIMED_LAYERS])
    rank = {name: i for i, name in enumerate(dict.fromkeys(order))}
    shown = sorted(chosen, key=lambda name: (rank.get(name, len(rank)), name))
    figure = Figure(figsize=(8, 3.4))
    axes = figure.subplots()
    width = 0.8 / max(len(steps), 1)
    for k, step in enumerate(steps):
        offsets = [i - 0.4 + width * (k + 0.5) for i in range(len(shown))]
        axes.bar(offsets, [layer_times[step].get(n, 0.0) for n in shown], width, label=step)
    axes.set_xticks(range(len(shown)), shown, rotation=90, fontsize=6)
    axes.set_ylabel("engine time (ms per run)")
    axes.legend(fontsize=7)
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
