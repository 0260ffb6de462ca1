"""Measured memory: every CPU allocation and free of a piece of code, from PyTorch's allocator.

``peak_allocation(fn)`` runs ``fn`` under ``torch.profiler`` with ``profile_memory=True``.
PyTorch's CPU allocator then reports each allocation and free it performs (the bytes asked
for, with a timestamp), whichever code asked for them: ATen op outputs, autograd's saved
tensors and gradient buffers, optimizer state and the temporaries kernels allocate inside
(e.g. im2col buffers). Adding these events up in time order gives the live bytes over the
run and their peak. Nothing here models which tensors exist, so it is an independent check of
the accounting in ``training_memory``.

What it cannot see: memory the allocator did not hand out (oneDNN's own scratch space, Python
objects) and blocks allocated *before* ``fn`` started, which are reported by the caller as a
baseline (e.g. the parameters). Frees of such older blocks are not reported by the allocator,
so the peak is never underestimated by them.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile


@dataclass(frozen=True)
class AllocationPeak:
    """Live bytes above the level at the start: the peak during the run and the level at its end."""

    peak_bytes: int
    end_bytes: int
    allocations: int


def peak_allocation(fn: Callable[[], Any]) -> tuple[Any, AllocationPeak]:
    """Run ``fn()`` and return its result and the peak of CPU bytes it allocated and held."""
    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = fn()
    return result, _peak_of(prof)


def _peak_of(prof: profile) -> AllocationPeak:
    """Cumulative sum of the allocator's memory events in time order."""
    events = [
        event
        for event in prof.profiler.kineto_results.events()
        if event.name() == "[memory]" and event.device_type() == torch.autograd.DeviceType.CPU
    ]
    events.sort(key=lambda event: event.start_ns())
    live = peak = allocations = 0
    for event in events:
        live += event.nbytes()
        peak = max(peak, live)
        allocations += event.nbytes() > 0
    return AllocationPeak(peak_bytes=peak, end_bytes=live, allocations=allocations)


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence the profiler's C++ start/stop banners, which bypass Python's ``sys.stderr``."""
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no real fd 2 (embedded interpreters): leave stderr alone
        yield
        return
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 2)
            try:
                yield
            finally:
                os.dup2(saved, 2)
    finally:
        os.close(saved)
