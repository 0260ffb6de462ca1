"""Efficiency models of sub-networks: latency lookup table, learned latency predictor, MACs and
peak activation memory.

- **Latency lookup table** (ProxylessNAS, Cai et al., ICLR 2019, Sec. 3.3; OFA, Cai et al.,
  ICLR 2020, Sec. 3.3): every distinct unit of the space — the stem (with the input resize)
  at each resolution, each block shape (stage, first or later block, kernel, expand ratio,
  resolution) and the head — is exported alone to ONNX and timed in ONNX Runtime on this
  machine (one intra-op thread, interleaved medians, ``time.thread_time`` so other processes
  do not inflate it).
- **Latency predictor**: a sum of table entries counts each unit's per-call overhead once per
  unit, and operator fusion across units is missed; :class:`LatencyPredictor` learns the
  correction ``a * lut_sum + b * units + c`` from measured sub-networks (least squares on the
  relative error).
- **MACs and peak activation memory** come from ``mobiledl.profile`` run on each unit: MACs
  add up; the peak of a chain of units is the largest unit peak (the microcontroller budgets
  of MCUNet, Lin et al. 2020).
"""

from __future__ import annotations

import copy
import math
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mobiledl.automl.nas.elastic import OFASupernet, Resize
from mobiledl.automl.nas.space import Arch, Resolution
from mobiledl.deploy import get_engine, interleaved_benchmark
from mobiledl.errors import UserError
from mobiledl.profile import profile_model

UnitKey = tuple[Any, ...]
GROUP = 512  # runners timed together (interleaved); bounds the ONNX sessions held at once


@dataclass(frozen=True)
class Unit:
    """A piece of a sub-network timed or profiled on its own, with its input shape."""

    key: UnitKey
    module: nn.Module
    input_shape: tuple[int, ...]


def units_of(supernet: OFASupernet, arch: Arch) -> list[UnitKey]:
    """The table keys of the units ``arch`` is made of, in network order."""
    space, res = supernet.space, arch.resolution
    keys: list[UnitKey] = [("stem", res)]
    for slot in space.active_slots(arch):
        stage, index = divmod(slot, space.max_depth)
        keys.append(("block", stage, min(index, 1), arch.kernels[slot], arch.expands[slot], res))
    keys.append(("head", res))
    return keys


def build_unit(supernet: OFASupernet, key: UnitKey) -> Unit:
    """A standalone module (fresh zoo layers) and input shape for one table key."""
    kind, res = key[0], key[-1]
    sizes = _stage_sizes(supernet, res)
    if kind == "stem":
        layers = [Resize(res)] if res != supernet.input_size else []
        module = nn.Sequential(*layers, copy.deepcopy(supernet.stem), copy.deepcopy(supernet.first))
        return Unit(key, module, (1, supernet.in_channels, *supernet.input_size))
    if kind == "head":
        head, classifier = copy.deepcopy(supernet.head), copy.deepcopy(supernet.classifier)
        module = nn.Sequential(head, nn.AdaptiveAvgPool2d(1), nn.Flatten(), classifier)
        return Unit(key, module, (1, supernet.head.conv.in_channels, *sizes[-1]))
    _, stage, index, kernel, expand, _ = key
    block = supernet.blocks[stage * supernet.space.max_depth + index]
    size = sizes[stage] if index == 0 else sizes[stage + 1]
    return Unit(key, block.static_block(kernel, expand), (1, block.in_channels, *size))


def _stage_sizes(supernet: OFASupernet, res: Resolution) -> list[tuple[int, int]]:
    """Spatial size entering each stage, then after the last stage ("same" padding)."""
    h, w = (math.ceil(s / supernet.stem_stride) for s in res)
    sizes = [(h, w)]
    for stage in supernet.space.stages:
        h, w = math.ceil(h / stage.stride), math.ceil(w / stage.stride)
        sizes.append((h, w))
    return sizes


def all_unit_keys(supernet: OFASupernet) -> list[UnitKey]:
    """Every unit any architecture of the space can use."""
    space = supernet.space
    keys: list[UnitKey] = []
    for res in space.resolutions:
        keys.append(("stem", res))
        for stage in range(len(space.stages)):
            for index in (0, 1) if space.max_depth > 1 else (0,):
                for kernel in space.kernel_sizes:
                    keys += [("block", stage, index, kernel, e, res) for e in space.expand_ratios]
        keys.append(("head", res))
    return keys


# ---------------------------------------------------------------- timing


@dataclass
class TimingConfig:
    """How latency is measured: ONNX Runtime, batch 1, one thread, CPU-time clock."""

    warmup: int = 10
    repeats: int = 60
    threads: int = 1
    clock: Callable[[], float] = time.thread_time


