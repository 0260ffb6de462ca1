"""Profile a model on one example input: params, MACs, pooling ops, weight bytes, peak memory.

The model runs once in eval mode under ``torch.no_grad()`` inside a ``TorchDispatchMode``
that sees every ATen op (so functional code such as ``torch.matmul``, ``F.conv2d`` and
``x @ w`` is counted like ``nn`` layers). Module forward hooks keep a stack of running
modules; each op is charged to the innermost module running it — a leaf layer, or the
custom module whose own ``forward`` does the op (e.g. a matmul between two sub-layers).

Counts are for the example input as given, batch included: a tensor, a tuple of tensors
(positional arguments) or a dict of tensors (keyword arguments), of any dtype (token ids
are int64). See ``ops`` for what counts as a MAC or a pooling operation and ``memory`` for
the peak-memory definition. A sparse convolution (``apps.pointcloud.SparseConv3d``) is the
exception: its matrix products run over padded gathers, so its MACs are the pairs of its
actual kernel map times ``C_in x C_out`` (``SparseConv3d.macs``), not the ops it dispatches.

``bytes`` is the size of the *parameters* at ``bits`` bits, ``ceil(params * bits / 8)``.
Buffers (batch-norm running statistics, counters) are not weights: at deployment batch norm
is folded into the preceding convolution, so they do not ship as separate tensors.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from mobiledl.apps.pointcloud.conv import SparseConv3d
from mobiledl.core.inputs import Inputs, call_model, check_inputs, input_tensors
from mobiledl.errors import UserError
from mobiledl.profile.measurement import Measurement
from mobiledl.profile.memory import LifetimeTracker
from mobiledl.profile.ops import op_cost
from mobiledl.resources import check_activation_memory
from mobiledl.validate import expect_module


@dataclass
class LayerProfile:
    """One layer: a leaf module, or a module whose own ``forward`` does counted ops.

    ``params`` are the module's own parameters plus those of sub-modules that never ran
    (e.g. ``nn.MultiheadAttention.out_proj``, used through its weight). ``macs`` and
    ``pool_ops`` add up over every call of a shared module; ``output_shape`` is that of
    the first call (of the first tensor for multi-output modules).
    """

    name: str
    type: str
    output_shape: tuple[int, ...] | None
    params: int = 0
    macs: int = 0
    pool_ops: int = 0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        shape = None if self.output_shape is None else list(self.output_shape)
        return {
            "name": self.name,
            "type": self.type,
            "output_shape": shape,
            "params": self.params,
            "macs": self.macs,
            "pool_ops": self.pool_ops,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LayerProfile:
        """The layer a ``to_dict`` describes."""
        shape = data.get("output_shape")
        return cls(
            name=str(data["name"]),
            type=str(data["type"]),
            output_shape=None if shape is None else tuple(int(d) for d in shape),
            params=int(data.get("params", 0)),
            macs=int(data.get("macs", 0)),
            pool_ops=int(data.get("pool_ops", 0)),
        )


@dataclass
class ModelProfile:
    """Per-layer and total cost of one model on one example input.

    ``layers`` are in order of first call (a parent module before its children).
    ``macs`` counts convolutions, linear layers, matrix products and attention;
    ``pool_ops`` counts pooling apart (fvcore and torchprofile disagree on pooling, and
    ``macs`` agrees with both). ``bytes`` is the weight size at ``bits`` bits;
    ``peak_memory_bytes`` the peak activation memory at ``bits``-bit activations, reached
    while ``peak_memory_layer`` runs (``"input"`` if before the first op).
    """

    layers: list[LayerProfile]
    params: int
    macs: int
    pool_ops: int
    bytes: int
    peak_memory_bytes: int
    peak_memory_layer: str
    bits: int
    input_shape: list[tuple[int, ...]] = field(default_factory=list)

    def measurement(self, name: str = "model") -> Measurement:
        """These numbers as a ``Measurement`` row. The weight bytes at ``bits`` are a count,
        not a file: they go to ``extra["weight_bytes"]`` (``Measurement.bytes`` is the size of
        an exported artifact)."""
        return Measurement(
            name=name,
            params=self.params,
            macs=self.macs,
            peak_memory_bytes=self.peak_memory_bytes,
            extra={
                "pool_ops": self.pool_ops,
                "precision_bits": self.bits,
                "weight_bytes": self.bytes,
            },
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict with every total and the list of layers."""
        return {
            "params": self.params,
            "macs": self.macs,
            "pool_ops": self.pool_ops,
            "bytes": self.bytes,
            "peak_memory_bytes": self.peak_memory_bytes,
            "peak_memory_layer": self.peak_memory_layer,
            "bits": self.bits,
            "input_shape": [list(shape) for shape in self.input_shape],
            "layers": [layer.to_dict() for layer in self.layers],
        }

    def table(self) -> str:
        """A per-layer text table (name, type, output shape, params, MACs, % of MACs)."""
        from mobiledl.profile.table import format_table

        return format_table(self)


