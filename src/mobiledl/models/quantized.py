"""The one family of weight-quantized layers: ``QuantConv2d`` and ``QuantLinear``.

A quantized layer is still an ``nn.Conv2d`` / ``nn.Linear`` (profilers, tracers and exporters
see the op they know) whose weight sits on an integer grid, ``w_hat = (q - z) * s`` (Jacob et
al. 2018, "Quantization and Training of Neural Networks for Efficient Integer-Arithmetic-Only
Inference", eq. 1). The family holds what every user of it shares: conversion from a float
layer (``from_float`` / ``quant_layer``), the layer's op with an explicit weight
(``apply_weight``), a float layer of the same shape (``plain_layer``) and the lowering an engine
exports (``lower``, see ``mobiledl.deploy.lowering``). The weight is stored in one of two ways:

- **fake-quantized** (PTQ, QAT, AdaRound, mixed precision in ``mobiledl.compress.quantize``): a
  float ``weight`` rounded by a ``weight_quantizer`` on every call;
- **int8 codes** (sparse update in ``mobiledl.train.ondevice.sparse_update``, Lin et al. 2022):
  frozen symmetric per-output-channel int8 codes and scales from ``int8_codes``, which that
  subclass adds its trainable rows, quantization-aware scaling and lean gradients to.

The family lives in ``models`` because both ``train`` and ``compress`` build on it and ``train``
sits below ``compress`` (tests/test_layers.py). The quantizers themselves stay in
``compress.quantize``; a layer only needs the ``GridQuantizer`` interface they implement.
"""

from __future__ import annotations

import abc

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mobiledl.core.clone import clone_module
from mobiledl.errors import UserError
from mobiledl.models.packed import Grid

INT8_MAX = 127


class GridQuantizer(nn.Module, metaclass=abc.ABCMeta):
    """A weight quantizer with an affine grid a quantized layer can export (``FakeQuantize``)."""

    quantizing: bool

    @abc.abstractmethod
    def qparams(self) -> tuple[Tensor, Tensor]:
        """The scale and zero point in use now."""

    @abc.abstractmethod
    def widened(self) -> nn.Module:
        """The same grid in its 8-bit container, without observer (what an engine exports)."""

    @abc.abstractmethod
    def code_range(self) -> tuple[int, int]:
        """The smallest and largest integer code of the grid (``qmin``, ``qmax``)."""


def int8_codes(weight: Tensor) -> tuple[Tensor, Tensor]:
    """Symmetric per-output-channel int8 codes of ``weight`` and their float scales.

    ``s = max|w| / 127`` per output channel (Jacob et al. 2018, symmetric narrow range), codes
    ``round(w / s)`` clamped to ``[-127, 127]``; ``codes * s`` is the dequantized weight.
    """
    scale = weight.abs().flatten(1).amax(1).clamp_min(1e-8) / float(INT8_MAX)
    view = (-1, *[1] * (weight.dim() - 1))
    codes = torch.round(weight / scale.view(view)).clamp(-INT8_MAX, INT8_MAX).to(torch.int8)
    return codes, scale


