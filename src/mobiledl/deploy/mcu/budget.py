"""Does a plan fit a microcontroller's SRAM and flash, and if not, what would make it fit.

The advice is arithmetic on the plan, stated as estimates: activation memory at the peak
scales with the pixels of the input (so with the square of the resolution) and roughly
linearly with the width multiplier; flash is the weights, which channel pruning or a smaller
width shrink. Patch-based inference (MCUNetV2, Lin et al. 2021) cuts the peak of the first
stages several-fold for some extra MACs: given its best split (``patch.search_patch``), the
advice says what it would reach, or ``fit`` is judged on it when it is in use.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from mobiledl.deploy.mcu.patch import PatchMemory
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
    plan: MemoryPlan,
    sram_bytes: int,
    flash_bytes: int,
    without_in_place: int | None = None,
    patch: PatchMemory | None = None,
    patch_in_use: bool = False,
) -> Fit:
    """``plan`` against the budgets; ``without_in_place``: the arena without in-place
    depthwise, to say what in-place saves when it is off or what it already saved; ``patch``:
    the best patch-based plan, the one in use if ``patch_in_use``."""
    peak = patch.peak_bytes if patch_in_use and patch is not None else plan.arena_bytes
    fit = Fit(sram_bytes, flash_bytes, peak <= sram_bytes, plan.flash_bytes <= flash_bytes)
    if not fit.fits_sram:
        fit.advice.extend(_sram_advice(plan, sram_bytes, without_in_place, peak))
        fit.advice.append(_patch_advice(patch, patch_in_use))
    if not fit.fits_flash:
        ratio = flash_bytes / plan.flash_bytes
        fit.advice.append(
            f"flash: the weights, biases and multiplier tables take {kb(plan.flash_bytes)}; "
            f"pruning channels or a width multiplier of about x{ratio:.2f} would bring them "
            f"under {kb(flash_bytes)} (weights are stored as int8 codes)"
        )
    return fit


def _sram_advice(
    plan: MemoryPlan, sram_bytes: int, without_in_place: int | None, peak_bytes: int
) -> list[str]:
    graph = plan.graph
    peak = plan.peak_step
    live = ", ".join(f"{t.name} {kb(t.bytes)} (from {t.producer})" for t in peak.live)
    advice = [f"SRAM: at the peak ({peak.layer}, {peak.kind}) these are live: {live}"]
    if not plan.in_place and without_in_place is None:
        advice.append("in-place depthwise is off: turn it on (drop --no-in-place)")
    elif without_in_place is not None and without_in_place > plan.arena_bytes and plan.in_place:
        saved = without_in_place - plan.arena_bytes
        advice.append(f"in-place depthwise already saves {kb(saved)}")
    ratio = sram_bytes / peak_bytes
    _, _, height, width = graph.tensors[graph.input].shape
    side = math.sqrt(ratio)
    advice.append(
        f"an input of about {int(height * side)}x{int(width * side)} (now {height}x{width}) "
        "or a width multiplier of about "
        f"x{ratio:.2f} would bring the peak under {kb(sram_bytes)} (estimates: activation "
        "memory scales with pixels and about linearly with width)"
    )
    return advice


def _patch_advice(patch: PatchMemory | None, in_use: bool) -> str:
    if patch is None:
        return "patch-based inference: no prefix of this graph can run by patches"
    where = f"{patch.grid[0]}x{patch.grid[1]} patches over the first {patch.split} ops"
    cost = f"+{patch.mac_overhead:.0%} MACs"
    if in_use:
        return f"patch-based inference is in use ({where}, {kb(patch.peak_bytes)}, {cost})"
    return (
        f"patch-based inference (--patch auto): {where} would reach {kb(patch.peak_bytes)} ({cost})"
    )


def kb(size: int) -> str:
    """``size`` bytes in kB of 1024 bytes, one decimal."""
    return f"{size / KB:.1f} kB"