def count_params(model: nn.Module) -> int:
    """Number of parameter elements (shared parameters once; buffers excluded)."""
    return sum(p.numel() for p in model.parameters())


def weight_bytes(params: int, bits: int) -> int:
    """Bytes of ``params`` weights at ``bits`` bits each, rounded up to whole bytes."""
    return math.ceil(params * bits / 8)


def count_macs(model: nn.Module, example_input: Inputs) -> int:
    """Total MACs of one forward pass on ``example_input`` (see ``profile_model``)."""
    return profile_model(model, example_input).macs


def peak_activation_memory(model: nn.Module, example_input: Inputs, bits: int = 32) -> int:
    """Peak activation bytes of one forward pass at ``bits``-bit activations."""
    return profile_model(model, example_input, bits).peak_memory_bytes


def profile_model(model: nn.Module, example_input: Inputs, bits: int = 32) -> ModelProfile:
    """Run ``model`` once on ``example_input`` and measure it.

    The model runs in eval mode under ``torch.no_grad()``; every module's training flag is
    restored afterwards. Raises ``UserError`` if ``bits`` is not a positive int, the input
    is not a tensor (or a tuple or dict of tensors), or the model fails on the input.
    """
    if not isinstance(bits, int) or isinstance(bits, bool) or bits < 1:
        raise UserError(f"bits must be a positive integer; got {bits!r}")
    expect_module(model, "profile_model")
    check_inputs(example_input, "example input")
    tensors = input_tensors(example_input)
    check_activation_memory(model, tuple(tensors), "this input")
    recorder = _Recorder(model, bits)
    with _eval_mode(model), recorder.hooks(), _no_mha_fastpath(), torch.no_grad():
        recorder.tracker.add_inputs(tensors)
        try:
            with _OpMode(recorder):
                output = call_model(model, example_input)
        except _ProfilerBug:
            raise
        except Exception as exc:
            raise UserError(_failure_message(exc, tensors)) from exc
        recorder.tracker.add_outputs(_tensors(output))
    return recorder.result(tensors)


class _ProfilerBug(RuntimeError):
    """The profiler itself failed on an op (a bug, not the user's model)."""


