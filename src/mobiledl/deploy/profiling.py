"""Per-layer profile of an artifact with the engine's own profiler (ONNX Runtime).

``inspect_model(model, example_input)`` exports a model to a temporary artifact and profiles
it; ``profile_artifact(path)`` profiles an existing one. Both return a
``mobiledl.profile.engine_profile.EngineProfile`` whose rows are the model's modules. Only ONNX
Runtime has a profiler wired up (``PROFILED_ENGINES``); ExecuTorch's ETDump and OpenVINO's
performance counters would fill the same ``KernelTime``s.

**Timing.** ONNX Runtime's profiler (``SessionOptions.enable_profiling``; see "Profiling tools"
in the ONNX Runtime docs, https://onnxruntime.ai/docs/performance/tune-performance/profiling-tools.html)
writes a Chrome-trace JSON file when ``end_profiling()`` is called: per run, one ``Node`` event
``<node name>_kernel_time`` per kernel (``args.op_name``; ``activation_size``,
``parameter_size`` and ``output_size`` in bytes) and one ``Session`` event ``model_run``.
Durations are whole microseconds, truncated, so half a microsecond is added back to each (the
expected truncation). The profiled session uses the engine's own session options and
alternates with an unprofiled session of the same file (``interleaved_benchmark``); the
latter's times are the end-to-end latency the kernels add up to. The trace and the optimized
graph ONNX Runtime saves (for the fused operators' names) live in a temporary directory that
is deleted afterwards.

ONNX Runtime times a kernel from before it formats the kernel's input shapes and sizes to after
it formats the outputs', so every kernel time includes a few microseconds of the profiler's
own work. Where kernels take tens of microseconds (batch 1, small images) this makes the
kernels add up to more than the unprofiled latency; docs/inspect.md measures it.

**Tracing kernels to exported nodes.** The profiled session loads the artifact with its nodes
renamed ``node#<index>`` (an int8 export drops node names to save bytes, see
``mobiledl.deploy.qdq``; names change nothing ONNX Runtime computes) and the original names are
kept aside. A fused kernel keeps the name of the node it was built around (a QDQ fusion names
its QLinearConv after the Conv, a Gemm + activation fusion prefixes ``fused``; the NHWC layout
pass appends ``_token_<n>``). The NCHWc layout pass names its kernels after their output tensor
plus ``_nchwc``, i.e. after the last node they absorbed, so such a kernel is traced upstream to
the nearest node of its own operator (the NCHWc Conv named after the ReLU it absorbed is the
Conv's). Kernels ONNX Runtime adds (Transpose,
ReorderInput/Output) trace to no node. A traced node's ``NodeOrigin`` is the module scope of
its original name, the constant tensors it reads (weights, through DequantizeLinear and
foldable unpacking ops) and, for a join without a scope, the origins of the nodes between its
immediate dominator and itself. Its MACs follow ``mobiledl.profile.ops`` on the shapes ONNX
shape inference gives at the profiled batch (Conv, ConvTranspose, Gemm and MatMul).
"""

from __future__ import annotations

import bisect
import json
import math
import re
import statistics
import tempfile
from collections import deque
from collections.abc import Iterator
from functools import reduce
from pathlib import Path

import onnx
import onnxruntime as ort
import torch
from torch import nn

from mobiledl.core.inputs import (
    Inputs,
    example_from_specs,
    input_tensors,
    map_inputs,
    repeat_batch,
    slice_batch,
)
from mobiledl.deploy.engine import DEFAULT_ENGINE, Engine, PathLike, get_engine, to_numpy
from mobiledl.deploy.onnxruntime import OnnxRuntimeEngine, OrtRunner
from mobiledl.deploy.onnxruntime import session_options as engine_session_options
from mobiledl.deploy.timing import interleaved_benchmark
from mobiledl.errors import UserError
from mobiledl.models import model_input_specs
from mobiledl.profile.engine_profile import (
    EngineProfile,
    KernelTime,
    ModuleIndex,
    NodeOrigin,
    attribute,
)
from mobiledl.profile.ops import op_cost
from mobiledl.resources import check_fits
from mobiledl.validate import check_int

