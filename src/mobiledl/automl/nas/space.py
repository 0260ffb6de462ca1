"""The MobileNetV3-style MBConv search space of the once-for-all supernet.

An architecture (:class:`Arch`) picks, for every block slot, a depthwise kernel size and an
expand ratio, for every stage a depth (the first ``d`` blocks are kept), and an input
resolution, as in Once-for-All (Cai et al., "Once-for-All: Train One Network and Specialize it
for Efficient Deployment", ICLR 2020). Slots beyond a stage's depth are stored as 0 so that two
equal networks have equal ``Arch`` values. Mutation and crossover are the evolutionary
operators of the OFA search.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mobiledl.errors import UserError

Resolution = tuple[int, int]


@dataclass(frozen=True)
class StageSpec:
    """One stage: output width, stride of its first block, activation and squeeze-excite."""

    width: int
    stride: int
    act: str = "relu"
    use_se: bool = False


@dataclass(frozen=True)
class SearchSpace:
    """Choices of the elastic supernet (OFA Sec. 3.2) and its fixed stem and head widths."""

    stages: tuple[StageSpec, ...]
    kernel_sizes: tuple[int, ...] = (3, 5, 7)
    expand_ratios: tuple[int, ...] = (3, 4, 6)
    depths: tuple[int, ...] = (2, 3, 4)
    resolutions: tuple[Resolution, ...] = ((16, 16),)
    stem_width: int = 16
    head_width: int = 192

    def __post_init__(self) -> None:
        if not self.stages:
            raise UserError("a search space needs at least one stage")
        for name in ("kernel_sizes", "expand_ratios", "depths", "resolutions"):
            values = getattr(self, name)
            if not values or list(values) != sorted(set(values)):
                raise UserError(f"search space {name} must be increasing and non-empty")
        if any(k % 2 == 0 or k < 1 for k in self.kernel_sizes):
            raise UserError(f"kernel sizes must be odd; got {list(self.kernel_sizes)}")
        if min(self.depths) < 1 or min(self.expand_ratios) < 2:
            raise UserError("depths must be >= 1 and expand ratios >= 2")

    @property
    def max_depth(self) -> int:
        return self.depths[-1]

    @property
    def num_slots(self) -> int:
        return len(self.stages) * self.max_depth

    def restrict(self, **choices: Sequence[Any]) -> SearchSpace:
        """The same space with fewer choices (e.g. ``kernel_sizes=(7,)``), as used by the
        phases of progressive shrinking."""
        return dataclasses.replace(self, **{k: tuple(v) for k, v in choices.items()})

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["resolutions"] = [list(r) for r in self.resolutions]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SearchSpace:
        try:
            return cls(
                stages=tuple(StageSpec(**stage) for stage in data["stages"]),
                kernel_sizes=tuple(data["kernel_sizes"]),
                expand_ratios=tuple(data["expand_ratios"]),
                depths=tuple(data["depths"]),
                resolutions=tuple(tuple(r) for r in data["resolutions"]),
                stem_width=int(data["stem_width"]),
                head_width=int(data["head_width"]),
            )
        except (KeyError, TypeError) as exc:
            raise UserError(f"invalid search space record ({exc})") from None

    # ---------------------------------------------------------------- architectures

    def largest(self) -> Arch:
        return self._uniform(self.kernel_sizes[-1], self.expand_ratios[-1], self.depths[-1], -1)

    def smallest(self) -> Arch:
        return self._uniform(self.kernel_sizes[0], self.expand_ratios[0], self.depths[0], 0)

    def _uniform(self, kernel: int, expand: int, depth: int, res_index: int) -> Arch:
        n = self.num_slots
        depths = (depth,) * len(self.stages)
        return self.make((kernel,) * n, (expand,) * n, depths, self.resolutions[res_index])

    def make(
        self,
        kernels: Sequence[int],
        expands: Sequence[int],
        depths: Sequence[int],
        resolution: Sequence[int],
    ) -> Arch:
        """A canonical ``Arch`` (slots beyond each stage's depth set to 0), validated."""
        if len(kernels) != self.num_slots or len(expands) != self.num_slots:
            raise UserError(f"an architecture of this space has {self.num_slots} block slots")
        if len(depths) != len(self.stages):
            raise UserError(f"an architecture of this space has {len(self.stages)} depths")
        active = [s < d for d in depths for s in range(self.max_depth)]
        arch = Arch(
            tuple(int(k) if on else 0 for k, on in zip(kernels, active, strict=True)),
            tuple(int(e) if on else 0 for e, on in zip(expands, active, strict=True)),
            tuple(int(d) for d in depths),
            (int(resolution[0]), int(resolution[1])),
        )
        self.check(arch)
        return arch

    def check(self, arch: Arch) -> None:
        """``UserError`` naming the first choice that is not in this space."""
        if arch.resolution not in self.resolutions:
            raise UserError(f"resolution {list(arch.resolution)} is not in the search space")
        for stage, depth in enumerate(arch.depths):
            if depth not in self.depths:
                raise UserError(f"stage {stage}: depth {depth} is not in {list(self.depths)}")
        for slot in self.active_slots(arch):
            if arch.kernels[slot] not in self.kernel_sizes:
                raise UserError(f"block slot {slot}: kernel {arch.kernels[slot]} not in space")
            if arch.expands[slot] not in self.expand_ratios:
                raise UserError(f"block slot {slot}: expand {arch.expands[slot]} not in space")

    def active_slots(self, arch: Arch) -> list[int]:
        """Indices of the block slots the architecture uses, in network order."""
        return [
            stage * self.max_depth + block
            for stage, depth in enumerate(arch.depths)
            for block in range(depth)
        ]

    def sample(self, rng: random.Random) -> Arch:
        """A uniformly random architecture."""
        n = self.num_slots
        return self.make(
            [rng.choice(self.kernel_sizes) for _ in range(n)],
            [rng.choice(self.expand_ratios) for _ in range(n)],
            [rng.choice(self.depths) for _ in self.stages],
            rng.choice(self.resolutions),
        )

    def mutate(self, arch: Arch, rng: random.Random, prob: float = 0.1) -> Arch:
        """Resample each choice with probability ``prob`` (OFA's evolutionary mutation)."""
        fresh = self.sample(rng)
        full_k, full_e = self._filled(arch, fresh)

        def pick(old: Any, new: Any) -> Any:
            return new if rng.random() < prob else old

        kernels = [pick(k, n) for k, n in zip(full_k, fresh.kernels_full(self), strict=True)]
        expands = [pick(e, n) for e, n in zip(full_e, fresh.expands_full(self), strict=True)]
        depths = [pick(d, n) for d, n in zip(arch.depths, fresh.depths, strict=True)]
        return self.make(kernels, expands, depths, pick(arch.resolution, fresh.resolution))

    def crossover(self, first: Arch, second: Arch, rng: random.Random) -> Arch:
        """Each choice taken from one parent at random (OFA's crossover)."""
        fresh = self.sample(rng)
        k1, e1 = self._filled(first, fresh)
        k2, e2 = self._filled(second, fresh)
        choose = [rng.random() < 0.5 for _ in range(self.num_slots)]
        kernels = [a if c else b for a, b, c in zip(k1, k2, choose, strict=True)]
        expands = [a if c else b for a, b, c in zip(e1, e2, choose, strict=True)]
        depths = [rng.choice(pair) for pair in zip(first.depths, second.depths, strict=True)]
        resolution = rng.choice([first.resolution, second.resolution])
        return self.make(kernels, expands, depths, resolution)

    def _filled(self, arch: Arch, filler: Arch) -> tuple[list[int], list[int]]:
        """The slot choices of ``arch`` with its unused slots taken from ``filler``."""
        fk, fe = filler.kernels_full(self), filler.expands_full(self)
        kernels = [k or f for k, f in zip(arch.kernels, fk, strict=True)]
        expands = [e or f for e, f in zip(arch.expands, fe, strict=True)]
        return kernels, expands

    def encode(self, arch: Arch) -> list[float]:
        """One-hot kernel and expand per slot (zeros if unused), one-hot depth per stage and
        one-hot resolution: the input of the accuracy predictor (OFA Sec. 3.3)."""
        features: list[float] = []
        for kernel, expand in zip(arch.kernels, arch.expands, strict=True):
            features += [float(kernel == k) for k in self.kernel_sizes]
            features += [float(expand == e) for e in self.expand_ratios]
        for depth in arch.depths:
            features += [float(depth == d) for d in self.depths]
        features += [float(arch.resolution == r) for r in self.resolutions]
        return features


@dataclass(frozen=True)
class Arch:
    """One sub-network: per-slot kernel sizes and expand ratios (0 = unused slot), per-stage
    depths and the input resolution ``(H, W)``."""

    kernels: tuple[int, ...]
    expands: tuple[int, ...]
    depths: tuple[int, ...]
    resolution: Resolution

    def kernels_full(self, space: SearchSpace) -> list[int]:
        return [k or space.kernel_sizes[0] for k in self.kernels]

    def expands_full(self, space: SearchSpace) -> list[int]:
        return [e or space.expand_ratios[0] for e in self.expands]

    def to_dict(self) -> dict[str, list[int]]:
        return {
            "kernels": list(self.kernels),
            "expands": list(self.expands),
            "depths": list(self.depths),
            "resolution": list(self.resolution),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], space: SearchSpace) -> Arch:
        try:
            return space.make(data["kernels"], data["expands"], data["depths"], data["resolution"])
        except (KeyError, TypeError, IndexError) as exc:
            raise UserError(f"invalid architecture record ({exc})") from None

    def label(self) -> str:
        """A short human-readable name, e.g. ``r16-d2.3-k3577-e3466`` (``r1x40`` if not square)."""
        h, w = self.resolution
        res = f"{h}" if h == w else f"{h}x{w}"
        ks = "".join(str(k) for k in self.kernels if k)
        es = "".join(str(e) for e in self.expands if e)
        ds = ".".join(str(d) for d in self.depths)
        return f"r{res}-d{ds}-k{ks}-e{es}"


def default_space(resolutions: Sequence[Resolution] = ((1, 24), (1, 32), (1, 40))) -> SearchSpace:
    """The space of the benchmarks (sized for ``mnist1d`` on two CPU cores): four
    MobileNetV3-style stages of 16-48 channels (h-swish and squeeze-excite in the later ones),
    kernels 3/5/7, expand ratios 3/4/6, depths 2-4 and three input resolutions."""
    return SearchSpace(
        stages=(
            StageSpec(16, 2, "relu", False),
            StageSpec(24, 2, "relu", True),
            StageSpec(32, 2, "hswish", False),
            StageSpec(48, 1, "hswish", True),
        ),
        resolutions=tuple(resolutions),
        head_width=128,
    )


def tiny_space(resolutions: Sequence[Resolution] = ((8, 8),)) -> SearchSpace:
    """A two-stage space for tests and smoke runs (seconds to train)."""
    return SearchSpace(
        stages=(StageSpec(16, 2, "relu", False), StageSpec(24, 2, "hswish", True)),
        kernel_sizes=(3, 5),
        expand_ratios=(2, 3),
        depths=(1, 2),
        resolutions=tuple(resolutions),
        stem_width=8,
        head_width=32,
    )
