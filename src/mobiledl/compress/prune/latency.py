"""Engine-measured latency of channel cuts, for latency-aware channel allocation.

MACs are not latency: on a CPU runtime a channel of a narrow, high-resolution layer saves
far less time than a channel of a wide one at the same MACs (and counts that are not
multiples of the kernel's vector width can save nothing). NetAdapt (Yang et al. 2018,
"NetAdapt: Platform-Aware Neural Network Adaptation for Mobile Applications") therefore
steers pruning by latency measured on the target platform. Here each prunable segment's
saving is measured once in the engine: the model with that one segment cut to about half
is exported and timed, interleaved with the unpruned model; the time saved per removed unit
is the segment's latency slope. ``ChannelPlanner.latency_search`` then meets the MAC target
step by step with the cut whose fraction of importance lost minus fraction of time saved is
cheapest per fraction of MACs removed.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from torch import Tensor, nn

from mobiledl.compress.prune.surgery import prune_groups
from mobiledl.core.clone import clone_module
from mobiledl.core.inputs import Inputs, map_inputs, repeat_batch, slice_batch
from mobiledl.errors import UserError

if TYPE_CHECKING:
    from mobiledl.compress.prune.channel import ChannelPlanner


@dataclass(frozen=True)
class LatencyProbe:
    """How segment latencies are measured: engine (``None``: the default one), batch size,
    threads, timed calls per model, and clock (``thread``: CPU time of the calling thread,
    robust on a shared machine; needs ``threads=1``)."""

    engine: str | None = None
    batch_size: int = 1
    threads: int = 1
    repeats: int = 100
    clock: str = "thread"

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.threads < 1 or self.repeats < 3:
            raise UserError("latency probe needs batch_size >= 1, threads >= 1, repeats >= 3")


def segment_latency_slopes(
    model: nn.Module, planner: ChannelPlanner, example_input: Inputs, probe: LatencyProbe
) -> list[float]:
    """Milliseconds saved per unit removed, for each segment of ``planner`` (0 for fixed
    segments and segments that cannot shrink). Negative measured savings become 0."""
    from mobiledl.deploy import get_engine
    from mobiledl.deploy.timing import clock_for, interleaved_benchmark

    clock = clock_for(probe.clock, (probe.threads,))
    engine = get_engine(probe.engine)
    full = planner.full_counts()
    cuts = _half_cuts(planner, full)
    x = repeat_batch(example_input, probe.batch_size)
    batch = map_inputs(Tensor.numpy, x)
    first = slice_batch(x, 0, 1)
    with tempfile.TemporaryDirectory(prefix="mobiledl-latency-") as tmp:
        runners: dict[str, Callable[[], object]] = {}
        for name, counts in {"full": full, **{str(i): c for i, c in cuts.items()}}.items():
            pruned = prune_groups(clone_module(model), planner.graph, planner.keep(counts))
            path = engine.export(pruned.eval(), first, Path(tmp) / f"{name}{engine.suffix}")
            runner = engine.load(path, threads=probe.threads)
            runners[name] = lambda runner=runner: runner.run(batch)
        stats = interleaved_benchmark(
            runners, warmup=5, repeats=probe.repeats, clock=clock, batch_size=probe.batch_size
        )
    slopes = [0.0] * len(full)
    for index, counts in cuts.items():
        saved = stats["full"].median_ms - stats[str(index)].median_ms
        slopes[index] = max(0.0, saved) / (full[index] - counts[index])
    return slopes


def _half_cuts(planner: ChannelPlanner, full: list[int]) -> dict[int, list[int]]:
    """Per free segment that can shrink: the full counts with that segment at about half."""
    cuts = {}
    for index, segment in enumerate(planner.segments):
        if segment.fixed is not None:
            continue
        half = segment.nearest(segment.size / 2)
        if half < full[index]:
            cuts[index] = [*full[:index], half, *full[index + 1 :]]
    return cuts
