"""Shared by the engines' exporters: calling a model with positional inputs, and naming the
module that breaks an export.

An exporter's own error rarely says which layer of the user's model is at fault. These
helpers find it: ``forward_error`` tells a model that fails in plain PyTorch from one the
exporter cannot handle, and ``first_failing_submodule`` re-exports the submodules one by one,
deepest first, on the inputs each saw during a forward pass, with the engine's own export step.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import torch
from torch import nn

from mobiledl.deploy.lowering import composite_attention

Args = tuple[torch.Tensor, ...]
#: An engine's export step on one submodule and its input; raises when it cannot export it.
ExportStep = Callable[[nn.Module, torch.Tensor], object]


class KeywordInputs(nn.Module):
    """A model that takes keyword inputs, called with positional ones (what export traces)."""

    def __init__(self, model: nn.Module, names: list[str]) -> None:
        super().__init__()
        self.model = model
        self.names = names

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        return self.model(**dict(zip(self.names, tensors, strict=True)))


def forward_error(model: nn.Module, args: Args) -> Exception | None:
    """The exception ``model(*args)`` raises in plain PyTorch, if any."""
    try:
        with torch.no_grad():
            model(*args)
    except Exception as error:
        return error
    return None


def first_failing_submodule(model: nn.Module, args: Args, export: ExportStep) -> str | None:
    """Export submodules one by one with ``export``, deepest first, on the inputs they saw in
    ``model(*args)``; the qualified name of the first one that fails, or ``None``."""
    inputs = submodule_inputs(model, args)
    for qualname in sorted(inputs, key=lambda n: -n.count(".")):
        module = model.get_submodule(qualname)
        try:
            with torch.no_grad():
                export(module, inputs[qualname])
        except Exception:
            return qualname
    return None


def submodule_inputs(model: nn.Module, args: Args) -> dict[str, torch.Tensor]:
    """The first single-tensor input each submodule receives during ``model(*args)``."""
    inputs: dict[str, torch.Tensor] = {}
    handles = []

    def recorder(qualname: str):
        def hook(module: nn.Module, args: tuple) -> None:
            if len(args) == 1 and isinstance(args[0], torch.Tensor):
                inputs.setdefault(qualname, args[0].detach().clone())

        return hook

    for qualname, module in model.named_modules():
        if qualname:
            handles.append(module.register_forward_pre_hook(recorder(qualname)))
    try:
        with torch.no_grad(), composite_attention():
            model(*args)
    finally:
        for handle in handles:
            handle.remove()
    return inputs


def describe_module(model: nn.Module, qualname: str | None) -> str:
    """``module 'head.fft' (FFT)`` for a submodule, ``model (Net)`` for the root or ``None``."""
    if not qualname:
        return f"model ({type(model).__name__})"
    return f"module '{qualname}' ({type(model.get_submodule(qualname)).__name__})"


def first_line(error: BaseException, limit: int = 200) -> str:
    """The first non-empty line of an error message, shortened to ``limit`` characters."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = lines[0] if lines else type(error).__name__
    text = re.sub(r"^\[ONNXRuntimeError\]\s*:\s*\d+\s*:\s*\w+\s*:\s*", "", text)
    for tail in (" Please feel free to request support", "  [Caused by the value"):
        text = text.split(tail)[0]
    return text if len(text) <= limit else text[: limit - 3] + "..."
