"""The dataflow graph quantization passes work on (``torch.fx``).

Quantization needs to see the model's dataflow — which convolution feeds which ReLU, where
a residual ``+`` sits — not only its modules. ``trace`` turns a module into a
``GraphModule`` that keeps the layers (same qualified names, so state dicts line up) and
exposes every functional op as a node. Quantized layers and fake quantizers stay leaves.
"""

from __future__ import annotations

import operator
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from mobiledl.compress.quantize.quantizer import FakeQuantize
from mobiledl.errors import UserError
from mobiledl.models.quantized import QuantConv2d, QuantLinear

# Layers with a weight to quantize.
WEIGHTED = (nn.Conv2d, nn.Linear)
# Activations that a quantizer right after them makes redundant when the grid starts at
# 0 (ONNX Runtime then fuses conv + activation + requantization into one integer kernel).
RELU_FUNCTIONS = (F.relu, torch.relu, F.relu6)
# Ops that move or select values without changing them: their output lies on the input's
# grid. Identity-like ones vanish in the exported graph.
MOVE_MODULES = (nn.MaxPool2d, nn.MaxPool1d, nn.Flatten, nn.Unflatten, nn.ChannelShuffle)
MOVE_FUNCTIONS = (
    torch.flatten,
    torch.reshape,
    torch.transpose,
    torch.permute,
    torch.squeeze,
    torch.unsqueeze,
    torch.chunk,
    torch.split,
    F.max_pool2d,
    F.max_pool1d,
    operator.getitem,
)
MOVE_METHODS = (
    "view",
    "reshape",
    "flatten",
    "transpose",
    "permute",
    "squeeze",
    "unsqueeze",
    "chunk",
    "split",
)
IDENTITY_MODULES = (nn.Identity, nn.Dropout)
IDENTITY_METHODS = ("contiguous", "clone", "detach")


class _Tracer(fx.Tracer):
    """fx tracer that keeps quantized layers and fake quantizers as leaf modules."""

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        if isinstance(module, FakeQuantize | QuantConv2d | QuantLinear):
            return True
        return super().is_leaf_module(module, qualified_name)


def trace(model: nn.Module) -> fx.GraphModule:
    """A ``GraphModule`` of ``model`` (eval-mode control flow); ``UserError`` if untraceable."""
    try:
        graph = _Tracer().trace(model)
    except Exception as error:  # fx raises many types for dynamic control flow
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(
            f"cannot trace {type(model).__name__} with torch.fx for quantization: {first[:160]}"
        ) from None
    traced = fx.GraphModule(model, graph, class_name=type(model).__name__)
    copy_arch(model, traced)
    return traced


def copy_arch(source: nn.Module, target: nn.Module) -> None:
    """Carry the zoo architecture record (``mobiledl_arch``) over to a rebuilt module."""
    arch = getattr(source, "mobiledl_arch", None)
    if arch is not None:
        target.mobiledl_arch = arch


def annotate_shapes(module: fx.GraphModule, example_input: torch.Tensor) -> None:
    """Run ``example_input`` through the graph, storing each node's output metadata."""
    was_training = module.training
    module.eval()
    with torch.no_grad():
        ShapeProp(module).propagate(example_input)
    module.train(was_training)


def is_float_tensor(node: fx.Node) -> bool:
    """True if the node (after ``annotate_shapes``) produced one floating-point tensor."""
    meta = node.meta.get("tensor_meta")
    return hasattr(meta, "dtype") and meta.dtype.is_floating_point


def is_tensor_tuple(node: fx.Node) -> bool:
    """True if the node produced a tuple or list of tensors (``chunk``, ``split``)."""
    meta = node.meta.get("tensor_meta")
    return isinstance(meta, tuple | list) and all(hasattr(m, "dtype") for m in meta)


def target_module(module: fx.GraphModule, node: fx.Node) -> nn.Module | None:
    """The submodule a ``call_module`` node calls, else ``None``."""
    if node.op != "call_module":
        return None
    return module.get_submodule(str(node.target))


def is_weighted(module: fx.GraphModule, node: fx.Node) -> bool:
    return isinstance(target_module(module, node), WEIGHTED)


def relu_function(module: fx.GraphModule, node: fx.Node) -> Callable[[Tensor], Tensor] | None:
    """``F.relu`` or ``F.relu6`` if the node applies ReLU / ReLU6 (module, function or
    tensor method), else ``None``."""
    if node.op == "call_module":
        layer = target_module(module, node)
        if isinstance(layer, nn.ReLU6):
            return F.relu6
        return F.relu if isinstance(layer, nn.ReLU) else None
    if node.op == "call_function" and node.target in RELU_FUNCTIONS:
        return F.relu6 if node.target is F.relu6 else F.relu
    if node.op == "call_method" and node.target in ("relu", "relu6"):
        return F.relu6 if node.target == "relu6" else F.relu
    return None


def is_relu(module: fx.GraphModule, node: fx.Node) -> bool:
    """ReLU or ReLU6, as a module, a function or a tensor method."""
    return relu_function(module, node) is not None


def is_identity(module: fx.GraphModule, node: fx.Node) -> bool:
    """Ops that vanish in eval mode and in the exported graph."""
    if node.op == "call_module":
        return isinstance(target_module(module, node), IDENTITY_MODULES)
    return node.op == "call_method" and node.target in IDENTITY_METHODS


def is_move(module: fx.GraphModule, node: fx.Node) -> bool:
    """Ops whose output values are a selection or rearrangement of their input's."""
    if node.op == "call_module":
        return isinstance(target_module(module, node), MOVE_MODULES)
    if node.op == "call_function":
        return node.target in MOVE_FUNCTIONS
    return node.op == "call_method" and node.target in MOVE_METHODS


def sole_user(node: fx.Node) -> fx.Node | None:
    """The only node using ``node``'s output, if there is exactly one."""
    users = list(node.users)
    return users[0] if len(users) == 1 else None
