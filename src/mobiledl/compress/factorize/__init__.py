"""Low-rank factorization (Cai et al. 2022, Sec. 2.3): module in, module out.

``apply(model, FactorizeConfig(...), task)`` replaces ``Linear`` layers by truncated
SVDs (Denton et al. 2014) and convolutions by spatial (Jaderberg et al. 2014), Tucker-2
(Kim et al. 2016), CP (Lebedev et al. 2015) or channel-SVD chains of ordinary
``nn.Conv2d`` layers, with ranks chosen by retained energy, by EVBMF (Nakajima et al. 2013)
or for a MAC target (Zhang et al. 2016). With data, the SVD and Tucker-2 channel factors come
from the layers' response statistics (Zhang et al. 2016) and BatchNorm statistics are
re-estimated afterwards (Li et al. 2020). The result trains, quantizes and exports to ONNX
like any model; ``save_model`` / ``load_model`` rebuild it from the recorded layer specs.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor, nn

from mobiledl.compress.factorize import ranks as rank_rules
from mobiledl.compress.factorize.config import FactorizeConfig
from mobiledl.compress.factorize.decompose import decompose
from mobiledl.compress.factorize.layers import METHODS, Factorized, LayerSpec, Pair
from mobiledl.compress.factorize.ranks import Candidate, Choice
from mobiledl.compress.factorize.statistics import channel_moments, recalibrate_batchnorm
from mobiledl.compress.factorize.vbmf import evbmf_rank
from mobiledl.core.clone import clone_module
from mobiledl.core.task import TensorTask
from mobiledl.errors import UserError
from mobiledl.models.checkpoint import record_transform, register_transform
from mobiledl.models.registry import example_input_for
from mobiledl.profile import count_macs, profile_model

__all__ = [
    "METHODS",
    "FactorizeConfig",
    "Factorized",
    "LayerSpec",
    "evbmf_rank",
    "factorizable_layers",
    "factorize",
    "factorized_layers",
]

TRANSFORM = "factorize"
#: A MAC target counts as met within this fraction of it (as for channel pruning).
MACS_TOLERANCE = 0.02
#: Modules whose ``Linear`` parts are used through their weights, not their ``forward``.
ATTENTION_TYPES = (nn.MultiheadAttention, nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)
ATTENTION_REASON = "attention internals: their weights are read directly, not called as layers"
#: How many of the layers that are not factorized a missed target names.
HELD_SHOWN = 4
NOT_RUN_REASON = "not called on the example input"
TOO_SMALL_REASON = "too small: no rank saves MACs"


def factorize(
    model: nn.Module,
    config: FactorizeConfig,
    task: TensorTask | None = None,
    data: Tensor | None = None,
) -> nn.Module:
    """Deprecated: use ``mobiledl.apply(model, FactorizeConfig(...), task)``."""
    warnings.warn("factorize() is deprecated; use mobiledl.apply", DeprecationWarning, 2)
    return factorize_model(clone_module(model), config, task, data)


def factorize_model(
    model: nn.Module,
    config: FactorizeConfig,
    task: TensorTask | None = None,
    data: Tensor | None = None,
) -> nn.Module:
    """``model`` (changed in place) with its layers factorized as ``config`` says.

    ``data`` (a batch of inputs; default: ``config.calibration_samples`` training inputs of
    ``task``) calibrates the data-aware factors. Its first sample, or else a random input of
    the shape the zoo model was built for, gives each layer's feature-map size, which the
    MAC counts need.
    """
    real = task is not None or data is not None
    data = _calibration_data(model, config, task, data)
    result = model.eval()
    options, skipped = _candidates(result, config, data)
    choices, shortfall = _choose(result, options, config, data[:1])
    _report(skipped, shortfall, config.strict)
    specs = []
    for choice in choices.values():
        if choice is not None and choice[1] != choice[0].full:
            layer, spec = choice[0], choice[0].spec(choice[1])
            module = decompose(layer.layer, spec, config.iterations, layer.bases)
            _set_submodule(result, layer.name, module)
            specs.append(spec)
    if specs and real and config.recalibrate_bn:
        recalibrate_batchnorm(result, data)
    if getattr(result, "mobiledl_arch", None) and specs:
        record_transform(result, TRANSFORM, {"layers": [spec.to_dict() for spec in specs]})
    return result


def factorized_layers(model: nn.Module) -> dict[str, Factorized]:
    """The :class:`Factorized` modules of ``model`` by name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, Factorized)}


def factorizable_layers(model: nn.Module) -> dict[str, nn.Conv2d | nn.Linear]:
    """``Linear`` layers and ungrouped zero-padded ``Conv2d`` layers not yet factorized
    (outside attention modules, which read their projections' weights directly)."""
    inside = {
        f"{name}.{child}"
        for name, factorized in factorized_layers(model).items()
        for child, _ in factorized.named_modules()
        if child
    }
    inside.update(_attention_internals(model))
    return {
        name: module
        for name, module in model.named_modules()
        if name not in inside and _factorizable(module)
    }


