"""Fixed-point requantization (Jacob et al. 2018, "Quantization and Training of Neural
Networks for Efficient Integer-Arithmetic-Only Inference", Sec. 2.2), as gemmlowp and TFLite
compute it.

A real multiplier ``M = s_in * s_w / s_out`` is stored as ``M = M0 * 2**(shift - 31)`` with
``M0`` a Q31 int32 in ``[2**30, 2**31)``; ``multiply_by_quantized_multiplier`` applies it to
int32 accumulators in one of three ways (``ROUNDINGS``):

- ``"even"`` (the default): one rounding of the exact 64-bit product ``acc * M0`` by
  ``k = 31 - shift`` bits, ties to even: QuantizeLinear's rule, so the result is the ONNX
  graph's own value (and ONNX Runtime's);
- ``"up"``: one rounding, ties up, ``(acc * M0 + 2**(k-1)) >> k`` (TFLite's
  ``TFLITE_SINGLE_ROUNDING``, CMSIS-NN's requantize; one ``SMULL`` on a Cortex-M);
- ``"double"``: gemmlowp's saturating rounding doubling high multiply (the high 32 bits of
  ``2 * acc * M0``, rounded) then a rounding right shift by ``-shift`` (TFLite's default).

Rounding twice loses the product's low bits before the shift: for a small accumulator the
high product keeps only a few bits, and about 0.3-1% of a layer's outputs land one step off
the exact ``round(acc * M)``, which then compounds through a deep net. Ties matter too: an
average pool over 2x2 divides by 4 exactly, and ties up vs ties to even differs on ~10% of
its outputs. Rounding once to even reproduces ONNX Runtime's int8 kernels almost everywhere
(tests/deploy/mcu); all three are integer-only.
Only ``quantize_multiplier`` touches floats, once, when a model is loaded.
"""

from __future__ import annotations

import math

import numpy as np

INT32_MIN = -(1 << 31)
INT32_MAX = (1 << 31) - 1
Q31_ONE = 1 << 31
EVEN, UP, DOUBLE = "even", "up", "double"
ROUNDINGS = (EVEN, UP, DOUBLE)
#: Largest shift the single-rounding paths take (they shift right by ``31 - shift >= 1``).
MAX_SHIFT = 30


def quantize_multiplier(real: float) -> tuple[int, int]:
    """``(M0, shift)`` with ``real ~= M0 * 2**(shift - 31)``, ``M0`` a Q31 int32; ``(0, 0)``
    for ``real == 0``."""
    if real < 0 or not math.isfinite(real):
        raise ValueError(f"requantization multiplier must be finite and >= 0, got {real}")
    if real == 0:
        return 0, 0
    fraction, shift = math.frexp(real)  # real = fraction * 2**shift, fraction in [0.5, 1)
    m0 = round(fraction * Q31_ONE)
    if m0 == Q31_ONE:
        m0, shift = m0 // 2, shift + 1
    if shift > MAX_SHIFT:
        raise ValueError(f"requantization multiplier {real} is too large (>= 2**{MAX_SHIFT})")
    return m0, shift


def quantize_multipliers(reals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``quantize_multiplier`` of each element: int32 ``M0`` and int32 shifts."""
    pairs = [quantize_multiplier(float(r)) for r in np.asarray(reals, np.float64).reshape(-1)]
    m0 = np.array([p[0] for p in pairs], dtype=np.int32)
    shift = np.array([p[1] for p in pairs], dtype=np.int32)
    return m0, shift


def saturating_rounding_doubling_high_mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The high 32 bits of ``2 * a * b`` rounded to nearest (gemmlowp's SRDHM), int32."""
    a64, b64 = np.asarray(a, np.int64), np.asarray(b, np.int64)
    product = a64 * b64
    nudge = np.where(product >= 0, np.int64(1 << 30), np.int64(1 - (1 << 30)))
    total = product + nudge
    high = np.sign(total) * (np.abs(total) >> 31)  # C division truncates toward zero
    overflow = (a64 == INT32_MIN) & (b64 == INT32_MIN)
    return np.where(overflow, INT32_MAX, high).astype(np.int32)


def rounding_divide_by_pot(x: np.ndarray, exponent: np.ndarray) -> np.ndarray:
    """``x / 2**exponent`` rounded to nearest, ties away from zero (gemmlowp), int32."""
    x64, e64 = np.asarray(x, np.int64), np.asarray(exponent, np.int64)
    mask = (np.int64(1) << e64) - 1
    remainder = x64 & mask
    threshold = (mask >> 1) + (x64 < 0)
    return ((x64 >> e64) + (remainder > threshold)).astype(np.int32)


def multiply_by_quantized_multiplier(
    acc: np.ndarray, m0: np.ndarray, shift: np.ndarray, rounding: str = EVEN
) -> np.ndarray:
    """``acc * M0 * 2**(shift - 31)`` in integers, rounded as ``rounding`` says (module
    docstring)."""
    if rounding in (EVEN, UP):
        return _single_rounding(acc, m0, shift, ties_to_even=rounding == EVEN)
    if rounding != DOUBLE:
        raise ValueError(f"rounding must be one of {', '.join(ROUNDINGS)}, got {rounding!r}")
    shift64 = np.asarray(shift, np.int64)
    left = np.maximum(shift64, 0)
    right = np.maximum(-shift64, 0)
    shifted = np.clip(np.asarray(acc, np.int64) << left, INT32_MIN, INT32_MAX)
    return rounding_divide_by_pot(saturating_rounding_doubling_high_mul(shifted, m0), right)


def _single_rounding(
    acc: np.ndarray, m0: np.ndarray, shift: np.ndarray, ties_to_even: bool
) -> np.ndarray:
    """``round(acc * M0 / 2**(31 - shift))`` from the exact 64-bit product, ties up or to
    even (a tie rounds down when the truncated quotient is even: one bit test)."""
    total = 31 - np.asarray(shift, np.int64)
    product = np.asarray(acc, np.int64) * np.asarray(m0, np.int64)
    half = np.int64(1) << (total - 1)
    if ties_to_even:
        half = half - 1 + ((product >> total) & 1)
    rounded = (product + half) >> total
    return np.clip(rounded, INT32_MIN, INT32_MAX).astype(np.int32)


def saturate(values: np.ndarray, low: int, high: int, dtype: type = np.int8) -> np.ndarray:
    """Clamp integer ``values`` to ``[low, high]`` and cast to ``dtype``."""
    return np.clip(values, low, high).astype(dtype)
