"""Calibration observers: watch tensors, then pick the range a quantization grid covers.

- ``minmax``: the running minimum and maximum (the default of most toolkits).
- ``moving_average``: an exponential moving average of per-batch minima and maxima
  (Jacob et al. 2018, Sec. 3.1), robust to a few unusual batches.
- ``percentile``: clip at a percentile of the value distribution (e.g. 99.99%), which
  ignores rare outliers (McKinstry et al. 2019; Wu et al. 2020).
- ``mse``: the clipping range that minimizes the mean squared quantization error, including
  the clipping error of outliers (Banner et al. 2019; Sung et al. 2015).

There is no KL (entropy) observer. TensorRT's entropy calibration (Migacz 2017) was
implemented and measured: KL ignores how far a clipped value moves, so on heavy-tailed
activations its divergence is flat over a wide band of thresholds and its minimum clips
outliers that carry the signal (MobileNetV1 on mnist1d: 4.4 points below min-max at 8 bits,
from one depthwise activation clipped at 9.6 of 21.1, 0.08% of its values). ``mse`` weighs
the clipping error by distance and covers the same need.

``percentile`` and ``mse`` build a 2048-bin histogram over the observed range; when a
later batch widens the range, the histogram is re-binned by interpolating its cumulative
counts. ``mse`` on a per-channel tensor (weights) searches each channel on the data itself.
Observer state is not saved with a model: only the resulting scales are.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor, nn

from mobiledl.compress.quantize.quantizer import (
    QuantSpec,
    compute_qparams,
    fake_quantize,
    tensor_range,
)
from mobiledl.errors import UserError

HISTOGRAM_BINS = 2048
MSE_CANDIDATES = 100


class Observer(nn.Module, ABC):
    """Base class: ``forward(x)`` records ``x`` and returns it; ``qparams(spec)`` decides.

    ``ch_axis`` is ``None`` for one range per tensor, else the channel dimension.
    """

    def __init__(self, ch_axis: int | None = None) -> None:
        super().__init__()
        self.ch_axis = ch_axis

    def forward(self, x: Tensor) -> Tensor:
        self.observe(x.detach().float())
        return x

    @abstractmethod
    def observe(self, x: Tensor) -> None:
        """Record a (detached, float) tensor."""

    @abstractmethod
    def range(self, spec: QuantSpec) -> tuple[Tensor, Tensor]:
        """``(lo, hi)`` to cover, as 1-D tensors (one entry, or one per channel)."""

    @abstractmethod
    def reset(self) -> None:
        """Forget everything observed."""

    def qparams(self, spec: QuantSpec) -> tuple[Tensor, Tensor]:
        """Scale and zero point of ``spec``'s grid over the chosen range."""
        lo, hi = self.range(spec)
        return compute_qparams(lo, hi, spec)

    def _spec(self) -> QuantSpec:
        """A spec describing only the granularity (for ``tensor_range``)."""
        return QuantSpec(per_channel=self.ch_axis is not None, ch_axis=self.ch_axis or 0)

    def _require_data(self, seen: bool) -> None:
        if not seen:
            raise UserError(f"{type(self).__name__} has observed no data; calibrate first")


class MinMaxObserver(Observer):
    """Running minimum and maximum."""

    def __init__(self, ch_axis: int | None = None) -> None:
        super().__init__(ch_axis)
        self.register_buffer("min_val", torch.empty(0), persistent=False)
        self.register_buffer("max_val", torch.empty(0), persistent=False)

    def observe(self, x: Tensor) -> None:
        lo, hi = tensor_range(x, self._spec())
        if self.min_val.numel():
            lo, hi = torch.minimum(lo, self.min_val), torch.maximum(hi, self.max_val)
        self.min_val, self.max_val = lo, hi

    def range(self, spec: QuantSpec) -> tuple[Tensor, Tensor]:
        self._require_data(self.min_val.numel() > 0)
        return self.min_val, self.max_val

    def reset(self) -> None:
        self.min_val, self.max_val = torch.empty(0), torch.empty(0)


class MovingAverageObserver(MinMaxObserver):
    """Exponential moving average of batch minima and maxima (Jacob et al. 2018).

    ``averaging_constant = 1`` keeps only the latest batch (the current range of a weight).
    """

    def __init__(self, ch_axis: int | None = None, averaging_constant: float = 0.01) -> None:
        super().__init__(ch_axis)
        if not 0.0 < averaging_constant <= 1.0:
            raise UserError(f"averaging_constant must lie in (0, 1]; got {averaging_constant}")
        self.averaging_constant = averaging_constant

    def observe(self, x: Tensor) -> None:
        lo, hi = tensor_range(x, self._spec())
        if self.min_val.numel():
            c = self.averaging_constant
            lo = self.min_val + c * (lo - self.min_val)
            hi = self.max_val + c * (hi - self.max_val)
        self.min_val, self.max_val = lo, hi


