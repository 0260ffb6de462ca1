"""Insert fake quantizers into a model's dataflow graph (shared by PTQ and QAT).

The placement mirrors what an integer engine executes (Jacob et al. 2018, Sec. 2.4):

- every ``Conv2d`` / ``Linear`` quantizes its (BatchNorm-folded) weight;
- the model input and the output of every value-changing op (conv, linear, add, mul,
  concat, average pooling, h-swish, ...) are quantized — once. An op followed only by a
  ReLU / ReLU6 is quantized after the activation instead, so an asymmetric grid starting
  at 0 makes the activation redundant and ONNX Runtime fuses conv + ReLU + requantize;
- ops that only move values (max-pool, flatten, reshape, chunk, ...) keep their input's
  grid: the same quantizer is applied after them (a no-op on values) so the exported graph
  shows the engine one quantized tensor per op;
- the model output (logits) stays float unless ``QuantConfig.quantize_output``.

The prepared model is a ``torch.fx.GraphModule`` whose layers keep their qualified names;
activation quantizers live in ``activation_quantizers`` keyed by graph-node name. Because
the pass is deterministic, ``load_model`` rebuilds the same structure from the recorded
config (transform ``"quantize"``) and loads the saved scales into it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import fx, nn

from mobiledl.compress.quantize.config import QuantConfig
from mobiledl.compress.quantize.fold import fold_batchnorm
from mobiledl.compress.quantize.graph import (
    annotate_shapes,
    is_float_tensor,
    is_identity,
    is_move,
    is_relu,
    is_tensor_tuple,
    is_weighted,
    sole_user,
    target_module,
)
from mobiledl.compress.quantize.observers import make_observer
from mobiledl.compress.quantize.quantizer import (
    FakeQuantize,
    fake_quantizers,
)
from mobiledl.errors import UserError
from mobiledl.models.checkpoint import record_transform, register_transform
from mobiledl.models.quantized import link_input_quantizer, quant_layer, set_submodule
from mobiledl.models.registry import example_input_for

TRANSFORM = "quantize"
ACT_QUANTIZERS = "activation_quantizers"


def prepare(
    model: nn.Module, config: QuantConfig, example_input: torch.Tensor | None = None
) -> fx.GraphModule:
    """A copy of ``model`` with BatchNorm folded and fake quantizers inserted.

    ``example_input`` (one batch) defaults to zeros of the zoo architecture's input shape.
    The quantizers pass values through until calibrated (``ptq.calibrate``).
    """
    if fake_quantizers(model):
        raise UserError(f"{type(model).__name__} is already quantized; start from the float model")
    example = example_input if example_input is not None else zoo_example_input(model)
    prepared = fold_batchnorm(model)
    annotate_shapes(prepared, example)
    _wrap_weighted_layers(prepared, config)
    _insert_activation_quantizers(prepared, config)
    link_layer_inputs(prepared)
    prepared.graph.lint()
    prepared.recompile()
    if getattr(prepared, "mobiledl_arch", None):
        record_transform(prepared, TRANSFORM, config.to_dict())
    return prepared


def rerecord_transform(prepared: nn.Module, config: QuantConfig) -> None:
    """Replace the record ``prepare`` appended by one of ``config`` (a zoo model's only)."""
    arch = getattr(prepared, "mobiledl_arch", None)
    if not arch:
        return
    prepared.mobiledl_arch = {**arch, "transforms": arch["transforms"][:-1]}
    record_transform(prepared, TRANSFORM, config.to_dict())


def zoo_example_input(model: nn.Module) -> torch.Tensor:
    """Zeros shaped like one input of a zoo model (from ``model.mobiledl_arch``)."""
    arch = getattr(model, "mobiledl_arch", None)
    if not arch:
        raise UserError(
            f"{type(model).__name__} was not built by create_model: pass an example input"
        )
    return example_input_for(arch, zeros=True)


def _wrap_weighted_layers(prepared: fx.GraphModule, config: QuantConfig) -> None:
    """Replace each called Conv2d / Linear by its quantized subclass (same parameters)."""
    weighted = {
        str(n.target): prepared.get_submodule(str(n.target))
        for n in prepared.graph.nodes
        if is_weighted(prepared, n)
    }
    config.check_rules_match(weighted, "quantizable layer")
    for node in prepared.graph.nodes:
        if not is_weighted(prepared, node):
            continue
        name = str(node.target)
        layer = prepared.get_submodule(name)
        spec = config.weight_spec(name, layer)
        observer = make_observer(config.weight_observer, 0 if spec.per_channel else None)
        quantizer = FakeQuantize(spec, observer, channels=layer.weight.shape[0])
        set_submodule(prepared, name, quant_layer(layer, quantizer))


def _insert_activation_quantizers(prepared: fx.GraphModule, config: QuantConfig) -> None:
    """Walk the graph in order, giving each float tensor a grid (see the module docstring)."""
    prepared.add_module(ACT_QUANTIZERS, nn.ModuleDict())
    grid: dict[fx.Node, str] = {}
    outputs = {n for n in prepared.graph.nodes if n.op == "output"}
    returned = {arg for node in outputs for arg in node.all_input_nodes}
    for node in list(prepared.graph.nodes):
        if node.op in ("output", "get_attr"):
            continue
        source = node.all_input_nodes[0] if node.all_input_nodes else None
        if is_tensor_tuple(node) or (node.op != "placeholder" and is_identity(prepared, node)):
            if source in grid:
                grid[node] = grid[source]
            continue
        if not is_float_tensor(node):
            continue
        if is_move(prepared, node) and source in grid:
            _attach(prepared, node, grid[source], grid, config, new=False)
        elif _quantize_after(prepared, node, returned, config):
            _attach(prepared, node, node.name, grid, config, new=True)


def _quantize_after(
    prepared: fx.GraphModule, node: fx.Node, returned: set[fx.Node], config: QuantConfig
) -> bool:
    """Whether ``node``'s output gets its own quantizer."""
    user = sole_user(node)
    if user is not None and is_relu(prepared, user) and is_float_tensor(user):
        return False  # quantized after the activation
    return config.quantize_output or node not in returned


def _attach(
    prepared: fx.GraphModule,
    node: fx.Node,
    key: str,
    grid: dict[fx.Node, str],
    config: QuantConfig,
    new: bool,
) -> None:
    """Insert a call of quantizer ``key`` after ``node`` and route its users through it.

    A shared quantizer (``new=False``) re-applies an existing grid and does not observe.
    """
    quantizers = prepared.get_submodule(ACT_QUANTIZERS)
    if new:
        quantizers[key] = FakeQuantize(config.act_spec(), make_observer(config.observer))
    kwargs: dict[str, Any] = {} if new else {"observe": False}
    with prepared.graph.inserting_after(node):
        call = prepared.graph.call_module(f"{ACT_QUANTIZERS}.{key}", (node,), kwargs)
    node.replace_all_uses_with(call, delete_user_cb=lambda user: user is not call)
    call.meta = dict(node.meta)
    grid[node] = grid[call] = key


def link_layer_inputs(prepared: fx.GraphModule) -> None:
    """Tell each quantized layer fed directly by an activation quantizer which one it is."""
    for node in prepared.graph.nodes:
        if not is_weighted(prepared, node) or not isinstance(node.args[0], fx.Node):
            continue
        source = target_module(prepared, node.args[0])
        if isinstance(source, FakeQuantize):
            link_input_quantizer(prepared.get_submodule(str(node.target)), source)


def activation_quantizers(prepared: nn.Module) -> dict[str, FakeQuantize]:
    """The activation quantizers of a prepared model by key (empty if none)."""
    if not hasattr(prepared, ACT_QUANTIZERS):
        return {}
    return dict(prepared.get_submodule(ACT_QUANTIZERS).items())


@register_transform(TRANSFORM)
def _rebuild(model: nn.Module, config: dict[str, Any]) -> nn.Module:
    """Re-create the quantized structure when ``load_model`` rebuilds a model.

    A saved quantized model was calibrated, so its quantizers are switched on; the saved
    scales and zero points arrive with the state dict.
    """
    prepared = prepare(model, QuantConfig.from_record(config))
    for quantizer in fake_quantizers(prepared).values():
        quantizer.enable()
    return prepared