PROFILED_ENGINES = ("onnxruntime",)
NODE_PREFIX = "node#"
KERNEL_SUFFIX = "_kernel_time"
#: Microseconds ONNX Runtime truncates from each duration, on average.
_TRUNCATION_US = 0.5
#: Suffixes ONNX Runtime's layout passes append to the name they build a kernel from.
_LAYOUT_SUFFIX = re.compile(r"(_nchwc|_token_\d+)$")
#: How far upstream a kernel named after an absorbed node looks for its own operator.
_UPSTREAM_STEPS = 4
_ROOT = -1
#: Trace arguments of a kernel's bytes: inputs computed at run time, constant inputs, outputs.
_BYTES_ARGS = ("activation_size", "parameter_size", "output_size")


def profiling_engine(name: str | None) -> Engine:
    """The engine ``name`` (``None``: the default) if mobiledl can profile in it per layer;
    ``UserError`` otherwise."""
    name = name or DEFAULT_ENGINE
    if name not in PROFILED_ENGINES:
        raise UserError(
            f"engine '{name}' has no per-layer profiler in mobiledl; inspect supports "
            f"{', '.join(PROFILED_ENGINES)}"
        )
    return get_engine(name)


def inspect_model(
    model: nn.Module,
    example_input: Inputs,
    engine: str | None = None,
    batch_size: int = 1,
    threads: int | None = 1,
    warmup: int = 10,
    repeats: int = 100,
    name: str = "model",
) -> EngineProfile:
    """Export ``model`` (traced on the first sample of ``example_input``) to a temporary
    artifact and profile it on ``batch_size`` copies of that sample (``profile_artifact``)."""
    backend = profiling_engine(engine)
    check_int(batch_size, "batch size", 1)
    first = slice_batch(example_input, 0, 1)
    with tempfile.TemporaryDirectory(prefix="mobiledl-inspect-") as tmp:
        path = Path(tmp) / f"model{backend.suffix}"
        backend.export(model, first, path, model_input_specs(model))
        return profile_artifact(
            path,
            batch_size,
            threads,
            warmup,
            repeats,
            engine=backend.name,
            model=model,
            inputs=repeat_batch(first, batch_size),
            name=name,
        )


def profile_artifact(
    path: PathLike,
    batch_size: int = 1,
    threads: int | None = 1,
    warmup: int = 10,
    repeats: int = 100,
    engine: str | None = None,
    model: nn.Module | None = None,
    inputs: Inputs | None = None,
    name: str | None = None,
) -> EngineProfile:
    """Profile the artifact at ``path``: ``warmup`` untimed, then ``repeats`` timed runs of a
    profiled session, each alternating with the unprofiled session the engine runs.

    ``inputs`` (default: random ones of the artifact's input specs at ``batch_size``) is the
    batch fed. ``model`` is the module the artifact was exported from: its module names and
    classes check the mapping; without it the artifact's names are taken as they are.
    """
    profiling_engine(engine)
    check_int(batch_size, "batch size", 1)
    check_int(warmup, "warmup", 0)
    check_int(repeats, "repeats", 1)
    source = Path(path)
    plain = OnnxRuntimeEngine().load(source, threads)
    batch = map_inputs(to_numpy, _random_batch(plain, batch_size) if inputs is None else inputs)
    artifact = onnx.load(str(source))
    arrays = zip(plain.input_specs, input_tensors(batch), strict=True)
    graph = _ArtifactGraph(artifact, {spec.name: tuple(x.shape) for spec, x in arrays})
    with tempfile.TemporaryDirectory(prefix="mobiledl-inspect-") as tmp:
        session = _profiled_session(_renamed(artifact), threads, Path(tmp))
        profiled = OrtRunner(source, session, threads)
        stats = interleaved_benchmark(
            {"profiled": lambda: profiled.run(batch), "engine": lambda: plain.run(batch)},
            warmup,
            repeats,
        )
        trace = _Trace.read(Path(session.end_profiling()), warmup)
        labels = _fused_labels(Path(tmp) / "optimized.onnx")
    kernels = [graph.kernel(kernel, trace, labels) for kernel in trace.kernels]
    return EngineProfile(
        name=name or source.stem,
        engine=OnnxRuntimeEngine.name,
        batch_size=batch_size,
        threads=threads,
        runs=len(trace.runs_ms),
        layers=attribute(kernels, ModuleIndex(model)),
        engine_run_ms=statistics.median(trace.runs_ms),
        latency_ms_median=stats["engine"].median_ms,
        latency_ms_p90=stats["engine"].p90_ms,
        artifact_bytes=source.stat().st_size,
    )


