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
from mobiledl.profile import count_macs

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
    options = _candidates(result, config, data)
    specs = []
    for choice in _choose(result, options, config, data[:1]).values():
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
    """``Linear`` layers and ungrouped zero-padded ``Conv2d`` layers not yet factorized."""
    inside = {
        f"{name}.{child}"
        for name, factorized in factorized_layers(model).items()
        for child, _ in factorized.named_modules()
        if child
    }
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


def _candidates(model: nn.Module, config: FactorizeConfig, data: Tensor) -> list[list[Candidate]]:
    """Per selected layer, one candidate per method it may use."""
    selected = _selected(model, config)
    shapes = _feature_sizes(model, selected, data[:1])
    moments = channel_moments(model, selected, data) if config.data_aware else {}
    return [
        [
            rank_rules.candidate(
                name, layer, method, shapes[name], config.round_to, moments.get(name)
            )
            for method in _methods_for(layer, config.methods)
        ]
        for name, layer in selected.items()
    ]


def _feature_sizes(
    model: nn.Module, layers: dict[str, nn.Module], example: Tensor
) -> dict[str, tuple[Pair, Pair]]:
    """Per layer: (input, output) spatial size, or (positions, 1) for a linear layer."""
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
    missing = [name for name in layers if name not in sizes]
    if missing:
        raise UserError(f"layer '{missing[0]}' does not run on the example input")
    return sizes


def _choose(
    model: nn.Module, options: list[list[Candidate]], config: FactorizeConfig, example: Tensor
) -> dict[str, Choice | None]:
    """Per layer, the method and ranks the rank rule picks (``None``: leave it)."""
    if config.macs_ratio is not None:
        total = count_macs(model, example)
        fixed = total - sum(layers[0].original_macs for layers in options)
        budget = int(config.macs_ratio * total) - fixed
        return rank_rules.for_macs(options, budget, config.min_saving)
    return {layers[0].name: _rule_choice(layers, config) for layers in options}


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
