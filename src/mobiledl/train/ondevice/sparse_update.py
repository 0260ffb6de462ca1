"""Sparse update under a memory budget (Lin et al. 2022, MCUNetV3, "On-Device Training Under
256KB Memory", Sec. 3).

1. **Quantized graph.** Batch norms are folded into their convolutions and every convolution and
   linear layer becomes a ``QuantizedConv2d`` / ``QuantizedLinear``, the quantized layer family
   of ``mobiledl.models.quantized`` (which PTQ and QAT use too) with sparse update's extras: a
   frozen weight stored as int8 with a per-output-channel scale (or fp32 with ``int8=False``),
   an fp32 bias, a ReLU/ReLU6 applied in place, and an optional trainable copy of its first ``k``
   output channels.
2. **Quantization-aware scaling (QAS).** A trainable int8-domain weight ``W̄ = W / s`` gets the
   gradient ``s * dL/dW``, so its weight-to-gradient norm ratio is ``s^-2`` times that of the
   fp32 weight and SGD barely moves it. QAS multiplies the gradient by ``s^-2`` (Lin et al. 2022,
   Eq. 2), which makes a step on ``W̄`` the step fp32 SGD would take on ``W``. Biases are kept in
   fp32 real units, so they need no scaling.
3. **Contribution analysis.** Each candidate update is fine-tuned briefly (with the classifier)
   from the same start and its validation-accuracy gain over classifier-only training measured:
   the biases of the last ``d`` layers for several depths ``d``, and the weights of a few layers
   spread over the depth (the last one always among them) at several channel ratios (the first
   ``ratio * C_out`` output channels).
4. **Selection under the budget.** Starting from classifier-only training, the candidate with the
   largest accuracy gain per byte of predicted training peak (``mobiledl.train.ondevice.memory``,
   which accounts for the saved inputs, gradients and optimizer state it adds) is added while the
   peak stays within the budget (MCUNetV3 searches this knapsack evolutionarily; greedy by gain
   per byte is its usual approximation).

The quantized structure and the update's channel counts are recorded as the ``sparse_update``
model transform, so an adapted model reloads with ``mobiledl.models.load_model``.
"""

from __future__ import annotations

import abc
import copy
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from mobiledl.core.clone import clone_module
from mobiledl.core.config import MethodConfig
from mobiledl.core.task import TensorTask
from mobiledl.errors import UserError
from mobiledl.models.checkpoint import record_transform, register_transform
from mobiledl.models.quantized import (
    QuantConv2d,
    QuantizedLayer,
    QuantLinear,
    int8_codes,
    set_submodule,
)
from mobiledl.train.ondevice.finetune import FineTuneConfig, fine_tune
from mobiledl.train.ondevice.lean import BitMask, conv_input_grad, is_channels_last
from mobiledl.train.ondevice.memory import (
    ModuleMemory,
    TrainingTrace,
    clamp_bounds,
    trace_training,
)
from mobiledl.train.trainer import evaluate
from mobiledl.validate import check_int, check_number

TRANSFORM = "sparse_update"
Bounds = tuple[float, float | None]


@dataclass(frozen=True, kw_only=True)
class SparseUpdateConfig(MethodConfig):
    """Budget (bytes of predicted training peak), quantization, and the analysis' settings.

    ``headroom`` keeps the plan that much below the budget (the prediction is within a few
    percent of the measured peak). Probes train ``probe_steps`` steps at ``probe_lr``;
    ``candidate_layers`` weight layers spread over the depth are analysed.
    """

    memory_budget: int | None = None
    int8: bool = True
    qas: bool = True
    ratios: tuple[float, ...] = (0.25, 0.5, 1.0)
    candidate_layers: int = 6
    bias_depths: tuple[int, ...] = (2, 4, 8, 16, 32)
    probe_steps: int = 40
    probe_lr: float = 0.05
    batch_size: int = 32
    optimizer: str = "momentum"
    headroom: float = 0.03
    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.memory_budget is not None and self.memory_budget <= 0:
            raise UserError(f"memory budget must be > 0 bytes; got {self.memory_budget}")
        if not self.ratios or any(not 0 < r <= 1 for r in self.ratios):
            raise UserError(f"channel ratios must lie in (0, 1]; got {self.ratios}")
        if self.probe_steps < 1 or self.candidate_layers < 0:
            raise UserError("probe_steps must be >= 1 and candidate_layers >= 0")
        check_int(self.batch_size, "sparse batch_size", 1)
        check_number(self.probe_lr, "sparse probe_lr", 0.0)
        check_number(self.headroom, "sparse headroom", 0.0, 1.0, high_open=True)


