"""Calibration observers on distributions with a known answer."""

from __future__ import annotations

import pytest
import torch

from mobiledl.compress.quantize.observers import make_observer
from mobiledl.compress.quantize.quantizer import QuantSpec, fake_quantize
from mobiledl.errors import UserError

SPEC = QuantSpec(8, symmetric=False)


pytestmark = pytest.mark.usefixtures("single_thread")


def _with_outliers(seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(100_000, generator=generator)
    x[:5] = 60.0  # 0.005% far outliers
    return x


def _mse(x: torch.Tensor, name: str, spec: QuantSpec) -> float:
    observer = make_observer(name)
    for chunk in x.split(25_000):
        observer(chunk)
    scale, zero_point = observer.qparams(spec)
    return (fake_quantize(x, scale, zero_point, spec) - x).square().mean().item()


def test_minmax_sees_the_whole_range_across_batches() -> None:
    observer = make_observer("minmax")
    observer(torch.tensor([0.0, 1.0]))
    observer(torch.tensor([-2.0, 0.5]))
    lo, hi = observer.range(SPEC)
    assert (lo.item(), hi.item()) == (-2.0, 1.0)


def test_moving_average_smooths_batch_ranges() -> None:
    observer = make_observer("moving_average")
    observer(torch.tensor([0.0, 1.0]))
    observer(torch.tensor([0.0, 11.0]))
    assert observer.range(SPEC)[1].item() == pytest.approx(1.0 + 0.01 * 10.0)


def test_per_channel_minmax() -> None:
    observer = make_observer("minmax", ch_axis=0)
    observer(torch.tensor([[1.0, -1.0], [4.0, 2.0]]))
    lo, hi = observer.range(SPEC)
    assert lo.tolist() == [-1.0, 2.0] and hi.tolist() == [1.0, 4.0]


def test_percentile_clips_outliers() -> None:
    observer = make_observer("percentile")
    observer(_with_outliers())
    lo, hi = observer.range(SPEC)
    assert 3.0 < hi.item() < 10.0  # ignores the 60.0 outliers
    assert -5.0 < lo.item() < -3.0


def test_mse_beats_minmax_with_outliers() -> None:
    x = _with_outliers()
    spec = QuantSpec(4, symmetric=False)
    assert _mse(x, "mse", spec) < 0.5 * _mse(x, "minmax", spec)


def test_kl_clips_outliers_of_a_gaussian() -> None:
    observer = make_observer("kl")
    observer(_with_outliers().abs())
    lo, hi = observer.range(SPEC)
    assert lo.item() == pytest.approx(0.0, abs=1e-3)
    assert 2.0 < hi.item() < 20.0


def test_histogram_rebins_when_the_range_grows() -> None:
    observer = make_observer("percentile")
    observer(torch.linspace(0, 1, 1000))
    observer(torch.linspace(0, 2, 1000))
    assert observer.hist.sum() == pytest.approx(2000)
    assert observer.quantile(0.5) == pytest.approx(0.67, abs=0.02)


def test_unknown_and_per_channel_only_observers_raise() -> None:
    with pytest.raises(UserError, match="unknown observer"):
        make_observer("entropy")
    with pytest.raises(UserError, match="per tensor only"):
        make_observer("kl", ch_axis=0)
