"""``FactorizeConfig``: which layers to factorize, how, and how to choose their ranks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from mobiledl.compress.factorize.layers import METHODS
from mobiledl.core.config import MethodConfig
from mobiledl.errors import UserError

#: The rank rule when none is given: keep 90% of each matrix's energy.
DEFAULT_ENERGY = 0.9


@dataclass(frozen=True, kw_only=True)
class FactorizeConfig(MethodConfig):
    """Replace layers by chains of low-rank layers (Cai et al. 2022, Sec. 2.3).

    At most one rank rule is set: ``energy``, ``macs_ratio``, ``vbmf`` or ``ranks``
    (none: ``energy`` 0.9).

    - ``decomposition``: how a ``kh x kw`` convolution is decomposed — ``tucker2`` (Kim et al.
      2016), ``cp`` (Lebedev et al. 2015), ``spatial`` (Jaderberg et al. 2014) or ``svd``
      (channel SVD) — or a sequence of these to choose from per layer (by MAC target: the
      greedy cut decides; by energy or EVBMF: the method saving most MACs; explicit ranks:
      the first). ``Linear`` layers and 1x1 convolutions always use ``svd`` (Denton et
      al. 2014); ``spatial`` falls back to ``svd`` for kernels with a side of 1.
    - ``energy``: keep this fraction of each decomposed matrix's squared singular values.
    - ``macs_ratio``: the whole model keeps at most this fraction of its MACs; ranks are
      chosen greedily by energy lost per MAC saved (Zhang et al. 2016).
    - ``vbmf``: ranks from analytic EVBMF (Nakajima et al. 2013), as Kim et al. 2016.
    - ``ranks``: explicit ranks by module name, ``r`` or ``[r_out, r_in]`` for Tucker-2.
    - ``round_to``: ranks are multiples of this (8 runs faster in ONNX Runtime).
    - ``min_saving``: a layer is factorized only if that cuts its MACs by at least this
      fraction (each factorized layer adds layers, whose fixed costs small savings lose to).
    - ``layers``: module names to consider (default: every ``Linear`` and ungrouped
      ``Conv2d``); ``exclude``: module names never factorized.
    - ``data_aware``: for ``svd`` and ``tucker2``, take the channel factors from the
      principal directions of the layers' responses and inputs on ``calibration_samples``
      training inputs (Zhang et al. 2016) rather than from the weights alone; needs data.
      ``spatial`` and ``cp`` always decompose the weights, as in their papers.
    - ``recalibrate_bn``: with data, re-estimate BatchNorm statistics of the result on the
      calibration inputs (Li et al. 2020).
    - ``iterations``: HOOI / CP-ALS iterations.
    - ``strict``: a MAC target missed by more than 2% is a ``UserError``, not a warning.

    Layers that cannot be decomposed are skipped with one warning naming them and why:
    the projections inside attention modules (their weights are read directly), layers
    the example input never calls, and layers no rank makes cheaper. A MAC target out of
    reach gives the most the layers allow, with a warning giving the ratio reached and
    the layers that blocked it.
    """

    method: ClassVar[str] = "factorize"

    decomposition: str | tuple[str, ...] = "tucker2"
    energy: float | None = None
    macs_ratio: float | None = None
    vbmf: bool = False
    ranks: dict[str, int | tuple[int, ...]] | None = None
    round_to: int = 1
    min_saving: float = 0.0
    layers: tuple[str, ...] | None = None
    exclude: tuple[str, ...] = ()
    iterations: int = 50
    data_aware: bool = True
    calibration_samples: int = 512
    recalibrate_bn: bool = True
    strict: bool = False

    @property
    def methods(self) -> tuple[str, ...]:
        """``decomposition`` as a tuple of decomposition names."""
        if isinstance(self.decomposition, str):
            return (self.decomposition,)
        return tuple(self.decomposition)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not any((self.energy is not None, self.macs_ratio is not None, self.vbmf, self.ranks)):
            object.__setattr__(self, "energy", DEFAULT_ENERGY)
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown or not self.methods:
            name = unknown[0] if unknown else ""
            raise UserError(f"unknown decomposition '{name}'; choose from {', '.join(METHODS)}")
        rules = [
            self.energy is not None,
            self.macs_ratio is not None,
            self.vbmf,
            self.ranks is not None,
        ]
        if sum(rules) != 1:
            raise UserError("set exactly one rank rule: energy, macs_ratio, vbmf or ranks")
        if self.energy is not None and not 0.0 < self.energy <= 1.0:
            raise UserError(f"energy must lie in (0, 1]; got {self.energy}")
        if self.macs_ratio is not None and not 0.0 < self.macs_ratio <= 1.0:
            raise UserError(f"macs_ratio must lie in (0, 1]; got {self.macs_ratio}")
        if not 0.0 <= self.min_saving < 1.0:
            raise UserError(f"min_saving must lie in [0, 1); got {self.min_saving}")
        if self.round_to < 1:
            raise UserError(f"round_to must be >= 1; got {self.round_to}")
        if self.iterations < 1:
            raise UserError(f"iterations must be >= 1; got {self.iterations}")
        if self.calibration_samples < 1:
            raise UserError(f"calibration_samples must be >= 1; got {self.calibration_samples}")
