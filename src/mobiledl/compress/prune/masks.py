"""Pruning masks that survive training: ``weight = original * mask`` in every forward.

A mask is attached with ``torch.nn.utils.parametrize``, so the optimizer keeps updating the
stored ``original`` tensor while the layer only ever sees ``original * mask``: gradients of
pruned positions are zero and the effective weight stays exactly zero through fine-tuning
(the masked retraining of Han et al. 2015, "Learning both Weights and Connections").
``remove_masks`` bakes the zeros into plain weights before saving or export.

Masks are keyed by the weight's name, e.g. ``"features.0.weight"``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from mobiledl.errors import UserError

PRUNABLE_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


class WeightMask(nn.Module):
    """Parametrization ``weight -> weight * mask`` with the mask stored as a buffer."""

    def __init__(self, mask: Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, weight: Tensor) -> Tensor:
        return weight * self.mask


def prunable_layers(model: nn.Module, exclude: tuple[str, ...] = ()) -> dict[str, nn.Module]:
    """Convolutions and linear layers by weight name (``"<module>.weight"``), minus ``exclude``.

    ``exclude`` holds module names (e.g. ``"classifier"``); a layer is skipped when its name
    equals an entry or lies inside it.
    """
    layers = {}
    for name, module in model.named_modules():
        if not isinstance(module, PRUNABLE_TYPES):
            continue
        if any(name == prefix or name.startswith(prefix + ".") for prefix in exclude):
            continue
        layers[f"{name}.weight"] = module
    return layers


def weight_leaf(module: nn.Module) -> nn.Parameter:
    """The trainable weight tensor: the stored ``original`` when the layer is masked."""
    if parametrize.is_parametrized(module, "weight"):
        return module.parametrizations.weight.original
    return module.weight


def _mask_of(module: nn.Module) -> WeightMask | None:
    if not parametrize.is_parametrized(module, "weight"):
        return None
    for parametrization in module.parametrizations.weight:
        if isinstance(parametrization, WeightMask):
            return parametrization
    return None


def _module_of(model: nn.Module, weight_name: str) -> nn.Module:
    module_name = weight_name.removesuffix(".weight")
    try:
        return model.get_submodule(module_name)
    except AttributeError:
        raise UserError(f"no layer '{module_name}' in the model") from None


def apply_masks(model: nn.Module, masks: dict[str, Tensor]) -> nn.Module:
    """Attach (or replace) the mask of each named weight; returns ``model`` (changed in place)."""
    for name, mask in masks.items():
        module = _module_of(model, name)
        if mask.shape != module.weight.shape:
            raise UserError(
                f"mask of '{name}' has shape {list(mask.shape)}, "
                f"weight has {list(module.weight.shape)}"
            )
        mask = mask.to(dtype=weight_leaf(module).dtype, device=weight_leaf(module).device)
        existing = _mask_of(module)
        if existing is None:
            parametrize.register_parametrization(module, "weight", WeightMask(mask.clone()))
        else:
            existing.mask.copy_(mask)
    return model


def current_masks(model: nn.Module) -> dict[str, Tensor]:
    """The masks attached to ``model`` (copies), by weight name."""
    masks = {}
    for name, module in model.named_modules():
        mask = _mask_of(module)
        if mask is not None:
            masks[f"{name}.weight"] = mask.mask.detach().clone()
    return masks


def remove_masks(model: nn.Module) -> nn.Module:
    """Bake every mask into its weight (pruned entries become plain zeros) and drop it."""
    for module in model.modules():
        if _mask_of(module) is not None:
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
    return model


def layer_sparsity(model: nn.Module, exclude: tuple[str, ...] = ()) -> dict[str, float]:
    """Fraction of exactly-zero effective weights in each prunable layer."""
    return {
        name: (module.weight == 0).float().mean().item()
        for name, module in prunable_layers(model, exclude).items()
    }


@torch.no_grad()
def sparsity_of(model: nn.Module, exclude: tuple[str, ...] = ()) -> float:
    """Fraction of exactly-zero weights over all prunable layers (biases and norms not counted)."""
    zeros = total = 0
    for module in prunable_layers(model, exclude).values():
        weight = module.weight
        zeros += int((weight == 0).sum())
        total += weight.numel()
    return zeros / total if total else 0.0