class _Recorder:
    """Collects per-module costs and activation lifetimes while the model runs."""

    def __init__(self, model: nn.Module, bits: int) -> None:
        self.model = model
        self.bits = bits
        self.tracker = LifetimeTracker(bits, _weights(model))
        self.stack: list[str] = []
        self.layers: dict[str, LayerProfile] = {}  # in order of first call
        self.step_owner: list[str] = []
        #: Modules that count their own MACs (see the module docstring).
        self.self_counted = {
            name for name, module in model.named_modules() if isinstance(module, SparseConv3d)
        }

    @contextlib.contextmanager
    def hooks(self) -> Iterator[None]:
        """Forward pre/post hooks on every module maintaining the stack of running modules."""
        handles = []
        for name, module in self.model.named_modules():
            handles.append(module.register_forward_pre_hook(self._enter(name)))
            handles.append(module.register_forward_hook(self._exit(name), always_call=True))
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def _enter(self, name: str) -> Any:
        def hook(module: nn.Module, args: Any) -> None:
            self.stack.append(name)
            if name not in self.layers:
                self.layers[name] = LayerProfile(name, type(module).__name__, None)

        return hook

    def _exit(self, name: str) -> Any:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            if self.stack and self.stack[-1] == name:
                self.stack.pop()
            layer = self.layers[name]
            if isinstance(module, SparseConv3d):
                layer.macs += module.macs(args[0])
            if layer.output_shape is None:
                tensors = _tensors(output)
                layer.output_shape = tuple(tensors[0].shape) if tensors else None

        return hook

    def on_op(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
        """Charge one ATen op to the innermost running module and track its tensors."""
        owner = self.stack[-1] if self.stack else ""
        macs, pool_ops = (0, 0) if owner in self.self_counted else op_cost(func, args, out)
        if macs or pool_ops:
            layer = self.layers.setdefault(
                owner, LayerProfile(owner, type(self.model).__name__, None)
            )
            layer.macs += macs
            layer.pool_ops += pool_ops
        self.tracker.on_op(_tensors((args, kwargs)), _tensors(out))
        self.step_owner.append(owner)

    def result(self, inputs: list[torch.Tensor]) -> ModelProfile:
        """The finished profile."""
        layers = self._listed_layers()
        params = count_params(self.model)
        timeline = self.tracker.timeline()
        peak_step = max(range(len(timeline)), key=timeline.__getitem__)
        peak_layer = "input" if peak_step == 0 else self.step_owner[peak_step - 1]
        return ModelProfile(
            layers=layers,
            params=params,
            macs=sum(layer.macs for layer in layers),
            pool_ops=sum(layer.pool_ops for layer in layers),
            bytes=weight_bytes(params, self.bits),
            peak_memory_bytes=timeline[peak_step],
            peak_memory_layer=peak_layer,
            bits=self.bits,
            input_shape=[tuple(x.shape) for x in inputs],
        )

    def _listed_layers(self) -> list[LayerProfile]:
        """Executed modules that are leaves, do counted ops, or own parameters; with params."""
        modules = dict(self.model.named_modules())
        owners: dict[str, int] = {}
        seen: set[int] = set()
        for name, module in modules.items():
            for param in module.parameters(recurse=False):
                if id(param) not in seen:
                    seen.add(id(param))
                    owners[name] = owners.get(name, 0) + param.numel()
        listed = {
            name
            for name, layer in self.layers.items()
            if layer.macs or layer.pool_ops or owners.get(name) or _is_leaf(modules.get(name))
        }
        for name, count in owners.items():
            target = _nearest_listed(name, listed)
            if target is not None:
                self.layers[target].params += count
        return [layer for name, layer in self.layers.items() if name in listed]


class _OpMode(TorchDispatchMode):
    """Hands every ATen op, after it ran, to the recorder."""

    def __init__(self, recorder: _Recorder) -> None:
        super().__init__()
        self.recorder = recorder

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        """Keep ``__torch_dispatch__`` unwrapped: the wrapper imports ``torch._dynamo``
        (seconds of start-up) and adds per-op overhead; the profiler runs eager models."""
        return False

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        try:
            self.recorder.on_op(func, args, kwargs, out)
        except Exception as exc:
            raise _ProfilerBug(f"profiler failed on {func}: {exc}") from exc
        return out


def _is_leaf(module: nn.Module | None) -> bool:
    return module is not None and next(module.children(), None) is None


def _nearest_listed(name: str, listed: set[str]) -> str | None:
    """``name`` or its nearest ancestor among ``listed`` (``""`` is the root)."""
    while True:
        if name in listed:
            return name
        if not name:
            return None
        name = name.rpartition(".")[0]


def _tensors(value: Any) -> list[torch.Tensor]:
    """Every tensor in a nested structure of tuples, lists and dicts."""
    leaves, _ = tree_flatten(value)
    return [leaf for leaf in leaves if isinstance(leaf, torch.Tensor)]


def _weights(model: nn.Module) -> list[torch.Tensor]:
    return [*model.parameters(), *model.buffers()]


def _failure_message(exc: Exception, inputs: list[torch.Tensor]) -> str:
    """One line: the input shape(s) and the model's exception, shortened."""
    shapes = ", ".join(str(tuple(x.shape)) for x in inputs)
    lines = str(exc).strip().splitlines()
    detail = lines[0] if lines else ""
    if len(detail) > 200:
        detail = detail[:197] + "..."
    return f"model failed on example input of shape {shapes}: {type(exc).__name__}: {detail}"


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode for the duration; every module's own training flag restored after."""
    flags = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in flags:
            module.training = training


@contextlib.contextmanager
def _no_mha_fastpath() -> Iterator[None]:
    """Send attention layers down the composite path so its matmuls are visible ops."""
    enabled = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(enabled)
