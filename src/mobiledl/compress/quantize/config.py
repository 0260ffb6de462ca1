"""Quantization configs: linear PTQ (``QuantConfig``) and QAT, k-means, binary, ternary and
mixed precision. Each is a ``MethodConfig``: ``apply(model, config, task)`` runs it."""

from __future__ import annotations

import dataclasses
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from mobiledl.compress.quantize.observers import OBSERVERS, PER_CHANNEL_OBSERVERS
from mobiledl.compress.quantize.quantizer import MAX_BITS, MIN_BITS, QuantSpec
from mobiledl.core.config import LayerRule, MethodConfig
from mobiledl.errors import UserError
from mobiledl.train import TrainConfig
from mobiledl.validate import check_number

QAT_METHODS = ("ste", "lsq", "pact")
AUTO = "auto"
# Tried in this order by ``observer="auto"``; the first of equally accurate ones wins.
AUTO_OBSERVERS = ("minmax", "percentile", "mse")


@dataclass(frozen=True, kw_only=True)
class QuantConfig(MethodConfig):
    """Linear post-training quantization of weights and activations (PTQ).

    Like torchao's configs, the same object describes the quantized model that QAT
    (``QATConfig.quant``) trains, and it is what a saved model records so that
    ``load_model`` can rebuild the quantized structure.

    - ``weight_bits`` / ``act_bits``: 2..8.
    - ``per_channel``: one weight scale per output channel (else per tensor).
    - ``symmetric``: symmetric weight grid (zero point 0); ``act_symmetric`` likewise for
      activations (default asymmetric, unsigned: ReLU outputs use the whole grid).
    - ``observer``: activation calibration: minmax, moving_average, percentile, mse, or
      ``auto``: one calibration pass collects each activation's min/max and histogram, each
      of ``AUTO_OBSERVERS`` chooses its ranges from them, and the one whose quantized model
      is most accurate on the task's validation split is kept (the report names it).
    - ``auto_samples``: validation samples (a seeded random subset, the same for every
      observer) that ``auto`` scores each observer on; scoring costs one forward pass per
      observer per sample, so this bounds the time ``auto`` adds to calibration.
    - ``weight_observer``: minmax or mse.
    - ``calibration_samples``: training samples used to calibrate.
    - ``equalize``: cross-layer equalization (Nagel et al. 2019) before choosing scales.
    - ``bias_correction``: empirical bias correction (Nagel et al. 2019).
    - ``adaround`` / ``adaround_iters``: learned weight rounding (Nagel et al. 2020).
    - ``reduce_range``: 8-bit weights use 7 bits (as ONNX Runtime's option of that name).
      x86 CPUs without VNNI run u8 x s8 products with ``vpmaddubsw``, whose int16 pair sums
      saturate when both codes are large; 7-bit weights cannot saturate, so the engine
      computes exactly what we simulate. ``None``: decided for the CPU (on for x86 without
      VNNI, off elsewhere).
    - ``quantize_output``: also quantize the model's output (logits stay float by default).
    - ``overrides``: per-layer ``weight_bits`` for the layers a rule matches.
    """

    method: ClassVar[str] = "ptq"
    layer_fields: ClassVar[tuple[str, ...]] = ("weight_bits",)
    can_skip: ClassVar[bool] = False  # every layer sits between quantized activations

    weight_bits: int = 8
    act_bits: int = 8
    per_channel: bool = True
    symmetric: bool = True
    act_symmetric: bool = False
    observer: str = "minmax"
    weight_observer: str = "minmax"
    calibration_samples: int = 512
    auto_samples: int = 256
    equalize: bool = False
    bias_correction: bool = False
    adaround: bool = False
    adaround_iters: int = 500
    reduce_range: bool | None = None
    quantize_output: bool = False
    overrides: tuple[LayerRule, ...] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("weight_bits", "act_bits"):
            _check_bits(name, getattr(self, name))
        if self.observer == "kl":
            raise UserError(
                "observer 'kl' (entropy calibration) is not offered: it clips outliers that "
                "carry the signal (see mobiledl.compress.quantize.observers); use mse, "
                "percentile or auto"
            )
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
        if self.auto_samples < 1:
            raise UserError(f"auto_samples must be >= 1; got {self.auto_samples}")
        if self.adaround_iters < 1:
            raise UserError(f"adaround_iters must be >= 1; got {self.adaround_iters}")

    def weight_spec(self, layer: str, module: Any = None) -> QuantSpec:
        """The weight grid of the layer called ``layer`` (``module``: that layer)."""
        config = self.for_layer(layer, module)
        bits = config.weight_bits if config is not None else self.weight_bits
        if self.reduce_range and bits == MAX_BITS:
            bits -= 1
        return QuantSpec(bits, self.symmetric, self.per_channel, 0)

    def resolved_for_cpu(self) -> QuantConfig:
        """This config with ``reduce_range`` decided for the CPU we run on."""
        if self.reduce_range is not None:
            return self
        return dataclasses.replace(self, reduce_range=int8_products_saturate())

    def act_spec(self) -> QuantSpec:
        """The grid of every activation."""
        return QuantSpec(self.act_bits, self.act_symmetric)

    @classmethod
    def from_record(cls, data: dict[str, Any]) -> QuantConfig:
        """The config a model file recorded: ``to_dict`` data, or the fields of files written
        before configs were versioned (``layer_bits`` then held the per-layer widths)."""
        if "method" in data:
            return cls.from_fields(data.get("config", {}), "quantization record")
        fields = {k: v for k, v in data.items() if k not in ("layer_bits", "qat_method")}
        rules = [
            {"match": name, "weight_bits": bits}
            for name, bits in data.get("layer_bits", {}).items()
        ]
        return cls.from_fields({**fields, "overrides": rules}, "quantization record")