def _factorizable(module: nn.Module) -> bool:
    if isinstance(module, nn.Linear):
        return True
    return (
        isinstance(module, nn.Conv2d)
        and module.groups == 1
        and module.padding_mode == "zeros"
        and not isinstance(module.padding, str)
    )


def _calibration_data(
    model: nn.Module, config: FactorizeConfig, task: TensorTask | None, data: Tensor | None
) -> Tensor:
    """Calibration inputs, or (data-free) one input that only gives the shapes."""
    if data is not None:
        return data
    if task is not None:
        generator = torch.Generator().manual_seed(0)
        order = torch.randperm(len(task.x_train), generator=generator)
        return task.x_train[order[: config.calibration_samples]]
    if config.data_aware:
        raise UserError("data-aware factorization needs a task or data (or data_aware=False)")
    arch = getattr(model, "mobiledl_arch", None)
    if not arch:
        raise UserError("factorize needs a task or example data for this model")
    return example_input_for(arch)


def _selected(model: nn.Module, config: FactorizeConfig) -> dict[str, nn.Conv2d | nn.Linear]:
    """The factorizable layers ``config`` selects; unknown names raise ``UserError``."""
    available = factorizable_layers(model)
    names = [*(config.layers or ()), *config.exclude, *(config.ranks or {})]
    unknown = [name for name in names if name not in available]
    if unknown:
        raise UserError(
            f"unknown or non-factorizable layer '{unknown[0]}'; choose from: "
            + ", ".join(available)
        )
    wanted = config.layers if config.layers is not None else tuple(config.ranks or available)
    return {n: available[n] for n in wanted if n not in config.exclude}


def _methods_for(layer: nn.Module, methods: tuple[str, ...]) -> list[str]:
    """The methods ``layer`` can use, in the configured order (1x1 and linear: SVD)."""
    if isinstance(layer, nn.Linear) or tuple(layer.kernel_size) == (1, 1):
        return ["svd"]
    kernel_has_a_side_of_1 = 1 in tuple(layer.kernel_size)
    resolved = ["svd" if m == "spatial" and kernel_has_a_side_of_1 else m for m in methods]
    return list(dict.fromkeys(resolved))


def _candidates(
    model: nn.Module, config: FactorizeConfig, data: Tensor
) -> tuple[list[list[Candidate]], dict[str, str]]:
    """Per selected layer that can save MACs, one candidate per method it may use; and the
    layers skipped, with the reason (attention internals, not run, too small to save)."""
    selected = _selected(model, config)
    every_layer = config.layers is None and config.ranks is None
    attention = _attention_internals(model) if every_layer else []
    skipped = {name: ATTENTION_REASON for name in attention if name not in config.exclude}
    shapes = _feature_sizes(model, selected, data[:1])
    skipped.update({name: NOT_RUN_REASON for name in selected if name not in shapes})
    selected = {name: layer for name, layer in selected.items() if name in shapes}
    moments = channel_moments(model, selected, data) if config.data_aware else {}
    options = []
    for name, layer in selected.items():
        layers = [
            rank_rules.candidate(
                name, layer, method, shapes[name], config.round_to, moments.get(name)
            )
            for method in _methods_for(layer, config.methods)
        ]
        if config.ranks is None and not rank_rules.can_save(layers):
            skipped[name] = TOO_SMALL_REASON
        else:
            options.append(layers)
    return options, skipped


def _attention_internals(model: nn.Module) -> list[str]:
    """``Linear`` layers inside attention modules, which call their weights directly
    (``F.multi_head_attention_forward``, the fused encoder-layer path), not their forward."""
    return [
        f"{owner}.{name}" if owner else name
        for owner, module in model.named_modules()
        if isinstance(module, ATTENTION_TYPES)
        for name, inner in module.named_modules()
        if name and isinstance(inner, nn.Linear)
    ]


def _feature_sizes(
    model: nn.Module, layers: dict[str, nn.Module], example: Tensor
) -> dict[str, tuple[Pair, Pair]]:
    """Per layer that runs on ``example``: (input, output) spatial size, or (positions, 1)
    for a linear layer."""
    sizes: dict[str, tuple[Pair, Pair]] = {}

    def hook(name: str) -> Any:
        def record(module: nn.Module, args: tuple[Tensor, ...], output: Tensor) -> None:
            if isinstance(module, nn.Linear):
                positions = output[:1].numel() // module.out_features
                sizes.setdefault(name, ((positions, 1), (positions, 1)))
            else:
                sizes.setdefault(name, (tuple(args[0].shape[-2:]), tuple(output.shape[-2:])))

        return record

    handles = [layer.register_forward_hook(hook(name)) for name, layer in layers.items()]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for handle in handles:
            handle.remove()
    return sizes


