"""Linear (uniform affine) quantization primitives and fake-quant layers.

A real value ``x`` maps to an integer ``q = clamp(round(x / s) + z, qmin, qmax)`` and back to
``x_hat = (q - z) * s`` (Jacob et al. 2018, "Quantization and Training of Neural Networks for
Efficient Integer-Arithmetic-Only Inference", eq. 1). ``s`` is the scale and ``z`` the zero
point; both are per tensor or per output channel.

- **Symmetric** grids have ``z = 0`` and the narrow signed range ``[-(2^(b-1) - 1), 2^(b-1) - 1]``
  (so -x and x quantize alike; at 2 bits the grid is ternary).
- **Asymmetric** grids use the unsigned range ``[0, 2^b - 1]`` and a zero point chosen so that
  0.0 is exactly representable (zero padding and ReLU outputs stay exact).

Training through rounding uses the straight-through estimator (Bengio et al. 2013): the
gradient of ``round`` is taken as 1, and it is zero where the input was clipped.

Everything here is a stable building block shared by PTQ, QAT, k-means and mixed precision:
``QuantSpec``, ``compute_qparams``, ``quantize_tensor`` / ``dequantize_tensor`` /
``fake_quantize``, ``round_ste`` / ``grad_scale`` and the ``FakeQuantize`` module. The layers
that fake-quantize their weight with it, ``QuantConv2d`` / ``QuantLinear``, are the one quantized
layer family of ``mobiledl.models.quantized`` (shared with sparse update).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from mobiledl.errors import UserError
from mobiledl.models.quantized import GridQuantizer
from mobiledl.models.quantized import QuantConv2d as QuantConv2d  # re-exported, the layer family
from mobiledl.models.quantized import QuantLinear as QuantLinear
from mobiledl.models.quantized import quant_layers as quant_layers

MIN_BITS = 2
MAX_BITS = 8
EPS = 1e-12


@dataclass(frozen=True)
class QuantSpec:
    """How a tensor is quantized: bit width, symmetric or not, per tensor or per channel.

    ``ch_axis`` is the channel dimension of a per-channel spec (0: the output channels of a
    conv or linear weight).
    """

    bits: int = 8
    symmetric: bool = True
    per_channel: bool = False
    ch_axis: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.bits, int) or not MIN_BITS <= self.bits <= MAX_BITS:
            raise UserError(f"bits must be an integer in [{MIN_BITS}, {MAX_BITS}]; got {self.bits}")

    @property
    def qmin(self) -> int:
        return -(2 ** (self.bits - 1) - 1) if self.symmetric else 0

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1 if self.symmetric else 2**self.bits - 1

    @property
    def signed(self) -> bool:
        """True for a signed integer container (int8), False for unsigned (uint8)."""
        return self.qmin < 0


def reduce_dims(x: Tensor, spec: QuantSpec) -> tuple[int, ...]:
    """The dimensions one scale covers: all, or all but ``spec.ch_axis``."""
    if not spec.per_channel:
        return tuple(range(x.dim()))
    axis = spec.ch_axis % x.dim()
    return tuple(d for d in range(x.dim()) if d != axis)


def tensor_range(x: Tensor, spec: QuantSpec) -> tuple[Tensor, Tensor]:
    """``(min, max)`` of ``x``: scalars (shape ``[1]``) or one value per channel."""
    dims = reduce_dims(x, spec)
    lo, hi = x.detach().amin(dim=dims), x.detach().amax(dim=dims)
    return lo.reshape(-1).float(), hi.reshape(-1).float()


def compute_qparams(lo: Tensor, hi: Tensor, spec: QuantSpec) -> tuple[Tensor, Tensor]:
    """Scale (float32) and zero point (int32) that cover ``[lo, hi]`` with ``spec``'s grid.

    The range is widened to include 0. Symmetric: ``s = max(|lo|, |hi|) / qmax``, ``z = 0``.
    Asymmetric: ``s = (hi - lo) / (qmax - qmin)``, ``z = qmin - round(lo / s)``.
    """
    lo = torch.minimum(lo.float(), torch.zeros_like(lo, dtype=torch.float32))
    hi = torch.maximum(hi.float(), torch.zeros_like(hi, dtype=torch.float32))
    if spec.symmetric:
        scale = torch.maximum(-lo, hi) / spec.qmax
        scale = torch.where(scale > EPS, scale, torch.ones_like(scale))
        return scale, torch.zeros_like(scale, dtype=torch.int32)
    scale = (hi - lo) / (spec.qmax - spec.qmin)
    scale = torch.where(scale > EPS, scale, torch.ones_like(scale))
    zero_point = torch.clamp(spec.qmin - torch.round(lo / scale), spec.qmin, spec.qmax)
    return scale, zero_point.to(torch.int32)


def _broadcast(param: Tensor, x: Tensor, spec: QuantSpec) -> Tensor:
    """``param`` (per-channel vector or scalar) shaped to broadcast against ``x``."""
    if not spec.per_channel or param.numel() == 1:
        return param.reshape(())
    shape = [1] * x.dim()
    shape[spec.ch_axis % x.dim()] = -1
    return param.reshape(shape)


def quantize_tensor(x: Tensor, scale: Tensor, zero_point: Tensor, spec: QuantSpec) -> Tensor:
    """Integer codes ``clamp(round(x / s) + z, qmin, qmax)`` (int32; round half to even)."""
    s, z = _broadcast(scale, x, spec), _broadcast(zero_point, x, spec)
    q = torch.clamp(torch.round(x / s) + z, spec.qmin, spec.qmax)
    return q.to(torch.int32)


def dequantize_tensor(q: Tensor, scale: Tensor, zero_point: Tensor, spec: QuantSpec) -> Tensor:
    """Real values ``(q - z) * s`` of integer codes."""
    s, z = _broadcast(scale, q, spec), _broadcast(zero_point, q, spec)
    return (q.float() - z) * s


def fake_quantize(x: Tensor, scale: Tensor, zero_point: Tensor, spec: QuantSpec) -> Tensor:
    """``dequantize(quantize(x))`` with the clipped straight-through gradient.

    Uses PyTorch's fused ``fake_quantize_per_{tensor,channel}_affine`` kernels, whose
    gradient is 1 inside the grid's range and 0 where ``x`` was clipped (Bengio et al. 2013;
    Jacob et al. 2018), and which export to ONNX QuantizeLinear/DequantizeLinear pairs.
    """
    axis = spec.ch_axis % x.dim() if spec.per_channel and scale.numel() > 1 else None
    return _fake_quantize_range(x, scale, zero_point, spec.qmin, spec.qmax, axis)


def _fake_quantize_range(
    x: Tensor, scale: Tensor, zero_point: Tensor, qmin: int, qmax: int, axis: int | None
) -> Tensor:
    zero_point = zero_point.to(torch.int32)
    if axis is not None:
        return torch.fake_quantize_per_channel_affine(
            x, scale.float(), zero_point, axis, qmin, qmax
        )
    return torch.fake_quantize_per_tensor_affine(
        x, scale.float().reshape(1), zero_point.reshape(1), qmin, qmax
    )


class _RoundSTE(torch.autograd.Function):
    """``round`` forward, identity backward (Bengio et al. 2013)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        return torch.round(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        return grad


def round_ste(x: Tensor) -> Tensor:
    """Round to the nearest integer; the gradient passes straight through."""
    return _RoundSTE.apply(x)


def grad_scale(x: Tensor, factor: float) -> Tensor:
    """``x`` in the forward pass; its gradient multiplied by ``factor`` (Esser et al. 2020)."""
    return (x - x * factor).detach() + x * factor


# ---------------------------------------------------------------- fake-quant module


def container_range(spec: QuantSpec) -> tuple[int, int]:
    """The full range of the 8-bit integer type holding ``spec``'s codes (int8 or uint8)."""
    return (-128, 127) if spec.signed else (0, 255)


class FakeQuantize(GridQuantizer):
    """Simulated quantization of a tensor: observe ranges, then quantize and dequantize.

    ``scale`` and ``zero_point`` are buffers (one entry, or ``channels`` entries for a
    per-channel spec). Flags set the behaviour:

    - ``observing``: feed every input to ``observer`` (calibration);
    - ``dynamic``: in training mode, observe every input and recompute ``scale`` /
      ``zero_point`` from the observer (QAT: weights and activations move as they train);
    - ``quantizing``: return the fake-quantized input (else the input unchanged).

    A fresh module passes inputs through unchanged (``quantizing = False``) until it is
    calibrated: ``update_qparams`` / ``set_qparams`` set the grid, ``enable`` turns it on.
    """

    def __init__(self, spec: QuantSpec, observer: nn.Module | None = None, channels: int = 1):
        super().__init__()
        self.spec = spec
        self.observer = observer
        self.channels = channels if spec.per_channel else 1
        self.register_buffer("scale", torch.ones(self.channels))
        self.register_buffer("zero_point", torch.zeros(self.channels, dtype=torch.int32))
        self.observing = False
        self.dynamic = False
        self.quantizing = False

    def extra_repr(self) -> str:
        kind = "symmetric" if self.spec.symmetric else "asymmetric"
        granularity = "per-channel" if self.spec.per_channel else "per-tensor"
        return f"bits={self.spec.bits}, {kind}, {granularity}"

    def qparams(self) -> tuple[Tensor, Tensor]:
        """The scale and zero point in use now."""
        return self.scale, self.zero_point

    def set_qparams(self, scale: Tensor, zero_point: Tensor) -> None:
        """Fix the scale and zero point (their shapes must match the buffers)."""
        self.scale.copy_(scale.reshape(self.scale.shape))
        self.zero_point.copy_(zero_point.reshape(self.zero_point.shape).to(torch.int32))

    def enable(self, on: bool = True) -> None:
        """Start (or stop) quantizing; observing stops either way."""
        self.quantizing = on
        self.observing = False

    @torch.no_grad()
    def update_qparams(self) -> None:
        """Set ``scale`` / ``zero_point`` from what the observer has seen."""
        if self.observer is None:
            raise UserError("FakeQuantize.update_qparams needs an observer")
        self.set_qparams(*self.observer.qparams(self.spec))

    def code_range(self) -> tuple[int, int]:
        """``(qmin, qmax)`` of the spec."""
        return self.spec.qmin, self.spec.qmax

    def widened(self) -> FakeQuantize:
        """The same grid in its 8-bit container (a ``b``-bit grid is a subset of it), fixed."""
        scale, zero_point = self.qparams()
        spec = dataclasses.replace(self.spec, bits=MAX_BITS)
        wide = FakeQuantize(spec, None, scale.numel())
        wide.set_qparams(scale.detach(), zero_point.detach())
        wide.enable(self.quantizing)
        return wide

    def real_range(self) -> tuple[Tensor, Tensor]:
        """The real interval ``[(qmin - z) s, (qmax - z) s]`` the grid covers."""
        scale, zero_point = self.qparams()
        return (self.spec.qmin - zero_point) * scale, (self.spec.qmax - zero_point) * scale

    def forward(self, x: Tensor, observe: bool = True) -> Tensor:
        """Fake-quantize ``x``; ``observe=False`` re-applies the grid without observing."""
        tracking = self.dynamic and self.training and observe
        if self.observer is not None and observe and (self.observing or tracking):
            self.observer(x.detach())
            if tracking:
                self.update_qparams()
        if not self.quantizing:
            return x
        return self._fake_quantize(x)

    def _fake_quantize(self, x: Tensor) -> Tensor:
        return fake_quantize(x, self.scale, self.zero_point, self.spec)

    lowers_to_qdq = True

    def lower(self, keep_quantization: bool = True) -> nn.Module:
        """The fixed grid as a ``QuantizeDequantize`` step (``nn.Identity`` when not quantizing
        or when the float form is asked for); see ``mobiledl.deploy.lowering``."""
        if not (self.quantizing and keep_quantization):
            return PassThrough()
        scale, zero_point = (p.detach().clone() for p in self.qparams())
        return QuantizeDequantize(self.spec, scale, zero_point)


class PassThrough(nn.Module):
    """A lowered quantizer that is off: returns its input (called as the quantizer was)."""

    def forward(self, x: Tensor, observe: bool = True) -> Tensor:
        return x


class QuantizeDequantize(nn.Module):
    """A fixed grid in the form ONNX exports as a QuantizeLinear / DequantizeLinear pair.

    ONNX QuantizeLinear only knows int8/uint8, so a ``b < 8``-bit grid is clamped to its real
    range first and then quantized with the 8-bit container's range at the same scale and zero
    point: the values are identical to the ``b``-bit fake quantization.
    """

    def __init__(self, spec: QuantSpec, scale: Tensor, zero_point: Tensor) -> None:
        super().__init__()
        self.spec = spec
        self.register_buffer("scale", scale.reshape(-1).float())
        self.register_buffer("zero_point", zero_point.reshape(-1).to(torch.int32))

    def forward(self, x: Tensor, observe: bool = True) -> Tensor:
        """``observe`` is accepted (and ignored) as the ``FakeQuantize`` it replaces takes it."""
        channels = self.scale.numel()
        axis = self.spec.ch_axis % x.dim() if channels > 1 else None
        if self.spec.bits < MAX_BITS:
            shape = [1] * x.dim()
            if axis is not None:
                shape[axis] = channels
            lo = ((self.spec.qmin - self.zero_point) * self.scale).reshape(shape)
            hi = ((self.spec.qmax - self.zero_point) * self.scale).reshape(shape)
            x = torch.clamp(x, lo, hi)
        qmin, qmax = container_range(self.spec)
        return _fake_quantize_range(x, self.scale, self.zero_point, qmin, qmax, axis)


def fake_quantizers(model: nn.Module) -> dict[str, FakeQuantize]:
    """Every ``FakeQuantize`` of ``model`` (weights and activations) by qualified name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, FakeQuantize)}


@contextlib.contextmanager
def fake_quant_disabled(model: nn.Module) -> Iterator[None]:
    """Run ``model`` in float inside the block: every ``FakeQuantize`` passes values through."""
    quantizers = list(fake_quantizers(model).values())
    states = [q.quantizing for q in quantizers]
    for q in quantizers:
        q.quantizing = False
    try:
        yield
    finally:
        for q, state in zip(quantizers, states, strict=True):
            q.quantizing = state