# ---------------------------------------------------------------- quantized layers


class Clamp(nn.Module):
    """``clamp(x, low, high)``: a folded ReLU / ReLU6 in a lowered sparse-update layer."""

    def __init__(self, low: float, high: float | None) -> None:
        super().__init__()
        self.low, self.high = low, high

    def forward(self, x: Tensor) -> Tensor:
        return x.clamp(self.low, self.high)


class SparseUpdateLayer(QuantizedLayer):
    """A layer of the quantized family (``mobiledl.models.quantized``) with sparse update's
    extras: the frozen weight held as ``int8_codes`` (or fp32 with ``int8=False``) and no float
    ``weight``, an fp32 bias, an optional in-place clamp, ``update`` (a trainable copy of the
    first ``k`` output channels in the codes' units), QAS and a lean op with manual gradients."""

    def _store(self, weight: Tensor, bias: Tensor | None, int8: bool, qas: bool) -> None:
        """Replace the layer's float parameters by the frozen storage and the update."""
        weight = weight.detach()
        if int8:
            stored, scale = int8_codes(weight)
        else:
            scale, stored = torch.ones(weight.shape[0]), weight.clone()
        del self.weight
        self.register_buffer("weight_q", stored)
        self.register_buffer("scale", scale)
        out = weight.shape[0]
        self.bias = nn.Parameter(bias.detach().clone() if bias is not None else torch.zeros(out))
        self.update = nn.Parameter(stored[:0].float(), requires_grad=False)
        self.qas = qas and int8
        self.bounds: Bounds | None = None

    @property
    def update_channels(self) -> int:
        return self.update.shape[0]

    @property
    def channel_step(self) -> int:
        """Output channels per group: an update covers whole groups."""
        return 1

    def set_update_channels(self, channels: int) -> int:
        """Train the first ``channels`` output channels (rounded up to whole groups)."""
        step = self.channel_step
        channels = min(self.weight_q.shape[0], math.ceil(channels / step) * step)
        rows = self.weight_q[:channels].float().clone()
        self.update = nn.Parameter(rows, requires_grad=channels > 0)
        return channels

    def dequantized(self, update: Tensor) -> Tensor:
        """The fp32 weight: the update's rows, then the frozen ones, times the scales."""
        weight = torch.empty_like(self.weight_q, dtype=torch.float32)
        channels = update.shape[0]
        weight[:channels] = update
        weight[channels:] = self.weight_q[channels:]
        return weight.mul_(self.scale.view(-1, *[1] * (weight.dim() - 1)))

    def quantized_weight(self) -> Tensor:
        return self.dequantized(self.update)

    def forward(self, x: Tensor) -> Tensor:
        trains = self.update.requires_grad or self.bias.requires_grad or x.requires_grad
        if torch.is_grad_enabled() and trains:
            return _QuantizedOp.apply(x, self.update, self.bias, self)
        out = self.apply_weight(x, self.quantized_weight(), self.bias)
        return out if self.bounds is None else out.clamp_(*self.bounds)

    def update_grad(self, x: Tensor, grad: Tensor) -> Tensor:
        """Gradient of the ``update`` rows (with QAS: divided by their scale)."""
        channels = self.update_channels
        raw = self.weight_grad(x, grad[:, :channels])
        scale = self.scale[:channels].view(-1, *[1] * (raw.dim() - 1))
        return raw / scale if self.qas else raw * scale

    def memory_for_training(
        self, input_shape: tuple[int, ...], output_shape: tuple[int, ...]
    ) -> ModuleMemory:
        """Saved input (if the update trains), packed mask, and the fp32 weight in flight (with
        oneDNN's reordered copy of it)."""
        weight = 4 * self.weight_q.numel()
        out_numel = math.prod(output_shape)
        trains = self.update.requires_grad and self.update_channels > 0
        extra = math.ceil(out_numel / 8) if self.bounds is not None else 0
        copied = self.saved_input_numel(input_shape) if trains else 0
        masked = 4 * out_numel if self.bounds is not None else 0
        grad_rows = 4 * out_numel * self.update_channels // output_shape[1] if trains else 0
        return ModuleMemory(
            saves_input=trains and copied == 0,
            extra_saved=extra + 4 * copied,
            forward_workspace=2 * weight,
            backward_workspace=masked + 2 * weight + grad_rows + 8 * self.update.numel(),
        )

    def saved_input_numel(self, input_shape: tuple[int, ...]) -> int:
        """Elements of the input copied for the update's gradient (0: the input itself)."""
        return 0

    def weight_input(self, x: Tensor) -> Tensor:
        """The part of ``x`` the update's weight gradient needs."""
        return x

    @torch.no_grad()
    def lower(self, keep_quantization: bool = True) -> nn.Module:
        """The inference form (``mobiledl.deploy.lowering``): a plain layer holding the current
        fp32 weight (frozen rows dequantized, updated rows as trained), then the clamp."""
        layer = self.plain_layer()
        layer.weight = nn.Parameter(self.dequantized(self.update.detach()))
        layer.bias = nn.Parameter(self.bias.detach().clone())
        return layer if self.bounds is None else nn.Sequential(layer, Clamp(*self.bounds))

    @abc.abstractmethod
    def input_grad(self, input_shape: torch.Size, weight: Tensor, grad: Tensor) -> Tensor:
        """Gradient w.r.t. the input, from the output gradient."""

    @abc.abstractmethod
    def weight_grad(self, x: Tensor, grad: Tensor) -> Tensor:
        """Gradient w.r.t. the first ``grad.shape[1]`` output channels' weights."""


