"""The transfer-learning baselines of TinyTL (Cai et al. 2020, Table 1) and their helpers.

- ``full``: fine-tune every parameter (batch norms use batch statistics);
- ``last``: train only the classifier, the last linear layer (feature extractor frozen);
- ``bias``: train the biases of every layer and the classifier (TinyTL's "FT-Bias").

``classifier_layer`` finds the classifier of any zoo model; ``replace_classifier`` gives it a
new number of classes (a fresh layer, recorded in ``mobiledl_arch`` so files reload).
"""

from __future__ import annotations

from torch import Tensor, nn

from mobiledl.errors import UserError
from mobiledl.models import registry

BASELINES = ("full", "last", "bias")


def classifier_layer(model: nn.Module) -> tuple[str, nn.Linear]:
    """Name and module of the last ``nn.Linear`` (the layer producing the logits)."""
    linears = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise UserError(f"{type(model).__name__} has no linear classifier layer")
    return linears[-1]


def replace_classifier(model: nn.Module, num_classes: int) -> nn.Linear:
    """Give ``model`` a fresh classifier for ``num_classes`` classes (a no-op if it has them)."""
    name, layer = classifier_layer(model)
    if layer.out_features == num_classes:
        return layer
    fresh = nn.Linear(layer.in_features, num_classes, bias=layer.bias is not None)
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, fresh)
    arch = getattr(model, "mobiledl_arch", None)
    if arch:
        model.mobiledl_arch = {**arch, "num_classes": num_classes}
    return fresh


def freeze(model: nn.Module, method: str) -> nn.Module:
    """Set ``requires_grad`` for a baseline: ``full``, ``last`` or ``bias`` (see above)."""
    if method not in BASELINES:
        raise UserError(f"unknown baseline '{method}'; choose one of {', '.join(BASELINES)}")
    head = {id(p) for p in classifier_layer(model)[1].parameters()}
    for name, param in model.named_parameters():
        trainable = (
            method == "full" or id(param) in head or (method == "bias" and name.endswith("bias"))
        )
        param.requires_grad_(trainable)
    return model


def example_input_for(model: nn.Module, example: Tensor | None = None) -> Tensor:
    """``example`` or an all-zero input of one sample shaped like the model's recorded input."""
    if example is not None:
        return example
    arch = getattr(model, "mobiledl_arch", None)
    if not arch:
        raise UserError(
            f"{type(model).__name__} was not built by create_model; pass an example input"
        )
    return registry.example_input_for(arch, zeros=True)
