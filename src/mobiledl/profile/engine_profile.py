"""Per-layer time on an inference engine, traced back to the PyTorch modules it came from.

An engine's profiler times *kernels*: the nodes of the graph it actually runs, after its
optimizer fused and re-laid-out the exported one (a convolution with its ReLU and residual
add, a quantize-conv-requantize chain as one integer kernel, layout transposes it inserted).
``mobiledl.deploy.profiling`` collects them as ``KernelTime``s, each with a ``NodeOrigin``:
what the exported node it was built around tells about where it came from. This module maps
origins to modules and builds the per-layer table (``EngineProfile``).

``ModuleIndex.resolve`` maps an origin to a module's qualified name, trying in turn:

1. **weights**: a kernel reading a tensor named after a parameter (``features.0.conv.weight``,
   or a name derived from it such as ``features.0.conv.weight_quantized``) belongs to that
   parameter's module;
2. **scope**: PyTorch's exporter names a node after the module calls that issued it,
   ``/features/features.1/conv1/conv/Conv`` for ``features.1.conv1.conv`` (a numbered child's
   scope repeats its parent's attribute name: ``features`` then ``features.1``); a node of the
   model's own ``forward`` has the empty scope, the model itself;
3. **region**: a join that kept neither (a residual add of a graph whose node names were
   dropped) belongs to the smallest module holding every layer between the fork it closes and
   itself. A container (``nn.Sequential``, ``nn.ModuleList``, a bare ``nn.Module`` of a
   ``torch.fx`` graph) runs no op of its own, so its nearest non-container ancestor is taken;
   a ``torch.fx.GraphModule`` (a quantized model) keeps its layers' original classes in
   ``node.meta["nn_module_stack"]``, which is where they are read from.

With a model, a scope or weight must name one of its modules; without one (an ``.onnx`` file)
the names are taken as they are. A kernel that maps to no module (a transpose the engine
inserted, the quantization of the model input) is a row ``(unmapped: <op>)``, never dropped.

Times: a row's time is the median over the profiled runs of the summed time of its kernels in
each run. ``layers_ms`` (the sum of rows) is compared with two end-to-end latencies of the same
artifact: the engine's own timing of the profiled runs (ONNX Runtime's ``model_run``) and
mobiledl's timing of an unprofiled session interleaved with them (``latency_ms_median``, what
``mobiledl bench`` measures). MACs follow ``mobiledl.profile.ops``; bytes are what the engine
reports each kernel reading (activations and weights) and writing.
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from torch import fx, nn

from mobiledl.profile.measurement import Measurement

MODEL_ROW = "(model)"
#: Containers only call their children; an op of theirs belongs to an ancestor.
CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
#: Without a model: a tensor named like a parameter, possibly with a suffix.
_PARAMETER_NAME = re.compile(r"^(?P<param>.+\.(?:weight|bias))(?:_\w*)?$")


@dataclass(frozen=True)
class NodeOrigin:
    """What an exported node says about the module it came from.

    ``scope``: the module scope in its name (``("features", "features.1", "conv1")``), ``()``
    for the model's own ``forward``, ``None`` if its name carries none; ``weights``: names of
    the constant tensors it reads, weights first; ``region``: for a join with neither, the
    origins of the nodes between the fork it closes and itself.
    """

    scope: tuple[str, ...] | None = None
    weights: tuple[str, ...] = ()
    region: tuple[NodeOrigin, ...] = ()


@dataclass(frozen=True)
class KernelTime:
    """One kernel the engine ran in every profiled run.

    ``op``: the engine's operator, with what it fused (``Conv+Add+Relu``); ``times_ms``: its
    time in each profiled run; ``macs``: of the exported node it was built around;
    ``bytes``: read and written per run, as the engine reports; ``origin``: ``None`` for a
    kernel the engine added (it was built around no exported node).
    """

    name: str
    op: str
    times_ms: tuple[float, ...]
    macs: int = 0
    bytes: int = 0
    origin: NodeOrigin | None = None


@dataclass
class LayerTime:
    """One row: the kernels that map to one module (or to none, per operator).

    ``kind`` is ``module``, ``model`` (the model's own ``forward``) or ``unmapped``.
    ``time_ms`` is the median per run, ``share`` its fraction of ``layers_ms``.
    """

    name: str
    kind: str
    ops: list[str]
    kernels: list[str]
    time_ms: float
    share: float
    macs: int
    bytes: int

    @property
    def macs_per_s(self) -> float | None:
        """Achieved multiply-accumulates per second (``None`` for a row without MACs)."""
        return self.macs / (self.time_ms / 1e3) if self.macs and self.time_ms > 0 else None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "name": self.name,
            "kind": self.kind,
            "ops": self.ops,
            "time_ms": self.time_ms,
            "share": self.share,
            "macs": self.macs,
            "macs_per_s": self.macs_per_s,
            "bytes": self.bytes,
            "kernels": self.kernels,
        }


@dataclass
class EngineProfile:
    """Per-layer engine time of one artifact at one batch size and thread count.

    ``layers`` are sorted by time, slowest first. ``engine_run_ms`` is the engine's own
    median time of a profiled run; ``latency_ms_median`` / ``latency_ms_p90`` time the same
    artifact in an unprofiled session, interleaved with the profiled runs.
    """

    name: str
    engine: str
    batch_size: int
    threads: int | None
    runs: int
    layers: list[LayerTime]
    engine_run_ms: float
    latency_ms_median: float
    latency_ms_p90: float
    artifact_bytes: int | None = None

    @property
    def layers_ms(self) -> float:
        """Sum of the per-layer times (every row, mapped or not)."""
        return sum(layer.time_ms for layer in self.layers)

    @property
    def mapped_ms(self) -> float:
        """Time of the rows mapped to a named module."""
        return sum(layer.time_ms for layer in self.layers if layer.kind == "module")

    @property
    def coverage(self) -> float:
        """Fraction of ``layers_ms`` mapped to named modules."""
        return self.mapped_ms / self.layers_ms if self.layers_ms else 0.0

    def totals(self) -> dict[str, Any]:
        """The sums, the end-to-end latencies they are compared with, and their ratios."""
        return {
            "layers_ms": self.layers_ms,
            "mapped_ms": self.mapped_ms,
            "coverage": self.coverage,
            "engine_run_ms": self.engine_run_ms,
            "layers_over_engine_run": _ratio(self.layers_ms, self.engine_run_ms),
            "layers_over_latency": _ratio(self.layers_ms, self.latency_ms_median),
            "profiled_runs": self.runs,
        }

    def times_by_layer(self) -> dict[str, float]:
        """Each row's median time per run (ms) by its name (what a run report plots)."""
        return {layer.name: layer.time_ms for layer in self.layers}

    def measurement(self) -> Measurement:
        """A ``Measurement``: the unprofiled latency and artifact size, with the totals and
        every row in ``extra``."""
        return Measurement(
            name=self.name,
            bytes=self.artifact_bytes,
            latency_ms_median=self.latency_ms_median,
            latency_ms_p90=self.latency_ms_p90,
            engine=self.engine,
            batch_size=self.batch_size,
            threads=self.threads,
            extra={
                **self.totals(),
                "layers": [layer.to_dict() for layer in self.layers],
            },
        )

    def table(self, top: int = 15) -> str:
        """The ``top`` slowest rows as text, then the totals."""
        from mobiledl.profile.table import format_engine_table

        return format_engine_table(self, top)


class ModuleIndex:
    """The modules kernels are mapped onto: a model's, or without one the names as given."""

    def __init__(self, model: nn.Module | None = None) -> None:
        self.modules: dict[str, nn.Module] | None = None
        self.params: list[str] = []
        self.containers: set[str] = set()
        if model is not None:
            self.modules = dict(model.named_modules())
            self.params = sorted(
                (name for name, _ in model.named_parameters(remove_duplicate=False)),
                key=len,
                reverse=True,
            )
            self.containers = _containers(model)

    def resolve(self, origin: NodeOrigin | None) -> str | None:
        """The qualified name of ``origin``'s module (``""``: the model itself), or ``None``."""
        if origin is None:
            return None
        for resolved in (self._by_weights(origin.weights), self._by_scope(origin.scope)):
            if resolved is not None:
                return resolved
        return self._by_region(origin.region)

    def _by_weights(self, names: Iterable[str]) -> str | None:
        for name in names:
            param = self._parameter(name)
            if param is not None:
                return param.rpartition(".")[0]
        return None

    def _parameter(self, tensor: str) -> str | None:
        """The parameter a tensor is named after (itself, or with a ``_suffix``)."""
        if self.modules is None:
            match = _PARAMETER_NAME.match(tensor)
            return match.group("param") if match else None
        for param in self.params:  # longest first
            if tensor == param or tensor.startswith(f"{param}_"):
                return param
        return None

    def _by_scope(self, scope: tuple[str, ...] | None) -> str | None:
        if scope is None:
            return None
        qualname = ""
        for component in scope:
            qualname = self._child(qualname, component)
            if qualname is None:
                return None
        return qualname

    def _child(self, parent: str, component: str) -> str | None:
        """The module ``component`` (a scope name) names below ``parent``."""
        candidate = _join_scope(parent, component)
        if self.modules is None or candidate in self.modules:
            return candidate
        base, _, counter = component.rpartition("_")  # the exporter's repeat suffix
        if base and counter.isdigit():
            candidate = _join_scope(parent, base)
            if candidate in self.modules:
                return candidate
        return None

    def _by_region(self, region: Sequence[NodeOrigin]) -> str | None:
        found = [self.resolve(NodeOrigin(o.scope, o.weights)) for o in region]
        names = [name for name in found if name is not None]
        if not names:
            return None
        common = _common_ancestor(names)
        while common and common in self.containers:
            common = common.rpartition(".")[0]
        return common


def attribute(kernels: Sequence[KernelTime], index: ModuleIndex) -> list[LayerTime]:
    """Group ``kernels`` into rows by module (unmapped ones by operator), slowest first."""
    groups: dict[tuple[str, str], list[KernelTime]] = {}
    for kernel in kernels:
        module = index.resolve(kernel.origin)
        if module is None:
            key = ("unmapped", f"(unmapped: {kernel.op})")
        else:
            key = ("module", module) if module else ("model", MODEL_ROW)
        groups.setdefault(key, []).append(kernel)
    rows = [_row(kind, name, members) for (kind, name), members in groups.items()]
    total = sum(row.time_ms for row in rows)
    for row in rows:
        row.share = row.time_ms / total if total else 0.0
    return sorted(rows, key=lambda row: row.time_ms, reverse=True)


def _row(kind: str, name: str, kernels: list[KernelTime]) -> LayerTime:
    per_run = [sum(run) for run in zip(*(k.times_ms for k in kernels), strict=True)]
    return LayerTime(
        name=name,
        kind=kind,
        ops=list(dict.fromkeys(k.op for k in kernels)),
        kernels=[k.name for k in kernels],
        time_ms=statistics.median(per_run),
        share=0.0,
        macs=sum(k.macs for k in kernels),
        bytes=sum(k.bytes for k in kernels),
    )


def _join_scope(parent: str, component: str) -> str:
    """``features`` + ``features.1`` -> ``features.1``; ``features.1`` + ``conv1`` ->
    ``features.1.conv1`` (the exporter's scope name of a numbered child repeats its parent's
    attribute name)."""
    if not parent:
        return component
    head, *numbers = component.split(".")
    atoms = parent.split(".")
    if numbers and all(n.isdigit() for n in numbers) and atoms[-1] == head:
        return ".".join([*atoms[:-1], component])
    return f"{parent}.{component}"


def _common_ancestor(names: Sequence[str]) -> str:
    """The longest common dotted prefix of module names (``""``: the root)."""
    split = [name.split(".") if name else [] for name in names]
    common: list[str] = []
    for atoms in zip(*split, strict=False):
        if any(atom != atoms[0] for atom in atoms):
            break
        common.append(atoms[0])
    return ".".join(common)


def _containers(model: nn.Module) -> set[str]:
    """Modules that run no op of their own; a ``GraphModule``'s by its layers' original
    classes (its intermediate modules are bare ``nn.Module``s)."""
    classes = {name: type(module) for name, module in model.named_modules()}
    if isinstance(model, fx.GraphModule):
        for node in model.graph.nodes:
            for qualname, cls in node.meta.get("nn_module_stack", {}).values():
                if isinstance(cls, type):
                    classes[qualname] = cls
    return {
        name
        for name, cls in classes.items()
        if name and (cls is nn.Module or issubclass(cls, CONTAINERS))
    }


def _ratio(part: float, whole: float) -> float | None:
    return part / whole if whole else None
