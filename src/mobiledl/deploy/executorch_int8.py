"""Our int8 in ExecuTorch: a lowered quantized model rewritten into the PT2E form that
XNNPACK's partitioner delegates as int8 kernels, with mobiledl's own scales and zero points.

A quantized model lowers to fixed quantize-dequantize steps (``mobiledl.deploy.lowering``), which
``torch.export`` records as ``aten.fake_quantize_per_tensor_affine`` (activations) and
``aten.fake_quantize_per_channel_affine`` (weights) with the scale and zero point as buffers.
ExecuTorch's XNNPACK partitioner recognises quantized layers by the ops PT2E's ``convert_pt2e``
leaves (docs: "XNNPACK Backend", quantization; ``backends/xnnpack/partition/config``): a
``quantized_decomposed.dequantize_per_*`` feeding each operand and a ``quantize_per_tensor`` on
the output, with the weight a constant int8 tensor. ``to_pt2e_int8`` rewrites the exported graph
into that form:

- a fake quantization of a constant (a weight) becomes its int8 codes, stored as a buffer, and
  a ``dequantize_per_channel`` / ``dequantize_per_tensor`` of them; where the layer's output is
  not quantized (the float logits of the last layer), XNNPACK has no int8 kernel for it, so the
  weight becomes its dequantized float values instead (the same numbers, run in fp32);
- a fake quantization of an activation becomes a ``quantize_per_tensor`` /
  ``dequantize_per_tensor`` pair with the same scale and zero point.

XNNPACK takes int8 activations, so an unsigned grid (codes 0..255, zero point ``z``) is written
as the signed grid with codes -128..127 and zero point ``z - 128``: the same real values.

``torch.export`` with a dynamic batch needs a shape function for the kernel behind
``fake_quantize_per_tensor_affine``, which PyTorch 2.13 lacks
(``aten::_fake_quantize_per_tensor_affine_cachemask_tensor_qparams`` has no Meta kernel); this
module registers one (outputs shaped like the input) if none is registered.
"""

from __future__ import annotations

import torch
from torch import fx

_aten = torch.ops.aten
_qd = torch.ops.quantized_decomposed
_FAKE_QUANTIZE = {
    _aten.fake_quantize_per_tensor_affine.tensor_qparams,
    _aten.fake_quantize_per_tensor_affine.default,
    _aten.fake_quantize_per_channel_affine.default,
}
_ACTIVATIONS = {_aten.relu.default, _aten.relu_.default, _aten.hardtanh.default}
#: Shift of an unsigned 8-bit grid onto the signed one.
_UNSIGNED_SHIFT = 128
_NOT_CONSTANT = object()
_CACHEMASK = "aten::_fake_quantize_per_tensor_affine_cachemask_tensor_qparams"


