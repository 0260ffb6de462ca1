"""The HTML report of a search: the accuracy-latency Pareto plot, the search history and the
chosen sub-network."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from mobiledl.automl.nas.run import SearchResult
from mobiledl.automl.nas.search import Constraints
from mobiledl.report import HtmlReport


def pareto_figure(result: SearchResult, constraints: Constraints) -> Figure:
    """Predicted accuracy vs predicted latency of every candidate scored, the feasible front,
    the measured finalists and the winner."""
    figure = Figure(figsize=(6.5, 4.2))
    axes = figure.add_subplot()
    seen = result.seen
    axes.scatter(
        [c.latency_ms for c in seen],
        [100 * c.accuracy for c in seen],
        s=6,
        color="#bbbbbb",
        label="candidates (predicted)",
    )
    front = result.front
    axes.plot(
        [c.latency_ms for c in front],
        [100 * c.accuracy for c in front],
        "-o",
        ms=3,
        color="#1f77b4",
        label="Pareto front (within budget)",
    )
    axes.scatter(
        [c.latency_ms for c, _ in result.finalists],
        [100 * acc for _, acc in result.finalists],
        marker="x",
        color="#d62728",
        label="finalists (measured val.)",
    )
    axes.scatter(
        [result.best.latency_ms],
        [100 * result.best_val_accuracy],
        marker="*",
        s=160,
        color="#2ca02c",
        label="chosen",
    )
    if constraints.latency_ms is not None:
        axes.axvline(constraints.latency_ms, color="#555555", ls="--", label="latency budget")
    axes.set_xlabel("latency (ms, ONNX Runtime, predicted)")
    axes.set_ylabel("accuracy (%)")
    axes.legend(fontsize=8, loc="lower right")
    axes.grid(alpha=0.3)
    return figure


def search_history(result: SearchResult, constraints: Constraints) -> list[float | None]:
    """After each candidate scored (in scoring order), the best predicted accuracy of the
    candidates so far that meet ``constraints`` (``None`` until one does)."""
    best: float | None = None
    history: list[float | None] = []
    for candidate in result.seen:
        if candidate.meets(constraints) and (best is None or candidate.accuracy > best):
            best = candidate.accuracy
        history.append(best)
    return history


def history_figure(result: SearchResult, constraints: Constraints) -> Figure:
    """Best feasible predicted accuracy against the number of candidates scored."""
    history = search_history(result, constraints)
    figure = Figure(figsize=(6.5, 3.0))
    axes = figure.add_subplot()
    steps = [i + 1 for i, best in enumerate(history) if best is not None]
    axes.step(steps, [100 * best for best in history if best is not None], where="post")
    axes.set_xlabel("candidates scored (search order)")
    axes.set_ylabel("best feasible accuracy (%, predicted)")
    axes.grid(alpha=0.3)
    return figure


def write_search_report(
    path: str | Path, result: SearchResult, constraints: Constraints, chosen: dict[str, Any]
) -> Path:
    """Write the report: budget, chosen sub-network's measurements, plot, front, finalists."""
    report = HtmlReport("mobiledl nas search")
    budget = ", ".join(f"{k} {v}" for k, v in constraints.to_dict().items() if v is not None)
    report.add_text(f"Budget: {budget}. Chosen: {result.best.arch.label()}.")
    report.add_heading("Chosen sub-network (measured)")
    report.add_table(["metric", "value"], [[k, v] for k, v in chosen.items()])
    report.add_heading("Accuracy vs latency")
    report.add_figure(
        pareto_figure(result, constraints),
        "Grey: every candidate the search scored (predicted accuracy and latency); blue: "
        "the Pareto front of those within the budget; red: finalists at their measured "
        "validation accuracy; green star: the chosen sub-network.",
    )
    report.add_heading("Search history")
    report.add_figure(
        history_figure(result, constraints),
        "The best predicted accuracy among the candidates within the budget, after each "
        "candidate the search scored.",
    )
    report.add_heading("Pareto front")
    report.add_table(
        ["architecture", "pred. accuracy", "pred. latency (ms)", "MACs", "peak memory (B)"],
        [
            [c.arch.label(), c.accuracy, c.latency_ms, c.macs, c.peak_memory_bytes]
            for c in result.front
        ],
    )
    report.add_heading("Finalists")
    report.add_table(
        ["architecture", "pred. accuracy", "measured val. accuracy", "pred. latency (ms)"],
        [[c.arch.label(), c.accuracy, acc, c.latency_ms] for c, acc in result.finalists],
    )
    return report.write(path)
