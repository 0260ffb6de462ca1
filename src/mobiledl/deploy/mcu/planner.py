"""Static SRAM planning for an integer ``Graph``: execution order, tensor lifetimes, arena
offsets, peak SRAM and flash.

A microcontroller runtime allocates nothing while it runs: every activation lives at an
offset, fixed ahead of time, in one static arena (TFLM; TinyEngine, Lin et al. 2020, "MCUNet:
Tiny Deep Learning on IoT Devices"). ``plan_memory``

1. picks an execution order: the graph's own, a greedy one (run next the ready op that
   leaves the least memory live) and, where a graph branches (a ResNet shortcut beside its
   main path), every topological order up to ``MAX_ORDERS``; the order with the smallest
   live-memory peak wins;
2. gives each tensor a lifetime: from the step that writes it to the last step that reads
   it (the graph input from step 0, the output to the end);
3. with ``in_place_depthwise`` (TinyEngine), lets a depthwise conv write its output over its
   input when it is the input's last reader: channel ``c``'s output goes to a one-channel
   temporary, then to the input slot at ``c`` output planes, behind the input channels still
   to be read (any stride: an output plane is no larger than an input plane), so input and
   output share one slot and only the temporary is added;
4. places the slots in the arena by greedy first-fit and best-fit over several orderings
   (by size as TFLM's greedy planner does, by lifetime length, by first use, by size x
   lifetime) and keeps the smallest arena. The live-memory peak is the lower bound any
   placement needs (``lower_bound_bytes``); layer by layer, it is the paper's peak SRAM.

Flash is the constants the kernels read: int8 weights, int32 biases, the multiplier and
shift tables. Code size is not included (the C generator is a later slice).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from mobiledl.deploy.mcu.graph import Graph, Op

#: Arena offsets and slot sizes are multiples of this (int32 tensors are read in place).
ALIGN = 4
#: Topological orders enumerated at most (graphs with many independent branches explode).
MAX_ORDERS = 2000


@dataclass
class Slot:
    """An arena region: one tensor, an in-place chain of tensors, or a depthwise temporary."""

    name: str
    size: int
    start: int
    end: int
    tensors: tuple[str, ...]
    offset: int = 0

    @property
    def lifetime(self) -> int:
        return self.end - self.start + 1

    def overlaps_in_time(self, other: Slot) -> bool:
        return self.start <= other.end and other.start <= self.end


@dataclass
class LiveTensor:
    """A slot live at some step, for reports."""

    name: str
    bytes: int
    producer: str


@dataclass
class StepReport:
    """What one step (op) of the plan keeps live."""

    step: int
    layer: str
    kind: str
    live_bytes: int
    live: list[LiveTensor]


@dataclass
class MemoryPlan:
    """Where every tensor lives in the arena and what that costs (module docstring)."""

    graph: Graph
    order: list[int]
    slots: list[Slot]
    in_place: set[int]
    arena_bytes: int
    lower_bound_bytes: int
    flash_bytes: int
    placement: str
    steps: list[StepReport] = field(default_factory=list)

    def offset(self, tensor: str) -> int:
        return next(slot.offset for slot in self.slots if tensor in slot.tensors)

    def temporary(self, op_index: int) -> Slot | None:
        return next((s for s in self.slots if s.name == _temp_name(op_index)), None)

    @property
    def peak_step(self) -> StepReport:
        return max(self.steps, key=lambda step: step.live_bytes)


def plan_memory(
    graph: Graph,
    in_place_depthwise: bool = True,
    search_order: bool = True,
    external: frozenset[str] = frozenset(),
) -> MemoryPlan:
    """The smallest plan found for ``graph`` (module docstring). Tensors named in
    ``external`` live outside the arena (a patch writes its output into the full tensor)."""
    orders = candidate_orders(graph) if search_order else [list(range(len(graph.ops)))]
    best: MemoryPlan | None = None
    for order in orders:
        slots, in_place = _slots(graph, order, in_place_depthwise, external)
        bound = _live_peak(slots, len(order))
        if best is not None and bound >= best.lower_bound_bytes:
            continue
        arena, placement, placed = place(slots)
        best = MemoryPlan(
            graph, order, placed, in_place, arena, bound, graph.flash_bytes, placement
        )
    assert best is not None
    best.steps = _step_reports(best)
    return best


# ---------------------------------------------------------------- execution order


def candidate_orders(graph: Graph) -> list[list[int]]:
    """The graph's order, a greedy least-live-memory order, and all topological orders up to
    ``MAX_ORDERS`` (none beyond the graph's own when the graph is a chain)."""
    orders = [list(range(len(graph.ops))), _greedy_order(graph)]
    enumerated = list(itertools.islice(_topological_orders(graph), MAX_ORDERS + 1))
    if len(enumerated) <= MAX_ORDERS:
        orders.extend(enumerated)
    unique = {tuple(order): order for order in orders}
    return list(unique.values())


def _dependencies(graph: Graph) -> list[set[int]]:
    producer = {op.output: i for i, op in enumerate(graph.ops)}
    return [{producer[name] for name in op.inputs if name in producer} for op in graph.ops]


def _topological_orders(graph: Graph) -> Iterator[list[int]]:
    needs = _dependencies(graph)
    done: list[int] = []

    def extend() -> Iterator[list[int]]:
        if len(done) == len(needs):
            yield list(done)
            return
        finished = set(done)
        for i, deps in enumerate(needs):
            if i not in finished and deps <= finished:
                done.append(i)
                yield from extend()
                done.pop()

    yield from extend()


def _greedy_order(graph: Graph) -> list[int]:
    """Run next the ready op after which the fewest bytes stay live (ties: graph order)."""
    needs = _dependencies(graph)
    readers = {name: set(graph.consumers(name)) for name in graph.tensors}
    done: list[int] = []
    live = {graph.input}
    while len(done) < len(needs):
        finished = set(done)
        ready = [i for i, deps in enumerate(needs) if i not in finished and deps <= finished]
        choice = min(ready, key=lambda i: _live_after(graph, readers, live, finished | {i}, i))
        done.append(choice)
        live.add(graph.ops[choice].output)
    return done


def _live_after(
    graph: Graph, readers: dict[str, set[int]], live: set[str], ran: set[int], op_index: int
) -> int:
    """Bytes still live once the ops ``ran`` have run, ``op_index`` last."""
    kept = {n for n in live if not readers[n] <= ran or n == graph.output}
    return sum(graph.tensors[n].nbytes for n in kept | {graph.ops[op_index].output})


# ---------------------------------------------------------------- lifetimes


def can_run_in_place(op: Op, graph: Graph, last_reader: bool) -> bool:
    """A depthwise conv (one filter per channel) whose input dies with it and whose output
    planes are no larger than its input planes can overwrite its input (TinyEngine)."""
    if op.kind != "depthwise" or not last_reader:
        return False
    x, y = graph.tensors[op.inputs[0]], graph.tensors[op.output]
    return x.shape[1] == y.shape[1] and y.nbytes <= x.nbytes and x.dtype == y.dtype


def _slots(
    graph: Graph, order: Sequence[int], in_place_depthwise: bool, external: frozenset[str]
) -> tuple[list[Slot], set[int]]:
    """One slot per tensor (in-place chains merged) plus depthwise temporaries; none for the
    ``external`` tensors."""
    step_of = {op_index: step for step, op_index in enumerate(order)}
    last = len(order) - 1
    start = {graph.input: 0}
    end = {graph.input: 0}
    for op_index in order:
        op = graph.ops[op_index]
        start[op.output] = end[op.output] = step_of[op_index]
        for name in op.inputs:
            end[name] = max(end[name], step_of[op_index])
    end[graph.output] = last
    owner = {name: name for name in start}
    in_place: set[int] = set()
    temps = []
    for op_index in order:
        op = graph.ops[op_index]
        source = op.inputs[0] if op.inputs else ""
        dies_here = bool(source) and end[source] == step_of[op_index] and source != graph.output
        inside = not {source, op.output} & external
        if in_place_depthwise and inside and can_run_in_place(op, graph, dies_here):
            owner[op.output] = owner[source]
            in_place.add(op_index)
            plane = math.prod(graph.tensors[op.output].shape[2:])
            step = step_of[op_index]
            temps.append(Slot(_temp_name(op_index), _aligned(plane), step, step, ()))
    slots = []
    for root in dict.fromkeys(r for n, r in owner.items() if n not in external):
        members = tuple(name for name in owner if owner[name] == root)
        size = max(graph.tensors[name].nbytes for name in members)
        slots.append(
            Slot(
                root,
                _aligned(size),
                min(start[n] for n in members),
                max(end[n] for n in members),
                members,
            )
        )
    return slots + temps, in_place


def _temp_name(op_index: int) -> str:
    return f"temp:op{op_index}"


def _aligned(size: int) -> int:
    return -(-size // ALIGN) * ALIGN


def _live_bytes(slots: Sequence[Slot], step: int) -> int:
    return sum(slot.size for slot in slots if slot.start <= step <= slot.end)


def _live_peak(slots: Sequence[Slot], steps: int) -> int:
    return max(_live_bytes(slots, step) for step in range(steps))


# ---------------------------------------------------------------- placement

ORDERINGS = {
    "size": lambda s: (-s.size, s.start),
    "lifetime": lambda s: (-s.lifetime, -s.size),
    "first_use": lambda s: (s.start, -s.size),
    "area": lambda s: (-s.size * s.lifetime, s.start),
}


def place(slots: Sequence[Slot]) -> tuple[int, str, list[Slot]]:
    """The smallest arena over every ordering x {first-fit, best-fit}: its size, the
    strategy's name and the placed slots (copies)."""
    best: tuple[int, str, list[Slot]] | None = None
    for (label, key), best_fit in itertools.product(ORDERINGS.items(), (False, True)):
        placed = [Slot(s.name, s.size, s.start, s.end, s.tensors) for s in sorted(slots, key=key)]
        arena = _place_in_order(placed, best_fit)
        strategy = f"{'best' if best_fit else 'first'}-fit by {label}"
        if best is None or arena < best[0]:
            best = (arena, strategy, placed)
    assert best is not None
    return best


def _place_in_order(slots: list[Slot], best_fit: bool) -> int:
    """Offsets for ``slots`` in order: each goes into the lowest gap (first-fit) or the
    smallest gap (best-fit) between the already placed slots it shares time with; the arena
    grows only when no gap fits. Returns the arena size."""
    placed: list[Slot] = []
    for slot in slots:
        busy = sorted((p for p in placed if p.overlaps_in_time(slot)), key=lambda p: p.offset)
        gaps, cursor = [], 0
        for other in busy:
            if other.offset - cursor >= slot.size:
                gaps.append((other.offset - cursor, cursor))
            cursor = max(cursor, other.offset + other.size)
        if gaps:
            slot.offset = min(gaps)[1] if best_fit else gaps[0][1]
        else:
            slot.offset = cursor
        placed.append(slot)
    return max((s.offset + s.size for s in slots), default=0)


# ---------------------------------------------------------------- reports


def _step_reports(plan: MemoryPlan) -> list[StepReport]:
    graph = plan.graph
    producer = {op.output: op.layer for op in graph.ops}
    reports = []
    for step, op_index in enumerate(plan.order):
        op = graph.ops[op_index]
        live = [s for s in plan.slots if s.start <= step <= s.end]
        tensors = [
            LiveTensor(
                "+".join(s.tensors) or s.name,
                s.size,
                producer.get(s.tensors[0], "input") if s.tensors else op.layer,
            )
            for s in sorted(live, key=lambda s: -s.size)
        ]
        reports.append(StepReport(step, op.layer, op.kind, sum(s.size for s in live), tensors))
    return reports
