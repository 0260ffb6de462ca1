"""Fair latency comparisons: time several candidates in interleaved order.

A noisy machine (frequency scaling, other processes, thermal throttling) drifts over
seconds. Timing candidate A for ten seconds and then B for ten seconds folds that drift
into the A/B ratio. ``interleaved_benchmark`` instead runs rounds in which every
candidate is called a few times, rotating the order each round, so every candidate
sees the same machine on average. It reports medians and 90th percentiles, which a few
slow outliers do not move much.

Several calls per round (``CALLS_PER_ROUND``) rather than one matter when candidates
use different thread pools: OpenMP and ONNX Runtime workers spin for a while after a
call, so the first call after a switch can be slowed by the other runtime's spinning
threads. With three calls per round only a third of the samples can be hit, and the
median stays on the unaffected ones.
"""

from __future__ import annotations

import dataclasses
import gc
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from mobiledl.errors import UserError
from mobiledl.profile.measurement import Measurement

CALLS_PER_ROUND = 3


@dataclass
class LatencyStats:
    """Wall-clock latency of repeated calls, in milliseconds.

    ``batch_size``, ``threads`` and ``engine`` describe what was timed; they stay
    ``None`` when the caller did not say.
    """

    median_ms: float
    p90_ms: float
    mean_ms: float
    min_ms: float
    repeats: int
    batch_size: int | None = None
    threads: int | None = None
    engine: str | None = None
    times_ms: list[float] = field(default_factory=list, repr=False)

    @classmethod
    def from_times(cls, times_ms: list[float], **context: object) -> LatencyStats:
        """Summarize raw per-call times (``context`` fills batch_size, threads, engine)."""
        if not times_ms:
            raise ValueError("LatencyStats needs at least one timed call")
        values = np.asarray(times_ms, dtype=np.float64)
        return cls(
            median_ms=float(np.median(values)),
            p90_ms=float(np.percentile(values, 90)),
            mean_ms=float(values.mean()),
            min_ms=float(values.min()),
            repeats=len(times_ms),
            times_ms=[float(t) for t in times_ms],
            **context,  # type: ignore[arg-type]
        )

    @property
    def per_sample_ms(self) -> float | None:
        """Median latency divided by the batch size (``None`` if the batch is unknown)."""
        if not self.batch_size:
            return None
        return self.median_ms / self.batch_size

    def with_context(self, **context: object) -> LatencyStats:
        """A copy with ``batch_size``, ``threads`` or ``engine`` set."""
        return dataclasses.replace(self, **context)  # type: ignore[arg-type]

    def to_measurement(self, name: str = "model") -> Measurement:
        """A ``Measurement`` carrying the median and p90 latency and what was timed."""
        return Measurement(
            name=name,
            latency_ms_median=self.median_ms,
            latency_ms_p90=self.p90_ms,
            engine=self.engine,
            batch_size=self.batch_size,
            threads=self.threads,
            extra={
                "latency_ms_mean": self.mean_ms,
                "latency_ms_min": self.min_ms,
                "latency_repeats": self.repeats,
            },
        )

    def to_dict(self, with_times: bool = False) -> dict[str, object]:
        """A JSON-ready dict; the raw times only if ``with_times``."""
        data = dataclasses.asdict(self)
        if not with_times:
            data.pop("times_ms")
        return data


#: Clocks for ``interleaved_benchmark``: wall time, or CPU time of the calling thread.
CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "thread": time.thread_time}


def clock_for(name: str, threads: Sequence[int] = (1,)) -> Callable[[], float]:
    """The clock called ``name`` (``wall`` or ``thread``). ``thread`` measures the CPU time of
    the calling thread: immune to other processes on a shared machine, but meaningful only
    when the engine computes on that thread alone, so every entry of ``threads`` must be 1."""
    if name not in CLOCKS:
        raise UserError(f"unknown clock '{name}'; choose from {', '.join(CLOCKS)}")
    if name == "thread" and any(count != 1 for count in threads):
        raise UserError("the thread clock measures one thread's CPU time; it needs 1 thread")
    return CLOCKS[name]


def interleaved_benchmark(
    runners: Mapping[str, Callable[[], object]],
    warmup: int = 5,
    repeats: int = 30,
    rounds: int | None = None,
    clock: Callable[[], float] = time.perf_counter,
    **context: object,
) -> dict[str, LatencyStats]:
    """Time every zero-argument callable in ``runners`` ``repeats`` times, interleaved.

    First each runner is called ``warmup`` times (round-robin, untimed). Then ``rounds``
    rounds follow; in each, every runner is called ``repeats / rounds`` times in a row
    (the remainder is spread over the first rounds), and the order of the runners is
    rotated by one from round to round. Each call is timed on its own with ``clock``
    (seconds; default ``time.perf_counter``, wall time); the garbage collector is paused
    while timing. ``clock=time.thread_time`` gives CPU time of the calling thread, which
    other processes cannot inflate, but is only meaningful when the runners compute on
    the calling thread alone (one thread).

    ``rounds`` defaults to one round per ``CALLS_PER_ROUND`` repeats. Extra keyword
    arguments (``batch_size``, ``threads``, ``engine``) are stored in every result.
    Returns one ``LatencyStats`` per runner, in the order of ``runners``.
    """
    names = list(runners)
    rounds = _check_args(names, warmup, repeats, rounds)
    for _ in range(warmup):
        for name in names:
            runners[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    with _gc_paused():
        for index, calls in enumerate(_calls_per_round(repeats, rounds)):
            shift = index % len(names)
            for name in names[shift:] + names[:shift]:
                times[name].extend(_time_calls(runners[name], calls, clock))
    return {name: LatencyStats.from_times(times[name], **context) for name in names}


def _check_args(names: list[str], warmup: int, repeats: int, rounds: int | None) -> int:
    """Validate the arguments of ``interleaved_benchmark``; return the number of rounds."""
    if not names:
        raise UserError("interleaved_benchmark needs at least one runner")
    if repeats < 1:
        raise UserError(f"repeats must be >= 1; got {repeats}")
    if warmup < 0:
        raise UserError(f"warmup must be >= 0; got {warmup}")
    if rounds is None:
        rounds = math.ceil(repeats / CALLS_PER_ROUND)
    if not 1 <= rounds <= repeats:
        raise UserError(f"rounds must lie in [1, repeats={repeats}]; got {rounds}")
    return rounds


def _calls_per_round(repeats: int, rounds: int) -> list[int]:
    """Split ``repeats`` calls over ``rounds`` rounds as evenly as possible."""
    base, extra = divmod(repeats, rounds)
    return [base + (1 if index < extra else 0) for index in range(rounds)]


def _time_calls(
    runner: Callable[[], object], calls: int, clock: Callable[[], float]
) -> list[float]:
    """Call ``runner`` ``calls`` times; return each call's time in milliseconds."""
    times = []
    for _ in range(calls):
        start = clock()
        runner()
        times.append((clock() - start) * 1e3)
    return times


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Collect garbage once, then keep the collector from pausing timed calls."""
    was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