def _random_batch(runner: OrtRunner, batch_size: int) -> Inputs:
    per_sample = sum(math.prod(spec.shape[1:]) for spec in runner.input_specs)
    check_fits(3 * 8 * batch_size * per_sample, f"batch size {batch_size}")
    return example_from_specs(runner.input_specs, batch_size)


def _profiled_session(model: bytes, threads: int | None, tmp: Path) -> ort.InferenceSession:
    """A session with the engine's options plus the profiler, writing into ``tmp``."""
    options = engine_session_options(threads)
    options.enable_profiling = True
    options.profile_file_prefix = str(tmp / "ort-profile")
    options.optimized_model_filepath = str(tmp / "optimized.onnx")
    options.log_severity_level = 3  # not the warning that an NCHWc graph is machine-specific
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def _fused_labels(optimized: Path) -> dict[str, str]:
    """Kernel name -> its operator and what it fused, from the graph ONNX Runtime runs
    (an NCHWc Conv with a summed input and an activation: ``Conv+Add+Relu``)."""
    labels = {}
    for node in onnx.load(str(optimized), load_external_data=False).graph.node:
        fused = []
        if node.domain == "com.microsoft.nchwc" and node.op_type == "Conv" and len(node.input) > 3:
            fused.append("Add")
        fused += [a.s.decode() for a in node.attribute if a.name == "activation"]
        labels[node.name] = "+".join([node.op_type, *fused])
    return labels