class HistogramObserver(Observer):
    """Per-tensor histogram of the observed values over their (growing) range."""

    def __init__(self, bins: int = HISTOGRAM_BINS) -> None:
        super().__init__(None)
        self.bins = bins
        self.reset()

    def reset(self) -> None:
        self.hist = np.zeros(self.bins, dtype=np.float64)
        self.lo = self.hi = 0.0
        self.seen = False

    def observe(self, x: Tensor) -> None:
        if x.numel() == 0:
            return
        lo, hi = float(x.min()), float(x.max())
        if not self.seen:
            self.lo, self.hi, self.seen = lo, max(hi, lo + 1e-8), True
        elif lo < self.lo or hi > self.hi:
            self._rebin(min(lo, self.lo), max(hi, self.hi))
        counts = torch.histc(x, self.bins, self.lo, self.hi).double().numpy()
        self.hist += counts

    def _rebin(self, lo: float, hi: float) -> None:
        """Spread the counts over ``[lo, hi]`` by interpolating the cumulative histogram."""
        old_edges = np.linspace(self.lo, self.hi, self.bins + 1)
        cdf = np.concatenate([[0.0], np.cumsum(self.hist)])
        new_edges = np.linspace(lo, hi, self.bins + 1)
        self.hist = np.diff(np.interp(new_edges, old_edges, cdf))
        self.lo, self.hi = lo, hi

    def edges(self) -> np.ndarray:
        return np.linspace(self.lo, self.hi, self.bins + 1)

    def centers(self) -> np.ndarray:
        edges = self.edges()
        return (edges[:-1] + edges[1:]) / 2

    def quantile(self, q: float) -> float:
        """The value below which a fraction ``q`` of the observed values lie."""
        cdf = np.concatenate([[0.0], np.cumsum(self.hist)])
        return float(np.interp(q * cdf[-1], cdf, self.edges()))

    def abs_histogram(self) -> tuple[np.ndarray, float]:
        """Histogram of ``|x|`` over ``[0, max|x|]`` (same bin count) and its upper end."""
        amax = max(abs(self.lo), abs(self.hi))
        edges = self.edges()
        cdf = np.concatenate([[0.0], np.cumsum(self.hist)])
        t = np.linspace(0.0, amax, self.bins + 1)
        below_neg = np.interp(-t, edges, cdf)  # count of x < -t
        below_pos = np.interp(t, edges, cdf)  # count of x < t
        return np.diff(below_pos - below_neg), amax

    def _as_range(self, lo: float, hi: float) -> tuple[Tensor, Tensor]:
        return torch.tensor([lo]), torch.tensor([hi])


class PercentileObserver(HistogramObserver):
    """Clip both tails at ``percentile`` (e.g. 99.99: the top and bottom 0.01% are clipped)."""

    def __init__(self, percentile: float = 99.99, bins: int = HISTOGRAM_BINS) -> None:
        if not 50.0 < percentile <= 100.0:
            raise UserError(f"percentile must lie in (50, 100]; got {percentile}")
        self.percentile = percentile
        super().__init__(bins)

    def range(self, spec: QuantSpec) -> tuple[Tensor, Tensor]:
        self._require_data(self.seen)
        q = self.percentile / 100.0
        return self._as_range(self.quantile(1.0 - q), self.quantile(q))


