"""The temporal shift (Lin, Gan, Han, "TSM: Temporal Shift Module for Efficient Video
Understanding", ICCV 2019, Sec. 3).

A 2D CNN run on the ``N * T`` frames of ``N`` clips sees one frame at a time. Shifting part of
the channels one step along time mixes neighbouring frames at zero parameters and zero MACs:

- bi-directional (offline): the first ``C / fold_div`` channels of frame ``t`` come from frame
  ``t - 1``, the next ``C / fold_div`` from frame ``t + 1``; clip ends are zero-padded;
- uni-directional (online): only the first ``C / fold_div`` channels, only from the past, so a
  frame never waits for the future (Sec. 3.3).

The shift is built from slices, zero blocks and concatenation (no ``roll``, no in-place
writes, no branch on shapes), so autograd, the profiler, ``torch.fx`` and ONNX export see
plain ops. The fold is read from the input's channel count at run time, so channel pruning
keeps every channel a shift moves (it cannot tell which channels a run-time slice takes, and
says so); it prunes the channels inside each residual branch.

``add_temporal_shift`` places the shift at the start of each residual branch (the paper's
*residual shift*, Fig. 3b): the shortcut keeps the frame's own features, the branch sees
its neighbours.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import Tensor, nn

from mobiledl.errors import UserError
from mobiledl.models.blocks import BasicBlock, InvertedResidual

#: The paper's shift fraction: 1/8 of the channels each way.
FOLD_DIV = 8
#: Where a shift goes in a residual block (Lin et al. 2019, Fig. 3).
PLACEMENTS = ("residual", "inplace")


def check_frames(x: Tensor, n_segments: int) -> None:
    """``UserError`` unless ``x`` holds frames ``(N*T, C, H, W)`` of clips of ``n_segments``."""
    if x.dim() != 4:
        raise UserError(f"temporal shift needs frames (N*T, C, H, W); got a {x.dim()}-D tensor")
    if n_segments < 1 or x.shape[0] % n_segments:
        raise UserError(f"{x.shape[0]} frames are not clips of {n_segments} frames")


def temporal_shift(
    x: Tensor, n_segments: int, fold_div: int = FOLD_DIV, bidirectional: bool = True
) -> Tensor:
    """Frames ``(N*T, C, H, W)`` of ``N`` clips with channels shifted along time (see module)."""
    check_frames(x, n_segments)
    fold = x.shape[1] // fold_div
    clips = x.reshape(-1, n_segments, x.shape[1], x.shape[2], x.shape[3])
    pad = torch.zeros_like(clips[:, :1, :fold])
    parts = [torch.cat([pad, clips[:, :-1, :fold]], dim=1)]  # from the past
    rest = fold
    if bidirectional:
        parts.append(torch.cat([clips[:, 1:, fold : 2 * fold], pad], dim=1))  # from the future
        rest = 2 * fold
    parts.append(clips[:, :, rest:])
    return torch.cat(parts, dim=2).reshape(-1, x.shape[1], x.shape[2], x.shape[3])


# Checks are leaves of a torch.fx graph (channel pruning traces the model symbolically).
torch.fx.wrap("check_frames")


class TemporalShift(nn.Module):
    """``temporal_shift`` as a layer (no parameters); ``fold(C)`` channels move each way."""

    def __init__(
        self, n_segments: int, fold_div: int = FOLD_DIV, bidirectional: bool = True
    ) -> None:
        super().__init__()
        if n_segments < 1:
            raise UserError(f"a temporal shift needs clips of >= 1 frames; got {n_segments}")
        if fold_div < 2:
            raise UserError(f"fold_div must be >= 2; got {fold_div}")
        self.n_segments = n_segments
        self.fold_div = fold_div
        self.bidirectional = bidirectional

    def fold(self, channels: int) -> int:
        """Channels shifted in each direction for a ``channels``-wide input."""
        return channels // self.fold_div

    def forward(self, x: Tensor) -> Tensor:
        return temporal_shift(x, self.n_segments, self.fold_div, self.bidirectional)

    def extra_repr(self) -> str:
        way = "bi" if self.bidirectional else "uni"
        return f"n_segments={self.n_segments}, fold_div={self.fold_div}, {way}-directional"


def add_temporal_shift(
    model: nn.Module,
    n_segments: int,
    fold_div: int = FOLD_DIV,
    bidirectional: bool = True,
    placement: str = "residual",
) -> int:
    """Shift the residual blocks of ``model`` (in place); returns how many were shifted.

    ``placement="residual"`` (the paper's choice, Fig. 3b) puts a ``TemporalShift`` at the
    start of each residual branch: before ``conv1`` of a ``BasicBlock``, before the ``body`` of
    an ``InvertedResidual`` with a residual add. ``"inplace"`` (Fig. 3a) shifts the block's
    input before both the branch and the shortcut. A model without residual blocks is a
    ``UserError``.
    """
    if placement not in PLACEMENTS:
        raise UserError(f"unknown shift placement '{placement}'; choose {' or '.join(PLACEMENTS)}")
    added = 0
    for module in list(model.modules()):
        for name, child in module.named_children():
            if _shiftable(child):
                shift = TemporalShift(n_segments, fold_div, bidirectional)
                if placement == "inplace":
                    setattr(module, name, nn.Sequential(OrderedDict(shift=shift, block=child)))
                else:
                    _shift_branch(child, shift)
                added += 1
    if not added:
        raise UserError(f"{type(model).__name__} has no residual block to shift")
    return added


def _shiftable(module: nn.Module) -> bool:
    """A residual block ``add_temporal_shift`` knows how to shift."""
    if isinstance(module, InvertedResidual):
        return module.use_residual
    return isinstance(module, BasicBlock)


def _shift_branch(block: nn.Module, shift: TemporalShift) -> None:
    if isinstance(block, BasicBlock):
        block.conv1 = nn.Sequential(shift, block.conv1)
    else:
        block.body = nn.Sequential(OrderedDict(shift=shift, **dict(block.body.named_children())))


def shifts_of(model: nn.Module) -> list[TemporalShift]:
    """The temporal shifts of ``model`` in forward order (module order)."""
    return [module for module in model.modules() if isinstance(module, TemporalShift)]