class QuantizedConv2d(SparseUpdateLayer, QuantConv2d):
    """A sparse-update convolution (any stride, padding, dilation and groups)."""

    def __init__(self, conv: nn.Conv2d, int8: bool, qas: bool) -> None:
        if conv.padding_mode != "zeros":
            raise UserError(f"sparse update needs zero padding; got '{conv.padding_mode}'")
        self._init_like(conv, bias=True, device="meta")
        self._store(conv.weight, conv.bias, int8, qas)

    @property
    def channel_step(self) -> int:
        return 1 if self.groups == 1 else self.weight_q.shape[0] // self.groups

    def input_grad(self, input_shape: torch.Size, weight: Tensor, grad: Tensor) -> Tensor:
        args = (self.stride, self.padding, self.dilation, self.groups)
        return conv_input_grad(input_shape, weight, grad, *args)

    def _update_groups(self) -> int:
        return self.update_channels // self.channel_step

    def saved_input_numel(self, input_shape: tuple[int, ...]) -> int:
        if self.groups == 1:
            return 0
        per_group = self.weight_q.shape[1]
        return math.prod(input_shape) * self._update_groups() * per_group // input_shape[1]

    def weight_input(self, x: Tensor) -> Tensor:
        if self.groups == 1:
            return x
        layout = torch.channels_last if is_channels_last(x) else torch.contiguous_format
        channels = self._update_groups() * self.weight_q.shape[1]
        return x[:, :channels].contiguous(memory_format=layout)

    def weight_grad(self, x: Tensor, grad: Tensor) -> Tensor:
        shape = (self.update_channels, *self.weight_q.shape[1:])
        stub = grad.new_empty(()).expand(shape)
        _, weight_grad, _ = torch.ops.aten.convolution_backward(
            grad,
            x,
            stub,
            None,
            list(self.stride),
            list(self.padding),
            list(self.dilation),
            False,
            [0, 0],
            self._update_groups() if self.groups > 1 else 1,
            [False, True, False],
        )
        return weight_grad


class QuantizedLinear(SparseUpdateLayer, QuantLinear):
    """A sparse-update linear layer."""

    def __init__(self, linear: nn.Linear, int8: bool, qas: bool) -> None:
        self._init_like(linear, bias=True, device="meta")
        self._store(linear.weight, linear.bias, int8, qas)

    def input_grad(self, input_shape: torch.Size, weight: Tensor, grad: Tensor) -> Tensor:
        return grad @ weight

    def weight_grad(self, x: Tensor, grad: Tensor) -> Tensor:
        return grad.t() @ x