def _qat_training() -> TrainConfig:
    return TrainConfig(epochs=3, lr=0.005, warmup_epochs=0.0, progress=False)


@dataclass(frozen=True, kw_only=True)
class QATConfig(MethodConfig):
    """Quantization-aware training: start from the PTQ model of ``quant``, then train.

    - ``quant``: the quantized model to train (its ``bias_correction`` is not used).
    - ``algorithm``: how the quantizers train: ``ste`` (Jacob et al. 2018), ``lsq`` (Esser et
      al. 2020) or ``pact`` (Choi et al. 2018).
    - ``train``: the training run (SGD, lr 0.005, no warm-up, 3 epochs by default).
    """

    method: ClassVar[str] = "qat"

    quant: QuantConfig = field(default_factory=QuantConfig)
    algorithm: Literal["ste", "lsq", "pact"] = "ste"
    train: TrainConfig = field(default_factory=_qat_training)


def _kmeans_training() -> TrainConfig:
    return TrainConfig(epochs=0, lr=0.01, progress=False)


@dataclass(frozen=True, kw_only=True)
class KMeansConfig(MethodConfig):
    """K-means weight sharing (Han et al. 2016, Deep Compression stage 2).

    - ``bits``: each layer keeps ``2**bits`` shared values (1..8).
    - ``layers``: module names to quantize (default: every Conv2d and Linear).
    - ``finetune``: centroid fine-tuning after clustering (0 epochs by default).
    - ``overrides``: per-layer ``bits`` (or ``skip``) for the layers a rule matches.
    """

    method: ClassVar[str] = "kmeans"
    layer_fields: ClassVar[tuple[str, ...]] = ("bits",)

    bits: int = 8
    layers: tuple[str, ...] | None = None
    finetune: TrainConfig = field(default_factory=_kmeans_training)
    overrides: tuple[LayerRule, ...] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 1 <= self.bits <= MAX_BITS:
            raise UserError(f"kmeans bits must lie in [1, {MAX_BITS}]; got {self.bits}")


def _lowbit_training() -> TrainConfig:
    return TrainConfig(epochs=3, optimizer="adamw", lr=1e-3, progress=False)


@dataclass(frozen=True, kw_only=True)
class BinaryConfig(MethodConfig):
    """Binary weights ``±alpha`` (BinaryConnect, Courbariaux et al. 2015; XNOR-Net scaling,
    Rastegari et al. 2016), trained with the straight-through estimator.

    - ``layers``: module names (default: every Conv2d/Linear except the first and the last).
    - ``per_channel``: one ``alpha`` per output channel (else per layer).
    - ``train``: STE training after binarizing (AdamW, lr 1e-3, 3 epochs).
    """

    method: ClassVar[str] = "binary"

    layers: tuple[str, ...] | None = None
    per_channel: bool = True
    train: TrainConfig = field(default_factory=_lowbit_training)


@dataclass(frozen=True, kw_only=True)
class TernaryConfig(MethodConfig):
    """Ternary weights: TWN (Li et al. 2016) or TTQ (Zhu et al. 2017).

    - ``algorithm``: ``twn`` (symmetric ``±alpha``) or ``ttq`` (learned positive and negative
      scales).
    - ``threshold``: the factor of ``Delta``: of ``mean|W|`` for TWN (default 0.7), of
      ``max|W|`` for TTQ (default 0.05).
    - ``layers``: module names (default: every Conv2d/Linear except the first and the last).
    - ``per_channel``: scales per output channel (the papers use one per layer).
    - ``train``: STE training after ternarizing (AdamW, lr 1e-3, 3 epochs).
    """

    method: ClassVar[str] = "ternary"

    algorithm: Literal["twn", "ttq"] = "twn"
    threshold: float | None = None
    layers: tuple[str, ...] | None = None
    per_channel: bool = False
    train: TrainConfig = field(default_factory=_lowbit_training)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.threshold is not None:
            check_number(self.threshold, "ternary threshold", 0.0, low_open=True)


def _mixed_training() -> TrainConfig:
    return TrainConfig(epochs=0, lr=0.01, progress=False)


@dataclass(frozen=True, kw_only=True)
class MixedPrecisionConfig(MethodConfig):
    """A bit width per layer for weights and input activations (HAQ, Wang et al. 2019;
    HAWQ, Dong et al. 2019), simulated with fake quantization.

    - ``weight_bits``: weight bits (2..8) of every Conv2d/Linear; ``None`` leaves weights float.
    - ``act_bits``: bits of each such layer's input (2..8); ``None`` leaves inputs float.
    - ``calibration_samples``: training samples that set the activation ranges.
    - ``finetune``: quantization-aware fine-tuning afterwards (0 epochs by default).
    - ``overrides``: per-layer ``weight_bits`` / ``act_bits`` (or ``skip``), e.g. from
      ``propose_bits``; a layer left with neither stays float.
    """

    method: ClassVar[str] = "mixed_precision"
    layer_fields: ClassVar[tuple[str, ...]] = ("weight_bits", "act_bits")

    weight_bits: int | None = 8
    act_bits: int | None = 8
    calibration_samples: int = 512
    finetune: TrainConfig = field(default_factory=_mixed_training)
    overrides: tuple[LayerRule, ...] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("weight_bits", "act_bits"):
            if getattr(self, name) is not None:
                _check_bits(name, getattr(self, name))
        if self.calibration_samples < 1:
            raise UserError(f"calibration_samples must be >= 1; got {self.calibration_samples}")


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
