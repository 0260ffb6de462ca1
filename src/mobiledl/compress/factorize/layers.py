"""Factorized layers: a ``Conv2d`` / ``Linear`` replaced by a chain of smaller standard layers.

Every decomposition here yields plain ``nn.Conv2d`` / ``nn.Linear`` modules in an
``nn.Sequential`` (:class:`Factorized`), so the result trains, traces, quantizes and exports
to ONNX like any other layer. The structure of a factorized layer is fully described by a
JSON-like :class:`LayerSpec` (the original layer's geometry, the method and the ranks), which
is what a model file records so ``load_model`` can rebuild it without user code.

Structures (``W`` has shape ``(C_out, C_in, kh, kw)``):

- ``svd`` — Denton et al. 2014, "Exploiting Linear Structure Within Convolutional Networks
  for Efficient Evaluation": ``Linear(in, r) -> Linear(r, out)``; a convolution becomes
  ``Conv(C_in, r, kh x kw) -> Conv1x1(r, C_out)`` (the channel decomposition of Zhang et al.
  2016, "Accelerating Very Deep Convolutional Networks", the SVD of ``W`` unfolded along
  ``C_out``).
- ``spatial`` — Jaderberg, Vedaldi and Zisserman 2014, "Speeding up Convolutional Neural
  Networks with Low Rank Expansions", scheme 2: ``Conv(C_in, r, kh x 1) -> Conv(r, C_out,
  1 x kw)``.
- ``tucker2`` — Kim et al. 2016, "Compression of Deep Convolutional Neural Networks for Fast
  and Low Power Mobile Applications": ``Conv1x1(C_in, r_in) -> Conv(r_in, r_out, kh x kw)
  -> Conv1x1(r_out, C_out)``; a 1x1 factor whose rank equals its channel count is left out
  (it would be an invertible map that the core absorbs).
- ``cp`` — Lebedev et al. 2015, "Speeding-up Convolutional Neural Networks Using Fine-tuned
  CP-Decomposition": ``Conv1x1(C_in, R) -> depthwise (kh x 1) -> depthwise (1 x kw) ->
  Conv1x1(R, C_out)``.

The first layer of every chain carries no bias (a bias-free layer maps zero padding to
zeros, so padding commutes with it); the original bias sits on the last layer.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from torch import nn

from mobiledl.errors import UserError

METHODS = ("svd", "spatial", "tucker2", "cp")
Pair = tuple[int, int]


@dataclass(frozen=True)
class LayerSpec:
    """Geometry of an original layer plus how it is factorized.

    ``kernel`` is ``(1, 1)`` and ``stride`` ``(1, 1)`` for a linear layer (``linear=True``).
    ``ranks`` is ``(r,)`` for ``svd``, ``spatial`` and ``cp``, ``(r_out, r_in)`` for
    ``tucker2``.
    """

    name: str
    method: str
    ranks: tuple[int, ...]
    in_channels: int
    out_channels: int
    kernel: Pair = (1, 1)
    stride: Pair = (1, 1)
    padding: Pair = (0, 0)
    dilation: Pair = (1, 1)
    bias: bool = True
    linear: bool = False

    @classmethod
    def of(cls, name: str, layer: nn.Module, method: str, ranks: tuple[int, ...]) -> LayerSpec:
        """The spec of factorizing ``layer`` (a ``Linear`` is always factorized by ``svd``)."""
        if isinstance(layer, nn.Linear):
            return cls(
                name,
                "svd",
                ranks,
                layer.in_features,
                layer.out_features,
                bias=layer.bias is not None,
                linear=True,
            )
        return cls(
            name,
            method,
            ranks,
            layer.in_channels,
            layer.out_channels,
            tuple(layer.kernel_size),
            tuple(layer.stride),
            tuple(layer.padding),
            tuple(layer.dilation),
            layer.bias is not None,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LayerSpec:
        """The spec a ``to_dict`` came from."""
        try:
            values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
            spec = cls(**values)
        except TypeError as exc:
            raise UserError(f"invalid factorized layer record: {exc}") from None
        if spec.method not in METHODS:
            raise UserError(f"layer '{spec.name}': unknown factorization '{spec.method}'")
        return spec


class Factorized(nn.Sequential):
    """A layer replaced by a chain of smaller standard layers; ``spec`` says how."""

    def __init__(self, spec: LayerSpec) -> None:
        super().__init__(*_build(spec))
        self.spec = spec

    def extra_repr(self) -> str:
        return f"method={self.spec.method}, ranks={list(self.spec.ranks)}"


def _build(spec: LayerSpec) -> list[nn.Module]:
    if spec.linear:
        (rank,) = spec.ranks
        return [
            nn.Linear(spec.in_channels, rank, bias=False),
            nn.Linear(rank, spec.out_channels, bias=spec.bias),
        ]
    return _CONV_BUILDERS[spec.method](spec)


def _conv(
    channels: Pair,
    kernel: Pair = (1, 1),
    stride: Pair = (1, 1),
    padding: Pair = (0, 0),
    dilation: Pair = (1, 1),
    groups: int = 1,
    bias: bool = False,
) -> nn.Conv2d:
    return nn.Conv2d(*channels, kernel, stride, padding, dilation, groups, bias)


def _svd_conv(spec: LayerSpec) -> list[nn.Module]:
    (rank,) = spec.ranks
    first = _conv((spec.in_channels, rank), spec.kernel, spec.stride, spec.padding, spec.dilation)
    return [first, _conv((rank, spec.out_channels), bias=spec.bias)]


def _spatial(spec: LayerSpec) -> list[nn.Module]:
    (rank,) = spec.ranks
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = spec.kernel, spec.stride, spec.padding, spec.dilation
    return [
        _conv((spec.in_channels, rank), (kh, 1), (sh, 1), (ph, 0), (dh, 1)),
        _conv((rank, spec.out_channels), (1, kw), (1, sw), (0, pw), (1, dw), bias=spec.bias),
    ]


def _tucker2(spec: LayerSpec) -> list[nn.Module]:
    r_out, r_in = spec.ranks
    layers: list[nn.Module] = []
    if r_in < spec.in_channels:
        layers.append(_conv((spec.in_channels, r_in)))
    core_bias = spec.bias and r_out == spec.out_channels
    geometry = (spec.kernel, spec.stride, spec.padding, spec.dilation)
    layers.append(_conv((r_in, r_out), *geometry, bias=core_bias))
    if r_out < spec.out_channels:
        layers.append(_conv((r_out, spec.out_channels), bias=spec.bias))
    return layers


def _cp(spec: LayerSpec) -> list[nn.Module]:
    (rank,) = spec.ranks
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = spec.kernel, spec.stride, spec.padding, spec.dilation
    return [
        _conv((spec.in_channels, rank)),
        _conv((rank, rank), (kh, 1), (sh, 1), (ph, 0), (dh, 1), groups=rank),
        _conv((rank, rank), (1, kw), (1, sw), (0, pw), (1, dw), groups=rank),
        _conv((rank, spec.out_channels), bias=spec.bias),
    ]


_CONV_BUILDERS = {"svd": _svd_conv, "spatial": _spatial, "tucker2": _tucker2, "cp": _cp}


def factorized_macs(spec: LayerSpec, in_hw: Pair, out_hw: Pair) -> int:
    """MACs of the factorized layer for one sample whose input/output maps are ``in_hw`` /
    ``out_hw`` (for a linear layer: ``(positions, 1)`` both, e.g. ``(1, 1)``)."""
    if spec.linear:
        return math.prod(out_hw) * spec.ranks[0] * (spec.in_channels + spec.out_channels)
    return _conv_macs(spec, in_hw, out_hw)


def _conv_macs(spec: LayerSpec, in_hw: Pair, out_hw: Pair) -> int:
    c_in, c_out, (kh, kw) = spec.in_channels, spec.out_channels, spec.kernel
    hw_in, hw_out = math.prod(in_hw), math.prod(out_hw)
    if spec.method == "svd":
        return hw_out * spec.ranks[0] * (c_in * kh * kw + c_out)
    if spec.method == "spatial":
        rank, tall = spec.ranks[0], out_hw[0] * in_hw[1]
        return rank * (c_in * kh * tall + c_out * kw * hw_out)
    if spec.method == "cp":
        rank, tall = spec.ranks[0], out_hw[0] * in_hw[1]
        return rank * (c_in * hw_in + kh * tall + kw * hw_out + c_out * hw_out)
    r_out, r_in = spec.ranks
    macs = r_in * r_out * kh * kw * hw_out
    if r_in < c_in:
        macs += c_in * r_in * hw_in
    if r_out < c_out:
        macs += r_out * c_out * hw_out
    return macs


def original_macs(spec: LayerSpec, out_hw: Pair) -> int:
    """MACs of the unfactorized layer for one sample."""
    kh, kw = spec.kernel
    return math.prod(out_hw) * spec.in_channels * spec.out_channels * kh * kw
