"""One model in several engines: export to each, check each against PyTorch, time them together.

The survey's system-design question (Cai et al. 2022, Sec. 6) is which runtime to ship a model
with; the answer depends on the model, the precision and the CPU, so it is measured:
``compare_engines`` exports the model to every engine asked for, checks each artifact against
the model's PyTorch output (max abs difference and top-1 agreement), and times all of them in
one ``interleaved_benchmark`` per batch size, so they see the same machine.
``choose_engine`` is ``--engine auto``: the fastest installed engine for the model, measured.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import nn

from mobiledl.core.inputs import InputSpec, batch_size_of, map_inputs, slice_batch
from mobiledl.deploy.engine import (
    Batch,
    Engine,
    Runner,
    eager_output,
    get_engine,
    list_engines,
    max_abs_difference,
    to_numpy,
)
from mobiledl.deploy.timing import LatencyStats, interleaved_benchmark
from mobiledl.errors import UserError

#: ``--engine all``: every installed engine; ``--engine auto``: the fastest of them.
ALL_ENGINES, AUTO_ENGINE = "all", "auto"


@dataclass
class EngineResult:
    """One engine's artifact of a model: its size, its agreement with PyTorch, its latency."""

    engine: str
    path: Path
    artifact_bytes: int
    max_abs_diff: float
    top1_agreement: float | None
    latency: dict[int, LatencyStats]

    def row(self, batch_size: int) -> dict[str, object]:
        """A JSON-ready row at one batch size."""
        stats = self.latency[batch_size]
        return {
            "engine": self.engine,
            "batch_size": batch_size,
            "threads": stats.threads,
            "latency_ms_median": stats.median_ms,
            "latency_ms_p90": stats.p90_ms,
            "bytes": self.artifact_bytes,
            "max_abs_diff": self.max_abs_diff,
            "top1_agreement": self.top1_agreement,
        }


def installed_engines() -> list[str]:
    """Names of the engines whose packages are installed, the default one first."""
    names = []
    for name in list_engines():
        with contextlib.suppress(UserError):
            names.append(get_engine(name).name)
    return sorted(names, key=lambda name: name != get_engine().name)


def engines_named(choice: str | None) -> list[Engine]:
    """The engines ``--engine`` names: one name, a comma-separated list, or ``all``."""
    if choice == ALL_ENGINES:
        return [get_engine(name) for name in installed_engines()]
    names = [part.strip() for part in (choice or "").split(",") if part.strip()]
    return [get_engine(name) for name in names or [None]]


def compare_engines(
    model: nn.Module,
    inputs: Batch,
    engines: Sequence[Engine],
    workdir: Path,
    batch_sizes: Sequence[int] = (1,),
    threads: int | None = 1,
    warmup: int = 5,
    repeats: int = 30,
    clock: Callable[[], float] | None = None,
    input_specs: Sequence[InputSpec] | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[EngineResult]:
    """Export ``model`` to each engine in ``workdir``, check and time every artifact.

    ``inputs`` is the checking batch (parity and top-1 agreement run on all of it); the timed
    batches are its first ``batch_sizes`` samples, repeated if it has fewer. Of several
    engines, one that cannot export the model is left out and ``progress`` says why; a
    single engine's failure is the caller's ``UserError``.
    """
    if not engines:
        raise UserError("no engine to compare")
    say = progress or (lambda _: None)
    data = map_inputs(to_numpy, inputs)
    expected = eager_output(model, data)
    runners: dict[str, Runner] = {}
    results: dict[str, EngineResult] = {}
    for engine in engines:
        say(f"exporting to {engine.name}...")
        target = workdir / f"model{engine.suffix}"
        try:
            path = engine.export(model, slice_batch(data, 0, 1), target, input_specs)
        except UserError as error:
            if len(engines) == 1:
                raise
            say(f"left out {engine.name}: {error}")
            continue
        runner = engine.load(path, threads)
        actual = _run_chunks(runner, data)
        runners[engine.name] = runner
        results[engine.name] = EngineResult(
            engine=engine.name,
            path=path,
            artifact_bytes=engine.artifact_bytes(path),
            max_abs_diff=max_abs_difference(expected, actual, engine.name),
            top1_agreement=_agreement(expected, actual),
            latency={},
        )
    if not runners:
        raise UserError(f"no engine could export the model ({', '.join(e.name for e in engines)})")
    for batch_size in batch_sizes:
        say(f"timing {', '.join(runners)} at batch {batch_size}...")
        batch = _batch_of(data, batch_size)
        calls = {name: _call(runner, batch) for name, runner in runners.items()}
        extra = {} if clock is None else {"clock": clock}
        stats = interleaved_benchmark(calls, warmup, repeats, **extra)
        for name, timed in stats.items():
            results[name].latency[batch_size] = timed.with_context(
                batch_size=batch_size, threads=threads, engine=name
            )
    return list(results.values())


def fastest_engine(results: Sequence[EngineResult], batch_size: int) -> EngineResult:
    """The result with the lowest median latency at ``batch_size``."""
    return min(results, key=lambda result: result.latency[batch_size].median_ms)


@contextlib.contextmanager
def scratch_dir() -> Iterator[Path]:
    """A temporary directory for the artifacts of a comparison, deleted afterwards."""
    with tempfile.TemporaryDirectory(prefix="mobiledl-engines-") as tmp:
        yield Path(tmp)


def _call(runner: Runner, batch: Batch) -> Callable[[], object]:
    return lambda: runner.run(batch)


def _batch_of(data: Batch, batch_size: int) -> Batch:
    """The first ``batch_size`` samples of ``data``, cycling through it if it is shorter."""
    total = batch_size_of(data)
    index = np.arange(batch_size) % total
    return map_inputs(lambda array: np.ascontiguousarray(np.asarray(array)[index]), data)


def _run_chunks(runner: Runner, data: Batch, chunk: int = 256) -> np.ndarray:
    starts = range(0, batch_size_of(data), chunk)
    return np.concatenate([runner.run(slice_batch(data, start, start + chunk)) for start in starts])


def _agreement(expected: np.ndarray, actual: np.ndarray) -> float | None:
    """Fraction of samples with the same arg-max (``None`` for outputs that are not class
    scores)."""
    if expected.ndim != 2 or expected.shape[1] < 2:
        return None
    return float((expected.argmax(axis=1) == actual.argmax(axis=1)).mean())


def choose_engine(
    model: nn.Module,
    inputs: Batch,
    input_specs: Sequence[InputSpec] | None = None,
    batch_size: int = 1,
    repeats: int = 30,
    progress: Callable[[str], None] | None = None,
) -> tuple[Engine, list[EngineResult]]:
    """``--engine auto``: the installed engine that runs ``model`` fastest at ``batch_size``
    on one thread (timed on the calling thread's CPU time, which other processes cannot
    inflate), and the comparison it was chosen from."""
    engines = engines_named(ALL_ENGINES)
    with scratch_dir() as workdir:
        results = compare_engines(
            model,
            inputs,
            engines,
            workdir,
            batch_sizes=(batch_size,),
            threads=1,
            repeats=repeats,
            clock=time.thread_time,
            input_specs=input_specs,
            progress=progress,
        )
    return get_engine(fastest_engine(results, batch_size).engine), results
