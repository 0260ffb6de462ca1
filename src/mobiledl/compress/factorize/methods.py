"""The ``factorize`` method behind ``apply``: low-rank factorization of conv/linear layers."""

from __future__ import annotations

from typing import Any

from torch import nn

from mobiledl.compress.factorize import factorize_model, factorized_layers
from mobiledl.compress.factorize.config import FactorizeConfig
from mobiledl.core.inputs import IMAGE
from mobiledl.core.methods import register_method
from mobiledl.core.task import TensorTask
from mobiledl.profile import count_macs, count_params


@register_method(FactorizeConfig, needs_task=False, inputs=(IMAGE,))
def factorize_method(
    model: nn.Module, config: FactorizeConfig, task: TensorTask | None
) -> tuple[nn.Module, dict[str, Any]]:
    """SVD, spatial, Tucker-2 or CP factorization (Denton et al. 2014; Jaderberg et al. 2014;
    Kim et al. 2016; Lebedev et al. 2015); the report lists each layer's method and ranks,
    the MAC and parameter ratios reached and the input model's counts."""
    example = task.example_input(1) if task is not None else None
    params = count_params(model)
    macs = count_macs(model, example) if example is not None else None
    result = factorize_model(model, config, task)
    layers = {
        name: {"method": layer.spec.method, "ranks": list(layer.spec.ranks)}
        for name, layer in factorized_layers(result).items()
    }
    report: dict[str, Any] = {
        "layers": layers,
        "params_ratio": count_params(result) / params,
        "dense_params": params,
        "macs_target": config.macs_ratio,
    }
    if example is not None and macs:
        report.update(macs_ratio=count_macs(result, example) / macs, dense_macs=macs)
    return result, report