def time_modules(
    modules: Sequence[tuple[nn.Module, tuple[int, ...]]], timing: TimingConfig | None = None
) -> list[float]:
    """Median latency (ms) on the default engine of each ``(module, input_shape)``.

    All modules (up to :data:`GROUP` at a time) are exported first and then timed in one
    interleaved run, so each one's samples spread over the whole run and a burst of load
    from other processes hits all of them alike."""
    timing = timing or TimingConfig()
    engine = get_engine()
    medians: list[float] = []
    with tempfile.TemporaryDirectory(prefix="mobiledl-nas-") as folder:
        for start in range(0, len(modules), GROUP):
            runners = {}
            for offset, (module, shape) in enumerate(modules[start : start + GROUP]):
                example = torch.randn(*shape)
                target = Path(folder) / f"m{offset}{engine.suffix}"
                path = engine.export(module.eval(), example, target)
                runner, batch = engine.load(path, threads=timing.threads), example.numpy()
                runners[str(offset)] = lambda r=runner, b=batch: r.run(b)
            stats = interleaved_benchmark(
                runners, timing.warmup, timing.repeats, clock=timing.clock
            )
            medians += [stats[name].median_ms for name in runners]
    return medians


def measure_latency(
    models: Sequence[nn.Module], input_shape: tuple[int, ...], timing: TimingConfig | None = None
) -> list[float]:
    """Measured median latency (ms) of whole models on inputs of ``input_shape``."""
    return time_modules([(model, input_shape) for model in models], timing)


@dataclass
class LatencyTable:
    """Measured latency (ms) of every unit of a space on this machine."""

    entries: dict[UnitKey, float]

    @classmethod
    def build(cls, supernet: OFASupernet, timing: TimingConfig | None = None) -> LatencyTable:
        keys = all_unit_keys(supernet)
        units = [build_unit(supernet, key) for key in keys]
        times = time_modules([(u.module, u.input_shape) for u in units], timing)
        return cls(dict(zip(keys, times, strict=True)))

    def lookup(self, key: UnitKey) -> float:
        if key not in self.entries:
            raise UserError(f"latency table has no entry for unit {key}")
        return self.entries[key]

    def to_dict(self) -> dict[str, Any]:
        return {"entries": [[_jsonable(k), v] for k, v in self.entries.items()]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LatencyTable:
        return cls({_key(k): float(v) for k, v in data["entries"]})


def _jsonable(key: UnitKey) -> list[Any]:
    return [list(part) if isinstance(part, tuple) else part for part in key]


def _key(parts: list[Any]) -> UnitKey:
    return tuple(tuple(p) if isinstance(p, list) else p for p in parts)


@dataclass
class LatencyPredictor:
    """``latency = a * lut_sum + b * units + c`` fitted on measured sub-networks."""

    table: LatencyTable
    coef: list[float] = field(default_factory=lambda: [1.0, 0.0, 0.0])

    def features(self, supernet: OFASupernet, arch: Arch) -> list[float]:
        keys = units_of(supernet, arch)
        return [sum(self.table.lookup(k) for k in keys), float(len(keys)), 1.0]

    def lut_sum(self, supernet: OFASupernet, arch: Arch) -> float:
        return self.features(supernet, arch)[0]

    def predict(self, supernet: OFASupernet, arch: Arch) -> float:
        return float(np.dot(self.coef, self.features(supernet, arch)))

    def fit(
        self, supernet: OFASupernet, archs: Sequence[Arch], measured: Sequence[float]
    ) -> LatencyPredictor:
        """Least squares on the relative error (each row divided by its measurement)."""
        if len(archs) < 3:
            raise UserError("the latency predictor needs at least 3 measured sub-networks")
        x = np.array([self.features(supernet, a) for a in archs], dtype=np.float64)
        y = np.asarray(measured, dtype=np.float64)
        solution, *_ = np.linalg.lstsq(x / y[:, None], np.ones_like(y), rcond=None)
        self.coef = [float(c) for c in solution]
        return self

    def to_dict(self) -> dict[str, Any]:
        return {"table": self.table.to_dict(), "coef": self.coef}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LatencyPredictor:
        return cls(LatencyTable.from_dict(data["table"]), [float(c) for c in data["coef"]])


def mape(predicted: Sequence[float], measured: Sequence[float]) -> float:
    """Mean absolute percentage error, in percent."""
    p, m = np.asarray(predicted), np.asarray(measured)
    return float(100.0 * np.mean(np.abs(p - m) / m))


# ---------------------------------------------------------------- MACs and memory


class CostTable:
    """MACs and peak activation memory of sub-networks from per-unit profiles (cached)."""

    def __init__(self, supernet: OFASupernet) -> None:
        self.supernet = supernet
        self._units: dict[UnitKey, tuple[int, int]] = {}

    def unit_macs(self, key: UnitKey) -> int:
        return self._unit(key)[0]

    def _unit(self, key: UnitKey) -> tuple[int, int]:
        if key not in self._units:
            unit = build_unit(self.supernet, key)
            profile = profile_model(unit.module, torch.zeros(*unit.input_shape))
            self._units[key] = (profile.macs, profile.peak_memory_bytes)
        return self._units[key]

    def macs(self, arch: Arch) -> int:
        return sum(self._unit(k)[0] for k in units_of(self.supernet, arch))

    def peak_memory_bytes(self, arch: Arch) -> int:
        return max(self._unit(k)[1] for k in units_of(self.supernet, arch))
