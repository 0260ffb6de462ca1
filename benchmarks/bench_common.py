"""Helpers the benchmark scripts share: argument lists, smoke-sized tasks, interleaved ONNX
Runtime speed-ups and the machine description written beside the results."""

from __future__ import annotations

import os
import platform
import tempfile
from pathlib import Path
from typing import Any

import onnxruntime as ort
import torch
from torch import nn

from mobiledl.data import Task, build_task
from mobiledl.deploy import CLOCKS, get_engine, interleaved_benchmark
from mobiledl.errors import UserError


def names(text: str) -> list[str]:
    """The non-empty, stripped entries of a comma-separated list."""
    return [part.strip() for part in text.split(",") if part.strip()]


def positive_ints(text: str, flag: str) -> list[int]:
    """A comma-separated list of positive integers given to ``flag``."""
    try:
        values = [int(part) for part in names(text)]
    except ValueError:
        raise UserError(f"{flag} must be comma-separated integers; got '{text}'") from None
    if not values or min(values) < 1:
        raise UserError(f"{flag} must be positive integers; got '{text}'")
    return values


def load_task(name: str, image_size: int | None, seed: int, smoke: bool) -> Task:
    """The task; a smoke run keeps a few hundred samples (it runs every step, not learns)."""
    task = build_task(name, image_size=image_size, seed=seed)
    if smoke:
        task.x_train, task.y_train = task.x_train[:256], task.y_train[:256]
        task.x_val, task.y_val = task.x_val[:128], task.y_val[:128]
        task.x_test, task.y_test = task.x_test[:128], task.y_test[:128]
    return task


def speedups(
    models: dict[str, nn.Module],
    reference: str,
    task: Task,
    batch_sizes: list[int],
    threads: list[int],
    repeats: int,
    clock: str,
) -> dict[str, dict[str, dict[str, float]]]:
    """``{name: {"t1_b32": {median_ms, p90_ms, speedup}}}``: every model exported to ONNX
    (parity-checked against PyTorch), timed interleaved with the others at each batch size
    and thread count; speed-up = ``reference``'s median / the model's median. Batches above
    1 get a third of ``repeats`` (at least 3)."""
    engine = get_engine("onnxruntime")
    results: dict[str, dict[str, dict[str, float]]] = {name: {} for name in models}
    with tempfile.TemporaryDirectory() as tmp:
        paths = {}
        for name, model in models.items():
            paths[name] = engine.export(model, task.example_input(1), Path(tmp) / f"{name}.onnx")
            if engine.parity_check(model, paths[name], task.example_input(8)) > 1e-3:
                raise RuntimeError(f"{name}: ONNX Runtime output differs from PyTorch")
        for batch in batch_sizes:
            x = task.example_input(batch).numpy()
            calls_repeats = repeats if batch == 1 else max(3, repeats // 3)
            for count in threads:
                runners = {n: engine.load(p, threads=count) for n, p in paths.items()}
                calls = {n: (lambda r=r, x=x: r.run(x)) for n, r in runners.items()}
                stats = interleaved_benchmark(
                    calls,
                    warmup=min(10, calls_repeats),
                    repeats=calls_repeats,
                    clock=CLOCKS[clock],
                )
                for name, stat in stats.items():
                    results[name][f"t{count}_b{batch}"] = {
                        "median_ms": stat.median_ms,
                        "p90_ms": stat.p90_ms,
                        "speedup": stats[reference].median_ms / stat.median_ms,
                    }
    return results


def clock_text(clock: str) -> str:
    """How the latency cells were timed, for the results' prose."""
    return "CPU time of the calling thread" if clock == "thread" else "wall time"


def machine(**versions: str) -> dict[str, Any]:
    """Platform, CPU count, Python/torch/ONNX Runtime versions (plus ``versions``), torch
    threads and the load average when the results were written."""
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": ort.__version__,
        **versions,
        "torch_threads": torch.get_num_threads(),
        "load_average": list(os.getloadavg()),
    }
