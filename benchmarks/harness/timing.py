"""Interleaved latency: baseline and candidates timed in rotating rounds on one clock.

``interleaved`` times zero-argument calls; ``onnx_grid`` times ONNX files in ONNX Runtime
at every batch size and thread count; ``onnx_speedups`` exports models first (checking
parity with PyTorch). Speed-up = the reference's median / the candidate's median.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
from torch import nn

from mobiledl.data import Task
from mobiledl.deploy import CLOCKS, get_engine, interleaved_benchmark

Cell = dict[str, float]
PARITY_TOLERANCE = 1e-3


def clock_text(clock: str) -> str:
    """How latency cells were timed, for a report's prose."""
    return "CPU time of the calling thread" if clock == "thread" else "wall time"


def interleaved(
    calls: Mapping[str, Callable[[], object]],
    *,
    repeats: int,
    warmup: int,
    clock: str,
    reference: str | None = None,
    **context: object,
) -> dict[str, Cell]:
    """``{name: {median_ms, p90_ms, repeats[, speedup]}}`` of every call, timed interleaved
    (``mobiledl.deploy.interleaved_benchmark``) with the named clock; ``speedup`` over
    ``reference`` when given."""
    stats = interleaved_benchmark(
        calls, warmup=warmup, repeats=repeats, clock=CLOCKS[clock], **context
    )
    cells = {
        name: {"median_ms": s.median_ms, "p90_ms": s.p90_ms, "repeats": s.repeats}
        for name, s in stats.items()
    }
    if reference is not None:
        for cell in cells.values():
            cell["speedup"] = cells[reference]["median_ms"] / cell["median_ms"]
    return cells


def onnx_grid(
    paths: Mapping[str, Path],
    inputs: Callable[[int], np.ndarray],
    reference: str,
    batch_sizes: Sequence[int],
    threads: Sequence[int],
    repeats: int,
    clock: str,
    large_batch_share: int = 3,
) -> dict[str, dict[str, Cell]]:
    """``{name: {"t1_b32": cell}}``: every ONNX file timed interleaved with the others at
    each batch size (input ``inputs(batch)``) and ONNX Runtime thread count. Batches above 1
    get ``repeats // large_batch_share`` calls (at least 3)."""
    engine = get_engine("onnxruntime")
    grid: dict[str, dict[str, Cell]] = {name: {} for name in paths}
    for batch in batch_sizes:
        x = inputs(batch)
        calls_repeats = repeats if batch == 1 else max(3, repeats // large_batch_share)
        for count in threads:
            runners = {name: engine.load(path, threads=count) for name, path in paths.items()}
            cells = interleaved(
                {name: (lambda r=r, x=x: r.run(x)) for name, r in runners.items()},
                repeats=calls_repeats,
                warmup=min(10, calls_repeats),
                clock=clock,
                reference=reference,
            )
            for name, cell in cells.items():
                grid[name][f"t{count}_b{batch}"] = cell
    return grid


def onnx_speedups(
    models: Mapping[str, nn.Module],
    reference: str,
    task: Task,
    batch_sizes: Sequence[int],
    threads: Sequence[int],
    repeats: int,
    clock: str,
) -> dict[str, dict[str, Cell]]:
    """``onnx_grid`` of ``models`` exported to ONNX (each checked against PyTorch first) on
    the task's example inputs."""
    engine = get_engine("onnxruntime")
    with tempfile.TemporaryDirectory(prefix="mobiledl-bench-") as tmp:
        paths = {}
        for name, model in models.items():
            paths[name] = engine.export(model, task.example_input(1), Path(tmp) / f"{name}.onnx")
            if engine.parity_check(model, paths[name], task.example_input(8)) > PARITY_TOLERANCE:
                raise RuntimeError(f"{name}: ONNX Runtime output differs from PyTorch")
        return onnx_grid(
            paths,
            lambda batch: task.example_input(batch).numpy(),
            reference,
            batch_sizes,
            threads,
            repeats,
            clock,
        )