class MSEObserver(HistogramObserver):
    """The clipping range with the least expected squared error (Banner et al. 2019).

    Candidates shrink the observed ``[lo, hi]`` by factors in ``(0, 1]``; each is scored by
    the squared error of fake-quantizing the histogram's bin centers, weighted by counts.
    With ``ch_axis`` set (weights), each channel is searched on the last observed tensor.
    """

    def __init__(self, ch_axis: int | None = None, bins: int = HISTOGRAM_BINS) -> None:
        super().__init__(bins)
        self.ch_axis = ch_axis
        self.data: Tensor | None = None

    def reset(self) -> None:
        super().reset()
        self.data = None

    def observe(self, x: Tensor) -> None:
        if self.ch_axis is not None:
            self.data = x.clone()
        else:
            super().observe(x)

    def range(self, spec: QuantSpec) -> tuple[Tensor, Tensor]:
        if self.ch_axis is not None:
            self._require_data(self.data is not None)
            return _mse_range_per_channel(self.data, self._spec(), spec)
        self._require_data(self.seen)
        values = torch.from_numpy(self.centers()).float()
        counts = torch.from_numpy(self.hist).float()
        factors = torch.linspace(1.0 / MSE_CANDIDATES, 1.0, MSE_CANDIDATES)
        scales, zero_points = compute_qparams(factors * self.lo, factors * self.hi, spec)
        tensor_spec = QuantSpec(spec.bits, spec.symmetric)
        errors = torch.stack(
            [
                _weighted_error(
                    values, counts, scales[i : i + 1], zero_points[i : i + 1], tensor_spec
                )
                for i in range(MSE_CANDIDATES)
            ]
        )
        best = float(factors[int(torch.argmin(errors))])
        return self._as_range(best * self.lo, best * self.hi)


def _weighted_error(
    values: Tensor, counts: Tensor, scale: Tensor, zero_point: Tensor, spec: QuantSpec
) -> Tensor:
    error = values - fake_quantize(values, scale, zero_point, spec)
    return (counts * error.square()).sum()


def _mse_range_per_channel(
    data: Tensor, layout: QuantSpec, spec: QuantSpec
) -> tuple[Tensor, Tensor]:
    """Per-channel shrink factor of ``[min, max]`` with the least squared error."""
    channel_spec = QuantSpec(spec.bits, spec.symmetric, True, layout.ch_axis)
    lo, hi = tensor_range(data, channel_spec)
    dims = [d for d in range(data.dim()) if d != layout.ch_axis % data.dim()]
    best_err = torch.full_like(lo, float("inf"))
    best_lo, best_hi = lo.clone(), hi.clone()
    for factor in torch.linspace(0.2, 1.0, 81):
        scale, zero_point = compute_qparams(lo * factor, hi * factor, channel_spec)
        err = (data - fake_quantize(data, scale, zero_point, channel_spec)).square()
        err = err.sum(dim=dims)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_lo = torch.where(better, lo * factor, best_lo)
        best_hi = torch.where(better, hi * factor, best_hi)
    return best_lo, best_hi


class CalibrationObserver(HistogramObserver):
    """What the min-max, percentile and MSE observers decide from (per tensor): the
    histogram and the running min/max, collected in one calibration pass.

    ``observer(name)`` is an observer of that name holding these statistics, so its range is
    exactly the one it would choose had it watched the same data itself.
    """

    def __init__(self, bins: int = HISTOGRAM_BINS) -> None:
        Observer.__init__(self, None)
        self.minmax = MinMaxObserver()
        self.bins = bins
        self.reset()

    def observe(self, x: Tensor) -> None:
        self.minmax.observe(x)
        super().observe(x)

    def range(self, spec: QuantSpec) -> tuple[Tensor, Tensor]:
        return self.minmax.range(spec)

    def reset(self) -> None:
        self.minmax.reset()
        super().reset()

    def observer(self, name: str) -> Observer:
        """A ``name`` observer that has seen what this one has."""
        observer = make_observer(name)
        if isinstance(observer, HistogramObserver):
            observer.hist, observer.seen = self.hist.copy(), self.seen
            observer.lo, observer.hi = self.lo, self.hi
        elif type(observer) is MinMaxObserver:
            observer.min_val, observer.max_val = self.minmax.min_val, self.minmax.max_val
        else:
            raise UserError(f"observer '{name}' cannot be derived from one calibration pass")
        return observer


OBSERVERS: dict[str, Callable[..., Observer]] = {
    "minmax": MinMaxObserver,
    "moving_average": MovingAverageObserver,
    "percentile": lambda ch_axis=None: PercentileObserver(),
    "mse": MSEObserver,
}
PER_CHANNEL_OBSERVERS = ("minmax", "moving_average", "mse")


def make_observer(name: str, ch_axis: int | None = None) -> Observer:
    """An observer by name; ``ch_axis`` for one range per channel (weights)."""
    if name not in OBSERVERS:
        raise UserError(f"unknown observer '{name}'; choose from {', '.join(OBSERVERS)}")
    if ch_axis is not None and name not in PER_CHANNEL_OBSERVERS:
        raise UserError(
            f"observer '{name}' is per tensor only; per-channel observers: "
            f"{', '.join(PER_CHANNEL_OBSERVERS)}"
        )
    return OBSERVERS[name](ch_axis=ch_axis)
