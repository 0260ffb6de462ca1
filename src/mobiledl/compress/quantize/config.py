"""``QuantConfig``: one typed description of a linear quantization, shared by PTQ and QAT.

Like torchao's configs, the same object drives post-training quantization (``quantize``) and
quantization-aware training (``qat``), and it is what a saved model records so that
``load_model`` can rebuild the quantized structure.
"""

from __future__ import annotations

import dataclasses
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mobiledl.compress.quantize.observers import OBSERVERS, PER_CHANNEL_OBSERVERS
from mobiledl.compress.quantize.quantizer import MAX_BITS, MIN_BITS, QuantSpec
from mobiledl.errors import UserError

QAT_METHODS = ("ste", "lsq", "pact")
AUTO = "auto"
# Tried in this order by ``observer="auto"``; the first of equally accurate ones wins.
AUTO_OBSERVERS = ("minmax", "percentile", "mse", "kl")


@dataclass
class QuantConfig:
    """How to quantize weights and activations.

    - ``weight_bits`` / ``act_bits``: 2..8. ``layer_bits`` overrides the weight bits of
      named layers (mixed precision).
    - ``per_channel``: one weight scale per output channel (else per tensor).
    - ``symmetric``: symmetric weight grid (zero point 0); ``act_symmetric`` likewise for
      activations (default asymmetric, unsigned: ReLU outputs use the whole grid).
    - ``observer``: activation calibration — minmax, moving_average, percentile, mse, kl,
      or ``auto``: calibrate with each of ``AUTO_OBSERVERS`` and keep the one whose quantized
      model is most accurate on the task's validation split (``quantize`` records the
      observer it chose); ``weight_observer``: minmax or mse.
    - ``calibration_samples``: training samples used to calibrate.
    - ``equalize``: cross-layer equalization (Nagel et al. 2019) before choosing scales.
    - ``bias_correction``: empirical bias correction (Nagel et al. 2019).
    - ``adaround`` / ``adaround_iters``: learned weight rounding (Nagel et al. 2020).
    - ``reduce_range``: 8-bit weights use 7 bits (as ONNX Runtime's option of that name).
      x86 CPUs without VNNI run u8 x s8 products with ``vpmaddubsw``, whose int16 pair sums
      saturate when both codes are large; 7-bit weights cannot saturate, so the engine
      computes exactly what we simulate. ``None`` (default): decided by ``quantize`` —
      on for x86 CPUs without VNNI, off elsewhere.
    - ``quantize_output``: also quantize the model's output (logits stay float by default).
    - ``qat_method``: how ``qat`` trains the quantizers — ste (Jacob et al. 2018), lsq
      (Esser et al. 2020) or pact (Choi et al. 2018).
    """

    weight_bits: int = 8
    act_bits: int = 8
    per_channel: bool = True
    symmetric: bool = True
    act_symmetric: bool = False
    observer: str = "minmax"
    weight_observer: str = "minmax"
    calibration_samples: int = 512
    equalize: bool = False
    bias_correction: bool = False
    adaround: bool = False
    adaround_iters: int = 500
    reduce_range: bool | None = None
    quantize_output: bool = False
    layer_bits: dict[str, int] = field(default_factory=dict)
    qat_method: str = "ste"

    def __post_init__(self) -> None:
        for name in ("weight_bits", "act_bits"):
            _check_bits(name, getattr(self, name))
        for layer, bits in self.layer_bits.items():
            _check_bits(f"layer_bits['{layer}']", bits)
        if self.observer not in (*OBSERVERS, AUTO):
            raise UserError(
                f"observer must be one of {', '.join(OBSERVERS)} or {AUTO}; got '{self.observer}'"
            )
        if self.weight_observer not in PER_CHANNEL_OBSERVERS:
            raise UserError(
                f"weight_observer must be one of {', '.join(PER_CHANNEL_OBSERVERS)}; "
                f"got '{self.weight_observer}'"
            )
        if self.calibration_samples < 1:
            raise UserError(f"calibration_samples must be >= 1; got {self.calibration_samples}")
        if self.adaround_iters < 1:
            raise UserError(f"adaround_iters must be >= 1; got {self.adaround_iters}")
        if self.qat_method not in QAT_METHODS:
            raise UserError(
                f"qat_method must be one of {', '.join(QAT_METHODS)}; got '{self.qat_method}'"
            )

    def weight_spec(self, layer: str) -> QuantSpec:
        """The weight grid of the layer called ``layer``."""
        bits = self.layer_bits.get(layer, self.weight_bits)
        if self.reduce_range and bits == MAX_BITS:
            bits -= 1
        return QuantSpec(bits, self.symmetric, self.per_channel, 0)

    def resolved(self) -> QuantConfig:
        """This config with ``reduce_range`` decided for the CPU we run on."""
        if self.reduce_range is not None:
            return self
        return dataclasses.replace(self, reduce_range=int8_products_saturate())

    def act_spec(self) -> QuantSpec:
        """The grid of every activation."""
        return QuantSpec(self.act_bits, self.act_symmetric)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (what a saved model records)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QuantConfig:
        """The config a ``to_dict`` came from; unknown keys raise ``UserError``."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UserError(f"unknown QuantConfig field(s): {', '.join(unknown)}")
        return cls(**data)


def int8_products_saturate() -> bool:
    """True on x86 CPUs without VNNI, where ONNX Runtime's u8 x s8 kernels can saturate."""
    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686"):
        return False
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    flags = set(cpuinfo.split())
    return not flags & {"avx512_vnni", "avx_vnni", "amx_int8"}


def _check_bits(name: str, bits: Any) -> None:
    if isinstance(bits, bool) or not isinstance(bits, int) or not MIN_BITS <= bits <= MAX_BITS:
        raise UserError(f"{name} must be an integer in [{MIN_BITS}, {MAX_BITS}]; got {bits!r}")
