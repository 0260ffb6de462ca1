"""Does a plan fit a microcontroller's SRAM and flash, and if not, what would make it fit.

The advice is arithmetic on the plan, stated as estimates: activation memory at the peak
scales with the pixels of the input (so with the square of the resolution) and roughly
linearly with the width multiplier; flash is the weights, which channel pruning or a smaller
width shrink. Patch-based inference (MCUNetV2, Lin et al. 2021), which cuts the peak of the
first stages several-fold, is a later slice of issue 16 and is named as such.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from mobiledl.deploy.mcu.planner import MemoryPlan

KB = 1024


@dataclass
class Fit:
    """A plan against an SRAM and a flash budget (bytes)."""

    sram_bytes: int
    flash_bytes: int
    fits_sram: bool
    fits_flash: bool
    advice: list[str] = field(default_factory=list)

    @property
    def fits(self) -> bool:
        return self.fits_sram and self.fits_flash


def check_fit(
    plan: MemoryPlan, sram_bytes: int, flash_bytes: int, without_in_place: int | None = None
) -> Fit:
    """``plan`` against the budgets; ``without_in_place``: the arena without in-place
    depthwise, to say what in-place saves when it is off or what it already saved."""
    fit = Fit(
        sram_bytes,
        flash_bytes,
        plan.arena_bytes <= sram_bytes,
        plan.flash_bytes <= flash_bytes,
    )
    if not fit.fits_sram:
        fit.advice.extend(_sram_advice(plan, sram_bytes, without_in_place))
    if not fit.fits_flash:
        ratio = flash_bytes / plan.flash_bytes
        fit.advice.append(
            f"flash: the weights, biases and multiplier tables take {kb(plan.flash_bytes)}; "
            f"pruning channels or a width multiplier of about x{ratio:.2f} would bring them "
            f"under {kb(flash_bytes)} (weights are stored as int8 codes)"
        )
    return fit


def _sram_advice(plan: MemoryPlan, sram_bytes: int, without_in_place: int | None) -> list[str]:
    graph = plan.graph
    peak = plan.peak_step
    live = ", ".join(f"{t.name} {kb(t.bytes)} (from {t.producer})" for t in peak.live)
    advice = [f"SRAM: at the peak ({peak.layer}, {peak.kind}) these are live: {live}"]
    if not plan.in_place and without_in_place is None:
        advice.append("in-place depthwise is off: turn it on (drop --no-in-place)")
    elif without_in_place is not None and without_in_place > plan.arena_bytes and plan.in_place:
        saved = without_in_place - plan.arena_bytes
        advice.append(f"in-place depthwise already saves {kb(saved)}")
    ratio = sram_bytes / plan.arena_bytes
    _, _, height, width = graph.tensors[graph.input].shape
    side = math.sqrt(ratio)
    advice.append(
        f"an input of about {int(height * side)}x{int(width * side)} (now {height}x{width}) "
        "or a width multiplier of about "
        f"x{ratio:.2f} would bring the peak under {kb(sram_bytes)} (estimates: activation "
        "memory scales with pixels and about linearly with width)"
    )
    advice.append(
        "patch-based inference of the first stages (MCUNetV2) would cut the peak; it is not "
        "implemented yet (--patch auto)"
    )
    return advice


def kb(size: int) -> str:
    """``size`` bytes in kB of 1024 bytes, one decimal."""
    return f"{size / KB:.1f} kB"