class QuantizedLayer(metaclass=abc.ABCMeta):
    """Weight and bias quantization shared by ``QuantConv2d`` and ``QuantLinear``.

    The bias of an integer layer is int32 with scale ``s_input * s_weight`` (Jacob et al.
    2018, Sec. 2.4), which ONNX Runtime also applies: once ``link_input_quantizer`` has told
    the layer which quantizer feeds it, the bias is rounded onto that grid as well.
    """

    weight: Tensor
    bias: Tensor | None
    weight_quantizer: nn.Module

    def quantized_weight(self) -> Tensor:
        return self.weight_quantizer(self.weight)

    def quantized_bias(self) -> Tensor | None:
        """The bias on the int32 grid ``s_input * s_weight`` (float if not linked/enabled)."""
        source = self.__dict__.get("_input_quantizer")
        weights = self.weight_quantizer
        if self.bias is None or source is None or not isinstance(weights, GridQuantizer):
            return self.bias
        if not (source.quantizing and weights.quantizing):
            return self.bias
        scale = (source.qparams()[0] * weights.qparams()[0]).detach()
        rounded = torch.round(self.bias / scale) * scale
        return self.bias + (rounded - self.bias).detach()

    def forward_with(self, x: Tensor, weight: Tensor) -> Tensor:
        """The layer's output on ``x`` with ``weight`` in place of its own."""
        return self.apply_weight(x, weight, self.quantized_bias())

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_with(x, self.quantized_weight())

    @torch.no_grad()
    def lower(self, keep_quantization: bool = True) -> nn.Module:
        """A copy whose weight and bias sit exactly on their grids, as plain values, with an
        8-bit-wide weight quantizer (see ``mobiledl.deploy.lowering``).

        A ``b``-bit grid is a subset of the 8-bit grid with the same scale and zero point, so
        the wide quantizer reproduces the rounded weights exactly and exports without a clamp.
        The bias holds its int32-grid value (ONNX Runtime rounds it onto the same grid again).
        """
        quantizer = self.weight_quantizer
        if not isinstance(quantizer, GridQuantizer):
            raise UserError(f"cannot export a {type(quantizer).__name__} weight quantizer")
        lowered = clone_module(self)
        lowered.__dict__.pop("_input_quantizer", None)
        if lowered.bias is not None:
            lowered.bias.copy_(self.quantized_bias())
        lowered.weight.copy_(quantizer(self.weight))
        lowered.weight_quantizer = quantizer.widened()
        return lowered

    def weight_grid(self) -> Grid | None:
        """The grid the weight is rounded onto (one scale per output channel or one in all),
        ``None`` when it is not rounded now (or is held as codes already, as sparse update's
        layers hold it)."""
        quantizer = getattr(self, "weight_quantizer", None)
        if not isinstance(quantizer, GridQuantizer) or not quantizer.quantizing:
            return None
        scale, zero_point = (p.detach().reshape(-1).cpu() for p in quantizer.qparams())
        return Grid(scale.float().numpy(), zero_point.numpy(), *quantizer.code_range())

    @torch.no_grad()
    def snap_weight(self) -> None:
        """Replace the latent float weight by the grid values it rounds to (the layer's output
        stays the same; rounding a grid value gives it back)."""
        if self.weight_grid() is not None:
            self.weight.copy_(self.quantized_weight())

    @abc.abstractmethod
    def apply_weight(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        """The layer's op on ``x`` with an explicit float weight and bias."""

    @abc.abstractmethod
    def plain_layer(self) -> nn.Module:
        """A float ``nn`` layer of the same shape (fresh weights)."""


def link_input_quantizer(layer: QuantizedLayer, quantizer: GridQuantizer) -> None:
    """Tell ``layer`` which activation quantizer feeds it (not registered as a child)."""
    layer.__dict__["_input_quantizer"] = quantizer


class QuantConv2d(QuantizedLayer, nn.Conv2d):
    """``nn.Conv2d`` whose weight passes through ``weight_quantizer`` on every call.

    Parameters keep the names ``weight`` and ``bias``, so state dicts line up with the
    float layer; the quantizer's buffers live under ``weight_quantizer.``.
    """

    def _init_like(self, conv: nn.Conv2d, bias: bool, device: str | None = None) -> None:
        """Initialise as a fresh convolution of ``conv``'s shape (on ``device``)."""
        nn.Conv2d.__init__(
            self,
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            conv.stride,
            conv.padding,
            conv.dilation,
            conv.groups,
            bias,
            conv.padding_mode,
            device,
        )

    @classmethod
    def from_float(cls, conv: nn.Conv2d, weight_quantizer: nn.Module) -> QuantConv2d:
        """A quantized layer sharing ``conv``'s parameters (not copies)."""
        layer = cls.__new__(cls)
        layer._init_like(conv, conv.bias is not None)
        layer.weight, layer.bias = conv.weight, conv.bias
        layer.train(conv.training)
        layer.weight_quantizer = weight_quantizer
        return layer

    def apply_weight(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        return self._conv_forward(x, weight, bias)

    def plain_layer(self) -> nn.Module:
        return nn.Conv2d(
            self.in_channels,
            self.out_channels,
            self.kernel_size,
            self.stride,
            self.padding,
            self.dilation,
            self.groups,
            padding_mode=self.padding_mode,
        )


class QuantLinear(QuantizedLayer, nn.Linear):
    """``nn.Linear`` whose weight passes through ``weight_quantizer`` on every call."""

    def _init_like(self, linear: nn.Linear, bias: bool, device: str | None = None) -> None:
        """Initialise as a fresh linear layer of ``linear``'s shape (on ``device``)."""
        nn.Linear.__init__(self, linear.in_features, linear.out_features, bias, device)

    @classmethod
    def from_float(cls, linear: nn.Linear, weight_quantizer: nn.Module) -> QuantLinear:
        """A quantized layer sharing ``linear``'s parameters (not copies)."""
        layer = cls.__new__(cls)
        layer._init_like(linear, linear.bias is not None)
        layer.weight, layer.bias = linear.weight, linear.bias
        layer.train(linear.training)
        layer.weight_quantizer = weight_quantizer
        return layer

    def apply_weight(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        return F.linear(x, weight, bias)

    def plain_layer(self) -> nn.Module:
        return nn.Linear(self.in_features, self.out_features)


QuantLayer = QuantConv2d | QuantLinear


def quant_layer(layer: nn.Module, weight_quantizer: nn.Module) -> QuantLayer:
    """Wrap a float ``nn.Conv2d`` or ``nn.Linear`` (sharing its parameters)."""
    if isinstance(layer, QuantizedLayer):
        raise UserError(f"{type(layer).__name__} is quantized already")
    if isinstance(layer, nn.Conv2d):
        return QuantConv2d.from_float(layer, weight_quantizer)
    if isinstance(layer, nn.Linear):
        return QuantLinear.from_float(layer, weight_quantizer)
    raise UserError(f"cannot quantize a {type(layer).__name__}; only Conv2d and Linear")


def quant_layers(model: nn.Module) -> dict[str, QuantLayer]:
    """Every quantized layer of ``model`` by qualified name, in registration order."""
    return {n: m for n, m in model.named_modules() if isinstance(m, QuantConv2d | QuantLinear)}


def set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    """Replace the submodule at dotted path ``name`` by ``module``."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)