def _cachemask_meta(
    x: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    enabled: torch.Tensor,
    qmin: int,
    qmax: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Shapes of the fake quantization kernel: the output and its clipping mask."""
    return torch.empty_like(x), torch.empty_like(x, dtype=torch.bool)


_LIBRARY = torch.library.Library("aten", "IMPL")  # noqa: TID251 (kept alive: it holds the kernel)
if not torch._C._dispatch_has_kernel_for_dispatch_key(_CACHEMASK, "Meta"):
    _LIBRARY.impl(_CACHEMASK.removeprefix("aten::"), _cachemask_meta, "Meta")


def to_pt2e_int8(module: fx.GraphModule) -> fx.GraphModule:
    """``module`` (an unlifted ``ExportedProgram.module()``) with every fake quantization
    rewritten as described in the module docstring; the graph is changed in place."""
    constants = _Constants(module)
    for node in list(module.graph.nodes):
        if _is_fake_quantize(node):
            _rewrite(module, node, constants)
    module.graph.eliminate_dead_code()
    module.recompile()
    return module


class _Constants:
    """Values of graph nodes computed from buffers and parameters alone (memoized)."""

    def __init__(self, module: fx.GraphModule) -> None:
        self.module = module
        self.values: dict[fx.Node, object] = {}

    def value(self, node: object) -> object:
        """The node's value, the argument itself if it is not a node, or ``_NOT_CONSTANT``."""
        if not isinstance(node, fx.Node):
            return node
        if node not in self.values:
            self.values[node] = self._compute(node)
        return self.values[node]

    def _compute(self, node: fx.Node) -> object:
        if node.op == "get_attr":
            return _attribute(self.module, str(node.target))
        if node.op != "call_function":
            return _NOT_CONSTANT
        args = [self.value(arg) for arg in node.args]
        kwargs = {key: self.value(arg) for key, arg in node.kwargs.items()}
        if any(value is _NOT_CONSTANT for value in [*args, *kwargs.values()]):
            return _NOT_CONSTANT
        with torch.no_grad():
            return node.target(*args, **kwargs)


def _attribute(module: torch.nn.Module, target: str) -> object:
    value: object = module
    for part in target.split("."):
        value = getattr(value, part)
    return value


def _rewrite(module: fx.GraphModule, node: fx.Node, constants: _Constants) -> None:
    """Replace one fake quantization (see the module docstring)."""
    per_channel = node.target == _aten.fake_quantize_per_channel_affine.default
    source, scale_arg, zero_arg = node.args[:3]
    axis = int(node.args[3]) if per_channel else None
    qmin, qmax = (int(v) for v in node.args[-2:])
    scale, zero_point = constants.value(scale_arg), constants.value(zero_arg)
    if _NOT_CONSTANT in (scale, zero_point):
        return
    scale = torch.as_tensor(scale).float().reshape(-1)
    zero_point = torch.as_tensor(zero_point).reshape(-1).to(torch.int64)
    if qmin >= 0:
        qmin, qmax, zero_point = (
            qmin - _UNSIGNED_SHIFT,
            qmax - _UNSIGNED_SHIFT,
            zero_point - _UNSIGNED_SHIFT,
        )
    grid = _Grid(scale, zero_point, axis, qmin, qmax)
    weight = constants.value(source)
    graph = module.graph
    with graph.inserting_before(node):
        if isinstance(weight, torch.Tensor) and not _feeds_quantized_output(node):
            replacement = _buffer(module, node.name + "_float", constants.value(node))
        elif isinstance(weight, torch.Tensor):
            codes = _buffer(module, node.name + "_int8", grid.quantize(weight))
            replacement = grid.dequantize(module, node.name, codes)
        else:
            replacement = grid.dequantize(module, node.name, grid.quantize_node(module, node))
    node.replace_all_uses_with(replacement)
    graph.erase_node(node)


def _feeds_quantized_output(weight: fx.Node) -> bool:
    """Whether every layer using ``weight`` has its output fake-quantized, directly or after
    one ReLU-like activation."""
    return all(
        any(_is_fake_quantize(out) for out in _through_activation(layer)) for layer in weight.users
    )


def _through_activation(layer: fx.Node) -> list[fx.Node]:
    """The users of ``layer``, and of a sole ReLU / ReLU6 / hardtanh that follows it."""
    users = list(layer.users)
    if len(users) == 1 and users[0].target in _ACTIVATIONS:
        return list(users[0].users)
    return users


def _is_fake_quantize(node: fx.Node) -> bool:
    return node.op == "call_function" and node.target in _FAKE_QUANTIZE


class _Grid:
    """One int8 grid: scale and zero point per tensor (``axis`` None) or per channel."""

    def __init__(
        self,
        scale: torch.Tensor,
        zero_point: torch.Tensor,
        axis: int | None,
        qmin: int,
        qmax: int,
    ) -> None:
        self.scale, self.zero_point, self.axis = scale, zero_point, axis
        self.qmin, self.qmax = qmin, qmax

    def _qparams(self, module: fx.GraphModule, name: str) -> tuple[object, object]:
        """Per-tensor: Python scalars; per-channel: ``get_attr`` nodes of new buffers."""
        if self.axis is None:
            return float(self.scale[0]), int(self.zero_point[0])
        return (
            _buffer(module, name + "_scale", self.scale),
            _buffer(module, name + "_zero_point", self.zero_point),
        )

    def quantize(self, value: torch.Tensor) -> torch.Tensor:
        """The int8 codes of a constant."""
        with torch.no_grad():
            if self.axis is None:
                return _qd.quantize_per_tensor.default(
                    value,
                    float(self.scale[0]),
                    int(self.zero_point[0]),
                    self.qmin,
                    self.qmax,
                    torch.int8,
                )
            return _qd.quantize_per_channel.default(
                value, self.scale, self.zero_point, self.axis, self.qmin, self.qmax, torch.int8
            )

    def quantize_node(self, module: fx.GraphModule, node: fx.Node) -> fx.Node:
        """A ``quantize_per_*`` node of the fake quantization's input."""
        scale, zero_point = self._qparams(module, node.name + "_q")
        source = node.args[0]
        if self.axis is None:
            args = (source, scale, zero_point, self.qmin, self.qmax, torch.int8)
            return module.graph.call_function(_qd.quantize_per_tensor.default, args)
        args = (source, scale, zero_point, self.axis, self.qmin, self.qmax, torch.int8)
        return module.graph.call_function(_qd.quantize_per_channel.default, args)

    def dequantize(self, module: fx.GraphModule, name: str, codes: fx.Node) -> fx.Node:
        """A ``dequantize_per_*`` node of int8 ``codes``."""
        scale, zero_point = self._qparams(module, name + "_dq")
        if self.axis is None:
            args = (codes, scale, zero_point, self.qmin, self.qmax, torch.int8)
            return module.graph.call_function(_qd.dequantize_per_tensor.default, args)
        args = (codes, scale, zero_point, self.axis, self.qmin, self.qmax, torch.int8)
        return module.graph.call_function(_qd.dequantize_per_channel.default, args)


def _buffer(module: fx.GraphModule, name: str, value: torch.Tensor) -> fx.Node:
    """Register ``value`` as a buffer of ``module`` and return a ``get_attr`` node of it."""
    module.register_buffer(name, value.detach().clone())
    return module.graph.get_attr(name)