def _choose(
    model: nn.Module, options: list[list[Candidate]], config: FactorizeConfig, example: Tensor
) -> tuple[dict[str, Choice | None], str | None]:
    """Per layer, the method and ranks the rank rule picks (``None``: leave it), and a line
    on how a MAC target was missed (``None`` if it was met within 2% or there was none)."""
    if config.macs_ratio is None:
        return {layers[0].name: _rule_choice(layers, config) for layers in options}, None
    total = count_macs(model, example)
    fixed = total - sum(layers[0].original_macs for layers in options)
    target = config.macs_ratio * total
    slack = int(MACS_TOLERANCE * target)
    choices = rank_rules.for_macs(options, int(target) - fixed, config.min_saving, slack)
    reached = fixed + sum(
        rank_rules.macs_of(layers[0], choices[layers[0].name]) for layers in options
    )
    kept = (reached / total, fixed / total)
    return choices, _shortfall(model, example, options, choices, config, kept)


def _shortfall(
    model: nn.Module,
    example: Tensor,
    options: list[list[Candidate]],
    choices: dict[str, Choice | None],
    config: FactorizeConfig,
    kept: tuple[float, float],
) -> str | None:
    """One line on a MAC target missed by more than 2%: what was reached and what blocked.

    ``kept``: the fractions of the MACs kept in all, and in layers not factorized."""
    (achieved, fixed), target = kept, config.macs_ratio
    assert target is not None
    if abs(achieved - target) <= MACS_TOLERANCE * target:
        return None
    line = (
        f"macs_ratio {target} not met: the factorized model keeps {achieved:.3f} of the MACs "
        f"({(achieved - target) / target:+.1%}; tolerance {MACS_TOLERANCE:.0%})"
    )
    steps = f"ranks are multiples of round_to={config.round_to}"
    if achieved < target:
        return f"{line}; the allowed ranks are too coarse to land closer ({steps})"
    lowest = rank_rules.at_minimum(options, choices, config.min_saving)
    held = _unfactorized_macs(model, {layers[0].name for layers in options}, example)
    parts = [line]
    if held:
        parts.append(f"{fixed:.3f} of the MACs are in layers that are not factorized ({held})")
    if lowest:
        parts.append(f"at their lowest allowed ranks ({steps}): " + ", ".join(lowest[:8]))
    return "; ".join(parts)


def _unfactorized_macs(model: nn.Module, factorizable: set[str], example: Tensor) -> str:
    """The layers outside ``factorizable`` holding the most MACs (at least 1% each):
    ``name (type) share``."""
    layers = profile_model(model, example).layers
    total = max(sum(layer.macs for layer in layers), 1)
    held = sorted(
        (layer for layer in layers if layer.macs >= total / 100 and layer.name not in factorizable),
        key=lambda layer: -layer.macs,
    )
    shown = held[:HELD_SHOWN]
    return ", ".join(f"{layer.name} ({layer.type}) {layer.macs / total:.0%}" for layer in shown)


def _report(skipped: dict[str, str], shortfall: str | None, strict: bool) -> None:
    """One warning (with ``strict``, a ``UserError`` for a missed target) on what was left."""
    if shortfall is not None and strict:
        raise UserError(shortfall + " (strict)")
    by_reason: dict[str, list[str]] = {}
    for name, reason in skipped.items():
        by_reason.setdefault(reason, []).append(name)
    left = [f"{', '.join(names)} ({reason})" for reason, names in by_reason.items()]
    parts = ([shortfall] if shortfall else []) + (["skipped " + "; ".join(left)] if left else [])
    if parts:
        warnings.warn("factorize: " + "; ".join(parts), stacklevel=4)


def _rule_choice(layers: list[Candidate], config: FactorizeConfig) -> Choice | None:
    """Explicit ranks use the first method; energy and EVBMF the method saving most MACs."""
    if config.ranks is not None:
        return layers[0], rank_rules.check_explicit(layers[0], config.ranks[layers[0].name])
    if config.energy is not None:
        choices = [(c, rank_rules.by_energy(c, config.energy, config.min_saving)) for c in layers]
    else:
        choices = [(c, rank_rules.by_vbmf(c, config.min_saving)) for c in layers]
    return min(choices, key=lambda choice: choice[0].macs(choice[1]))


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


@register_transform(TRANSFORM)
def _rebuild(model: nn.Module, config: dict[str, Any]) -> nn.Module:
    """Re-create the factorized structure when ``load_model`` rebuilds a model."""
    for record in config["layers"]:
        spec = LayerSpec.from_dict(record)
        _set_submodule(model, spec.name, Factorized(spec))
    return model