class _QuantizedOp(torch.autograd.Function):
    """A quantized layer's lean op: saves the input only if the update trains, a 1-bit mask
    for its clamp, and recomputes the fp32 weight in backward."""

    @staticmethod
    def forward(
        ctx: Any, x: Tensor, update: Tensor, bias: Tensor, layer: SparseUpdateLayer
    ) -> Tensor:
        weight = layer.dequantized(update)
        out = layer.apply_weight(x, weight, bias)
        del weight
        saved_x = layer.weight_input(x) if ctx.needs_input_grad[1] else None
        packed = None
        if layer.bounds is not None:
            out.clamp_(*layer.bounds)
            if any(ctx.needs_input_grad):
                packed = BitMask.of(out, layer.bounds).packed
        ctx.save_for_backward(saved_x, packed, update)
        ctx.layer, ctx.input_shape = layer, x.shape
        ctx.out_layout = (out.shape, out.dim() == 4 and is_channels_last(out))
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        saved_x, packed, update = ctx.saved_tensors
        layer: SparseUpdateLayer = ctx.layer
        if packed is not None:
            grad = BitMask(packed, *ctx.out_layout).apply(grad)
        grad_x = grad_update = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = layer.input_grad(ctx.input_shape, layer.dequantized(update), grad)
        if ctx.needs_input_grad[1]:
            grad_update = layer.update_grad(saved_x, grad)
        if ctx.needs_input_grad[2]:
            grad_bias = grad.sum([d for d in range(grad.dim()) if d != 1])
        return grad_x, grad_update, grad_bias, None


def quantize_for_sparse_update(model: nn.Module, int8: bool = True, qas: bool = True) -> nn.Module:
    """Fold batch norms and clamps into convolutions and make every conv/linear quantized."""
    with torch.no_grad():
        for module in list(model.modules()):
            if isinstance(module, nn.Sequential):
                _fold_sequence(module)
        for name, module in list(model.named_modules()):
            if isinstance(module, nn.Conv2d):
                set_submodule(model, name, QuantizedConv2d(module, int8, qas))
            elif isinstance(module, nn.Linear):
                set_submodule(model, name, QuantizedLinear(module, int8, qas))
        for module in model.modules():  # clamps folded into the preceding convolution
            if isinstance(module, nn.Sequential):
                _attach_clamp(module)
    return model


def _fold_sequence(sequence: nn.Sequential) -> None:
    """``conv, bn`` -> ``conv'`` (bias = the BN shift), ``Identity``."""
    children = list(sequence.children())
    for index in range(len(children) - 1):
        conv, bn = children[index], children[index + 1]
        if not (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)):
            continue
        scale = torch.rsqrt(bn.running_var + bn.eps)
        if bn.weight is not None:
            scale = scale * bn.weight
        shift = -bn.running_mean * scale + (bn.bias if bn.bias is not None else 0.0)
        if conv.bias is not None:
            shift = shift + conv.bias * scale
        conv.weight.mul_(scale.view(-1, 1, 1, 1))
        conv.bias = nn.Parameter(shift.detach().clone())
        sequence[index + 1] = nn.Identity()


def _attach_clamp(sequence: nn.Sequential) -> None:
    """``quantized conv, Identity, ReLU/ReLU6`` -> the conv applies the clamp in place."""
    children = list(sequence.children())
    for index in range(len(children) - 2):
        layer, middle, act = children[index : index + 3]
        bounds = clamp_bounds(act)
        if isinstance(layer, QuantizedConv2d) and isinstance(middle, nn.Identity) and bounds:
            layer.bounds = bounds
            sequence[index + 2] = nn.Identity()