class _Trace:
    """The timed runs of an ONNX Runtime profile: each run's time and each kernel's."""

    def __init__(self, runs_ms: list[float]) -> None:
        self.runs_ms = runs_ms
        self.kernels: dict[str, list[float]] = {}  # kernel name -> time in each run
        self.args: dict[str, dict[str, str]] = {}  # kernel name -> args of its first event

    @classmethod
    def read(cls, path: Path, warmup: int) -> _Trace:
        """Parse the trace at ``path``; the first ``warmup`` runs are left out."""
        events = json.loads(path.read_text())
        runs = sorted(
            (e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"),
            key=lambda e: e["ts"],
        )[warmup:]
        trace = cls([_ms(run["dur"]) for run in runs])
        starts = [run["ts"] for run in runs]
        for event in events:
            if event.get("cat") != "Node" or not event["name"].endswith(KERNEL_SUFFIX):
                continue
            index = bisect.bisect_right(starts, event["ts"]) - 1
            if index < 0 or event["ts"] > starts[index] + runs[index]["dur"]:
                continue  # a warmup run
            name = event["name"].removesuffix(KERNEL_SUFFIX)
            times = trace.kernels.setdefault(name, [0.0] * len(runs))
            times[index] += _ms(event["dur"])
            trace.args.setdefault(name, event.get("args", {}))
        return trace


def _renamed(model: onnx.ModelProto) -> bytes:
    """``model`` serialized with node ``i`` named ``node#<i>``."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for index, node in enumerate(copy.graph.node):
        node.name = f"{NODE_PREFIX}{index}"
    return copy.SerializeToString()


def _ms(microseconds: float) -> float:
    return (microseconds + _TRUNCATION_US) / 1e3


class _ArtifactGraph:
    """The exported graph kernels are traced back to: its nodes, original names, data flow,
    dominators and tensor shapes at the profiled batch."""

    def __init__(self, model: onnx.ModelProto, feed_shapes: dict[str, tuple[int, ...]]) -> None:
        graph = model.graph
        self.nodes = list(graph.node)
        self.names = [node.name for node in self.nodes]
        self.producer = {out: i for i, node in enumerate(self.nodes) for out in node.output if out}
        self.constants = {init.name for init in graph.initializer}
        for node in self.nodes:
            if all(not name or name in self.constants for name in node.input):
                self.constants.update(out for out in node.output if out)
        self.idom = self._dominators()
        self.shapes = _inferred_shapes(model, feed_shapes)

    def kernel(self, name: str, trace: _Trace, labels: dict[str, str]) -> KernelTime:
        """The ``KernelTime`` of the kernel ``name`` in ``trace``."""
        args = trace.args[name]
        op = args.get("op_name", "?")
        node = self._anchor(name, op)
        moved = sum(int(args.get(key, 0)) for key in _BYTES_ARGS)
        return KernelTime(
            name=name,
            op=labels.get(name, op),
            times_ms=tuple(trace.kernels[name]),
            macs=0 if node is None else self._macs(node),
            bytes=moved,
            origin=None if node is None else self._origin(node),
        )

    # ------------------------------------------------------------ kernel -> node

    def _anchor(self, kernel: str, op: str) -> int | None:
        """The exported node kernel ``kernel`` (an ``op``) was built around, if any: the node
        its name carries, or the nearest node of its operator upstream of the tensor it is
        named after (the last node it absorbed)."""
        match = re.search(rf"{re.escape(NODE_PREFIX)}(\d+)", kernel)  # also "fused node#3"
        if match:
            return int(match.group(1))
        tensor = kernel
        while _LAYOUT_SUFFIX.search(tensor):
            tensor = _LAYOUT_SUFFIX.sub("", tensor)
        last = self.producer.get(tensor)
        if last is None:
            return None
        return next((i for i in self._upstream(last) if self.nodes[i].op_type == op), last)

    def _upstream(self, start: int) -> Iterator[int]:
        """``start``, then the nodes feeding it, breadth first, up to ``_UPSTREAM_STEPS``."""
        queue, seen = deque([(start, 0)]), {start}
        while queue:
            index, steps = queue.popleft()
            yield index
            if steps == _UPSTREAM_STEPS:
                continue
            for pred in self._preds(index) - seen - {_ROOT}:
                seen.add(pred)
                queue.append((pred, steps + 1))

    # ------------------------------------------------------------ node -> origin

    def _origin(self, index: int, with_region: bool = True) -> NodeOrigin:
        scope = _scope(self.names[index])
        region: tuple[NodeOrigin, ...] = ()
        if with_region and scope is None and len(self._preds(index)) > 1:
            region = tuple(self._origin(u, with_region=False) for u in self._region(index))
        return NodeOrigin(scope, self._constant_inputs(index), region)

    def _constant_inputs(self, index: int) -> tuple[str, ...]:
        """Constant tensors node ``index`` reads, and those they are computed from, breadth
        first (a weight before the scale of its DequantizeLinear)."""
        queue = deque(name for name in self.nodes[index].input if name in self.constants)
        names: dict[str, None] = {}
        while queue:
            name = queue.popleft()
            if name in names:
                continue
            names[name] = None
            producer = self.producer.get(name)
            if producer is not None:
                queue.extend(n for n in self.nodes[producer].input if n)
        return tuple(names)

    def _preds(self, index: int) -> set[int]:
        """Nodes producing the non-constant inputs of node ``index`` (``_ROOT``: a graph
        input)."""
        return {
            self.producer.get(name, _ROOT)
            for name in self.nodes[index].input
            if name and name not in self.constants
        }

    def _dominators(self) -> dict[int, int]:
        """Immediate dominator of every non-constant node (the graph inputs are one root;
        nodes are in topological order, as ONNX requires)."""
        idom, depth = {_ROOT: _ROOT}, {_ROOT: 0}

        def meet(a: int, b: int) -> int:
            while a != b:
                if depth[a] >= depth[b]:
                    a = idom[a]
                if depth[b] > depth[a]:
                    b = idom[b]
            return a

        for index in range(len(self.nodes)):
            preds = self._preds(index)
            if preds:
                idom[index] = reduce(meet, preds)
                depth[index] = depth[idom[index]] + 1
        return idom

    def _region(self, index: int) -> list[int]:
        """Nodes on the paths from node ``index``'s immediate dominator to it (exclusive)."""
        fork = self.idom[index]
        ancestors, stack = set(), [index]
        while stack:
            for pred in self._preds(stack.pop()) - ancestors - {_ROOT}:
                ancestors.add(pred)
                stack.append(pred)
        return sorted(u for u in ancestors if u != fork and self._dominates(fork, u))

    def _dominates(self, fork: int, index: int) -> bool:
        while index != _ROOT:
            if index == fork:
                return True
            index = self.idom[index]
        return fork == _ROOT

    # ------------------------------------------------------------ MACs

    def _macs(self, index: int) -> int:
        """MACs of a Conv, ConvTranspose, Gemm or MatMul node by ``mobiledl.profile.ops``."""
        node = self.nodes[index]
        if node.op_type not in ("Conv", "ConvTranspose", "Gemm", "MatMul"):
            return 0
        shapes = [self.shapes.get(name) for name in (*node.input[:2], node.output[0])]
        if any(shape is None for shape in shapes):
            return 0
        x, w, y = (torch.empty(shape, device="meta") for shape in shapes)
        aten = torch.ops.aten
        if node.op_type in ("Conv", "ConvTranspose"):
            transposed = node.op_type == "ConvTranspose"
            return op_cost(aten.convolution.default, (x, w, None, [1], [0], [1], transposed), y)[0]
        if node.op_type == "Gemm":
            trans_a = any(a.name == "transA" and a.i for a in node.attribute)
            return op_cost(aten.mm.default, (x.mT if trans_a else x, w), y)[0]
        return op_cost(aten.matmul.default, (x, w), y)[0]


def _scope(name: str) -> tuple[str, ...] | None:
    """The module scope PyTorch's exporter put in a node name: ``/features/features.1/Add``
    -> ``("features", "features.1")``, ``/Flatten`` -> ``()``; ``None`` for other names."""
    if not name.startswith("/"):
        return None
    parts = name.split("/")[1:-1]
    return tuple(parts) if all(parts) else None


def _inferred_shapes(
    model: onnx.ModelProto, feed_shapes: dict[str, tuple[int, ...]]
) -> dict[str, tuple[int, ...]]:
    """Static shapes of the graph's tensors when fed inputs of ``feed_shapes``."""
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    for value in fixed.graph.input:
        sizes = feed_shapes.get(value.name, ())
        for dim, size in zip(value.type.tensor_type.shape.dim, sizes, strict=False):
            dim.Clear()
            dim.dim_value = size
    inferred = onnx.shape_inference.infer_shapes(fixed, data_prop=True).graph
    shapes = {init.name: tuple(init.dims) for init in inferred.initializer}
    for value in (*inferred.input, *inferred.value_info, *inferred.output):
        dims = value.type.tensor_type.shape.dim
        if value.type.tensor_type.HasField("shape") and all(d.HasField("dim_value") for d in dims):
            shapes[value.name] = tuple(d.dim_value for d in dims)
    return shapes
