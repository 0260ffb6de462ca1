"""Mixed precision searched under a model-size budget: sensitivities, then an exact
allocation, then the quantized model.

``search="hawq"`` scores each (layer, bit width) by HAWQ-V2's Hessian-trace estimate of the
loss increase (:mod:`~mobiledl.automl.compress.hawq`); ``search="measured"`` by the loss
increase measured with that layer alone quantized (``compress.quantize.bit_sensitivity``,
one validation pass per layer and width). Either way the bits come from the exact knapsack
(:mod:`~mobiledl.automl.compress.knapsack`), and the model is quantized with the project's
mixed-precision method (per-channel symmetric weights at the chosen widths, activations at
``act_bits``, calibrated on the task's training inputs).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from mobiledl.automl.compress.hawq import (
    HESSIAN_SAMPLES,
    HUTCHINSON_PROBES,
    HessianTraces,
    hawq_costs,
    hessian_traces,
)
from mobiledl.automl.compress.knapsack import allocate_bits
from mobiledl.compress.quantize.config import MixedPrecisionConfig
from mobiledl.compress.quantize.mixed import (
    DEFAULT_CANDIDATES,
    bit_sensitivity,
    model_size_bytes,
    select_layers,
)
from mobiledl.core.config import LayerRule
from mobiledl.core.methods import apply
from mobiledl.core.task import TensorTask
from mobiledl.errors import UserError

SEARCHES = ("hawq", "measured")


@dataclass
class AutoQuantResult:
    """The quantized ``model``, its ``policy`` (weight bits per layer), the model size under
    that policy against the budget, and the per-(layer, width) ``costs`` it minimised."""

    model: nn.Module
    policy: dict[str, int]
    act_bits: int | None
    size_bytes: int
    budget_bytes: int
    float_bytes: int
    search: str
    bits: list[int]
    costs: dict[str, list[float]]
    traces: HessianTraces | None

    def report(self) -> dict[str, Any]:
        """JSON-ready: everything but the model."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        fields.pop("model")
        fields["traces"] = None if self.traces is None else self.traces.to_dict()
        return fields


def autoquant(
    model: nn.Module,
    task: TensorTask,
    budget_bytes: int,
    search: str = "hawq",
    bits: Sequence[int] = DEFAULT_CANDIDATES,
    act_bits: int | None = 8,
    samples: int = HESSIAN_SAMPLES,
    probes: int = HUTCHINSON_PROBES,
    seed: int = 0,
    joint: bool = False,
) -> AutoQuantResult:
    """Weight bits per Conv2d/Linear layer of ``model`` (unchanged) so that the model fits
    ``budget_bytes`` at the least estimated loss (module docstring), and the model quantized
    with them. An unreachable budget is a ``UserError`` naming the smallest reachable size."""
    if search not in SEARCHES:
        raise UserError(f"search must be one of {', '.join(SEARCHES)}; got {search!r}")
    widths = sorted(set(bits))
    sizes = LayerSizes.of(model)
    traces = None
    if search == "hawq":
        traces = hessian_traces(
            model,
            task,
            samples=samples,
            probes=probes,
            seed=seed,
            joint=joint,
            show_progress=True,
        )
        costs = hawq_costs(model, traces, widths)
    else:
        sensitivity = bit_sensitivity(model, task, widths)
        costs = measured_costs(sensitivity.loss, sensitivity.baseline_loss)
    policy = sizes.allocate(costs, widths, budget_bytes)
    return AutoQuantResult(
        model=quantize_with_policy(model, task, policy, act_bits),
        policy=policy,
        act_bits=act_bits,
        size_bytes=model_size_bytes(model, policy),
        budget_bytes=budget_bytes,
        float_bytes=model_size_bytes(model, {}),
        search=search,
        bits=widths,
        costs=costs,
        traces=traces,
    )


@dataclass
class LayerSizes:
    """What a policy's model size depends on: each Conv2d/Linear layer's weight count and
    output channels, and the bytes of everything else (kept fp32)."""

    weights: dict[str, int]
    channels: dict[str, int]
    other_bytes: int

    @classmethod
    def of(cls, model: nn.Module) -> LayerSizes:
        layers = select_layers(model, None)
        if not layers:
            raise UserError("autoquant: the model has no Conv2d or Linear layer to quantize")
        weights = {name: layer.weight.numel() for name, layer in layers.items()}
        channels = {name: layer.weight.shape[0] for name, layer in layers.items()}
        return cls(weights, channels, model_size_bytes(model, {}) - 4 * sum(weights.values()))

    def allocate(
        self, costs: dict[str, list[float]], bits: Sequence[int], budget_bytes: int
    ) -> dict[str, int]:
        """The exact knapsack's weight bits (``allocate_bits``) for these layers."""
        return allocate_bits(costs, bits, self.weights, self.channels, self.other_bytes,
                             budget_bytes)  # fmt: skip


def quantize_with_policy(
    model: nn.Module, task: TensorTask, policy: dict[str, int], act_bits: int | None
) -> nn.Module:
    """``model`` (unchanged) quantized with ``policy``'s weight bits and ``act_bits`` inputs
    through the project's mixed-precision method."""
    rules = tuple(LayerRule(name, {"weight_bits": b}) for name, b in policy.items())
    return apply(model, MixedPrecisionConfig(weight_bits=None, act_bits=act_bits,
                                             overrides=rules), task)  # fmt: skip


def measured_costs(loss: Mapping[str, Sequence[float]], baseline: float) -> dict[str, list[float]]:
    """Loss increases from a direct sensitivity analysis (``bit_sensitivity``; ``loss[name]``
    by increasing width). A measured loss is noisy, so each cost is clamped at 0 (quantizing
    does not help) and never above the cost of a narrower width (a finer grid is not worse)."""
    costs = {}
    for name, values in loss.items():
        running, costs[name] = float("inf"), []
        for value in values:
            running = min(running, max(value - baseline, 0.0))
            costs[name].append(running)
    return costs