def quantized_layers(model: nn.Module) -> list[tuple[str, SparseUpdateLayer]]:
    """Every sparse-update layer, in module order (the classifier last)."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, SparseUpdateLayer)]


# ---------------------------------------------------------------- plans


@dataclass
class SparsePlan:
    """What trains: biases of the last ``bias_depth`` layers (before the classifier), the
    first ``channels`` output channels of the layers in ``layers``, and the classifier."""

    bias_depth: int = 0
    layers: dict[str, int] = field(default_factory=dict)
    predicted_peak_bytes: int = 0
    expected_gain: float = 0.0
    contributions: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def apply_plan(model: nn.Module, plan: SparsePlan) -> nn.Module:
    """Set ``requires_grad`` and update channels of a quantized model to ``plan``."""
    layers = quantized_layers(model)
    if not layers:
        raise UserError("sparse update needs a model prepared by quantize_for_sparse_update")
    for param in model.parameters():
        param.requires_grad_(False)
    body, (_, classifier) = layers[:-1], layers[-1]
    names = {name for name, _ in body}
    for name in plan.layers:
        if name not in names:
            raise UserError(f"sparse update plan names unknown layer '{name}'")
    depth = len(body) if plan.bias_depth >= len(body) else plan.bias_depth
    for index, (name, layer) in enumerate(body):
        plan.layers[name] = layer.set_update_channels(plan.layers.get(name, 0))
        layer.bias.requires_grad_(index >= len(body) - depth or plan.layers[name] > 0)
        if plan.layers[name] == 0:
            del plan.layers[name]
    classifier.set_update_channels(classifier.weight_q.shape[0])
    classifier.bias.requires_grad_(True)
    return model


@dataclass(frozen=True)
class Contribution:
    """One candidate update and its measured validation-accuracy gain: the biases of the last
    ``depth`` layers (``kind="bias"``), or the first ``channels`` output channels of layer
    ``slot`` (``kind="weight"``). Candidates of one slot are alternatives."""

    kind: str  # "bias" or "weight"
    slot: str  # "bias" or the layer name
    depth: int = 0
    channels: int = 0
    ratio: float = 0.0
    gain: float = 0.0


def contribution_analysis(
    model: nn.Module, task: TensorTask, config: SparseUpdateConfig
) -> list[Contribution]:
    """Validation-accuracy gain over classifier-only training of every candidate update."""
    body = quantized_layers(model)[:-1]
    base = _probe(model, task, SparsePlan(), config)
    candidates = []
    for depth in sorted({min(d, len(body)) for d in config.bias_depths if d > 0}):
        gain = _probe(model, task, SparsePlan(bias_depth=depth), config) - base
        candidates.append(Contribution("bias", "bias", depth=depth, gain=gain))
    for name, layer in _spread(body, config.candidate_layers):
        for ratio in config.ratios:
            channels = layer.set_update_channels(round(ratio * layer.weight_q.shape[0]) or 1)
            plan = SparsePlan(layers={name: channels})
            gain = _probe(model, task, plan, config) - base
            candidates.append(
                Contribution("weight", name, channels=channels, ratio=ratio, gain=gain)
            )
        layer.set_update_channels(0)
    return candidates


def _spread(
    layers: list[tuple[str, SparseUpdateLayer]], count: int
) -> list[tuple[str, SparseUpdateLayer]]:
    """``count`` layers evenly spread over the depth, preferring dense (ungrouped) layers, which
    hold most weights and contribute most (Lin et al. 2022, Fig. 5)."""
    dense = [(n, m) for n, m in layers if getattr(m, "groups", 1) == 1] or layers
    if count <= 0:
        return []
    if count >= len(dense):
        return dense
    step = (len(dense) - 1) / max(1, count - 1)
    return [dense[round(len(dense) - 1 - i * step)] for i in reversed(range(count))]


def _probe(
    model: nn.Module, task: TensorTask, plan: SparsePlan, config: SparseUpdateConfig
) -> float:
    """Validation accuracy after briefly fine-tuning ``plan`` from a copy of ``model``."""
    trial = apply_plan(clone_module(model), copy.deepcopy(plan))
    settings = FineTuneConfig(
        epochs=1,
        batch_size=config.batch_size,
        optimizer=config.optimizer,
        lr=config.probe_lr,
        max_steps=config.probe_steps,
        seed=config.seed,
    )
    fine_tune(trial, task, settings)
    return evaluate(trial, task, "val")


def select_update(
    model: nn.Module,
    trace: TrainingTrace,
    candidates: list[Contribution],
    config: SparseUpdateConfig,
) -> SparsePlan:
    """Greedy knapsack: add the candidate with the best gain per byte while the peak fits."""
    budget = config.memory_budget
    if budget is None:
        raise UserError("sparse update needs a memory budget (--memory-budget-kb)")
    plan = SparsePlan()
    peak = _peak(model, trace, plan, config)
    if peak > budget:
        raise UserError(
            f"memory budget {budget / 1024:.0f} KB is below the minimum of {peak / 1024:.0f} KB "
            f"(training only the classifier at batch size {config.batch_size})"
        )
    limit = budget * (1 - config.headroom)
    chosen: dict[str, Contribution] = {}
    while True:
        best = _best_option(model, trace, plan, chosen, candidates, peak, limit, config)
        if best is None:
            break
        candidate, plan, peak = best
        chosen[candidate.slot] = candidate
    apply_plan(model, plan)
    plan.predicted_peak_bytes = peak
    plan.expected_gain = sum(c.gain for c in chosen.values())
    plan.contributions = [asdict(c) for c in candidates]
    return plan


def _best_option(
    model: nn.Module,
    trace: TrainingTrace,
    plan: SparsePlan,
    chosen: dict[str, Contribution],
    candidates: list[Contribution],
    peak: int,
    limit: float,
    config: SparseUpdateConfig,
) -> tuple[Contribution, SparsePlan, int] | None:
    best, best_score = None, 0.0
    for candidate in candidates:
        current = chosen.get(candidate.slot)
        gain = candidate.gain - (current.gain if current else 0.0)
        if gain <= 0:
            continue
        trial = _with(plan, candidate)
        trial_peak = _peak(model, trace, trial, config)
        if trial_peak > limit:
            continue
        score = gain / max(trial_peak - peak, 1024)
        if score > best_score:
            best, best_score = (candidate, trial, trial_peak), score
    return best


def _with(plan: SparsePlan, candidate: Contribution) -> SparsePlan:
    trial = SparsePlan(bias_depth=plan.bias_depth, layers=dict(plan.layers))
    if candidate.kind == "bias":
        trial.bias_depth = candidate.depth
    else:
        trial.layers[candidate.slot] = candidate.channels
    return trial


def _peak(
    model: nn.Module, trace: TrainingTrace, plan: SparsePlan, config: SparseUpdateConfig
) -> int:
    apply_plan(model, copy.deepcopy(plan))
    return trace.profile(config.optimizer).peak_bytes


# ---------------------------------------------------------------- entry point


def sparse_update(
    model: nn.Module, task: TensorTask, config: SparseUpdateConfig
) -> tuple[nn.Module, SparsePlan]:
    """Quantize ``model``, analyse contributions on ``task`` and set it up to train the best
    update within ``config.memory_budget``. Returns the model (changed in place) and the plan."""
    if config.memory_budget is None:
        raise UserError("sparse update needs a memory budget (--memory-budget-kb)")
    quantize_for_sparse_update(model, config.int8, config.qas)
    x, y = task.split("train")
    trace = trace_training(model, x[: config.batch_size], y[: config.batch_size], task.loss)
    select_update(model, trace, [], config)  # fails fast if even the classifier does not fit
    candidates = contribution_analysis(model, task, config)
    plan = select_update(model, trace, candidates, config)
    if getattr(model, "mobiledl_arch", None):
        record_transform(model, TRANSFORM, _transform_config(model, config))
    return model, plan


def _transform_config(model: nn.Module, config: SparseUpdateConfig) -> dict[str, Any]:
    channels = {name: layer.update_channels for name, layer in quantized_layers(model)}
    return {"int8": config.int8, "qas": config.qas, "update_channels": channels}


@register_transform(TRANSFORM)
def _reapply(model: nn.Module, config: dict[str, Any]) -> nn.Module:
    """Rebuild a saved sparse-update model's quantized layers (weights are loaded after)."""
    quantize_for_sparse_update(model, bool(config.get("int8", True)), bool(config.get("qas", True)))
    layers = dict(quantized_layers(model))
    for name, channels in config.get("update_channels", {}).items():
        if name not in layers:
            raise UserError(f"sparse update record names unknown layer '{name}'")
        layers[name].set_update_channels(int(channels))
    return model
