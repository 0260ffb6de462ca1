"""Online TSM: a uni-directional TSM run one frame at a time (Lin et al. 2019, Sec. 3.3, Fig. 4).

Offline, a uni-directional shift gives frame ``t`` the first ``C / fold_div`` channels of frame
``t - 1``. Online, each shifted block keeps those channels of the previous frame in a cache:
at every frame it replaces its first channels by the cache and stores the frame's own first
channels for the next frame. The per-frame cost is the 2D backbone's plus a copy of 1/8 of a
few activations, and the logits of each frame equal the offline model's frame logits.

``OnlineTSM(frame, *caches) -> (logits, *new_caches)`` is a plain module with the caches as
explicit inputs and outputs, so an engine exports it and streams a clip frame by frame. Each
cache's fold is a constant of the graph (ONNX Runtime fuses each shift's two slices into one
``Split``; a fold read from the input's shape at run time cost four more kernels per shift).

``mobiledl.deploy.streaming.FrameStream`` streams the exported graph through the engine with
the caches kept in the engine's bound buffers from frame to frame.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from mobiledl.apps.video.models import VideoClassifier
from mobiledl.apps.video.shift import TemporalShift, shifts_of
from mobiledl.core.inputs import InputSpec
from mobiledl.errors import UserError


class CachedShift(nn.Module):
    """A uni-directional shift for one frame: the first ``fold`` channels come from
    ``incoming`` (the previous frame's, set before each call); the frame's own first
    ``fold`` channels are left in ``outgoing``.

    ``fold`` is fixed when the model is built (``C // fold_div`` of the input this shift sees),
    so the exported slices have constant bounds."""

    def __init__(self, fold_div: int, fold: int) -> None:
        super().__init__()
        self.fold_div = fold_div
        self.fold = fold
        self.incoming: Tensor | None = None
        self.outgoing: Tensor | None = None

    def forward(self, x: Tensor) -> Tensor:
        if self.incoming is None:
            raise RuntimeError("CachedShift called without a cache (use OnlineTSM)")
        self.outgoing = x[:, : self.fold]
        return torch.cat([self.incoming, x[:, self.fold :]], dim=1)

    def extra_repr(self) -> str:
        return f"fold={self.fold} (1/{self.fold_div})"


class OnlineTSM(nn.Module):
    """Streaming per-frame model built from a trained uni-directional TSM ``VideoClassifier``.

    ``cache_shapes`` are the ``(fold, H, W)`` of each cache for one frame of ``frame_shape``
    ``(C, H, W)``; a stream starts from ``initial_caches`` (zeros: the offline model's padding).
    """

    def __init__(self, model: VideoClassifier, frame_shape: tuple[int, int, int]) -> None:
        super().__init__()
        shifts = shifts_of(model)
        if not isinstance(model, VideoClassifier) or not shifts:
            raise UserError("online TSM needs a temporal-shift clip model (e.g. tsm_uni_resnet8)")
        if any(shift.bidirectional for shift in shifts):
            raise UserError(
                "online TSM needs a uni-directional model: a bi-directional shift "
                "reads the next frame"
            )
        self.backbone = copy.deepcopy(model.backbone)
        self.cache_shapes = _shift_input_shapes(self.backbone, frame_shape)
        self.shifts = _replace_shifts(self.backbone, [shape[0] for shape in self.cache_shapes])
        self.frame_shape = tuple(frame_shape)

    def initial_caches(self, batch_size: int = 1) -> tuple[Tensor, ...]:
        """All-zero caches: the state before the first frame of a clip."""
        return tuple(torch.zeros(batch_size, *shape) for shape in self.cache_shapes)

    def example_inputs(self, batch_size: int = 1) -> tuple[Tensor, ...]:
        """``(frame, *caches)`` of zeros: what ``export`` traces."""
        return (torch.zeros(batch_size, *self.frame_shape), *self.initial_caches(batch_size))

    def input_specs(self) -> tuple[InputSpec, ...]:
        """``frame`` and ``cache_0, cache_1, ...``, each with a dynamic batch."""
        frame = InputSpec("frame", (None, *self.frame_shape))
        caches = [InputSpec(f"cache_{i}", (None, *s)) for i, s in enumerate(self.cache_shapes)]
        return (frame, *caches)

    def forward(self, frame: Tensor, *caches: Tensor) -> tuple[Tensor, ...]:
        if len(caches) != len(self.shifts):
            raise UserError(f"online TSM takes {len(self.shifts)} caches; got {len(caches)}")
        for shift, cache in zip(self.shifts, caches, strict=True):
            shift.incoming = cache
        logits = self.backbone(frame)
        outgoing = tuple(shift.outgoing for shift in self.shifts)
        for shift in self.shifts:
            shift.incoming = shift.outgoing = None
        return (logits, *outgoing)


def _shift_input_shapes(
    backbone: nn.Module, frame_shape: tuple[int, int, int]
) -> list[tuple[int, int, int]]:
    """``(fold, H, W)`` of each temporal shift's input for one frame, in forward order."""
    shapes: list[tuple[int, int, int]] = []

    def record(module: TemporalShift, args: tuple[Tensor, ...]) -> None:
        x = args[0]
        shapes.append((module.fold(x.shape[1]), x.shape[2], x.shape[3]))

    shifts = shifts_of(backbone)
    handles = [shift.register_forward_pre_hook(record) for shift in shifts]
    n_segments = shifts[0].n_segments
    try:
        with torch.no_grad():
            backbone.eval()(torch.zeros(n_segments, *frame_shape))
    finally:
        for handle in handles:
            handle.remove()
    return shapes


def _replace_shifts(backbone: nn.Module, folds: list[int]) -> nn.ModuleList:
    """Swap every ``TemporalShift`` of ``backbone`` for a ``CachedShift`` moving ``folds[i]``
    channels, ``i`` its place in ``shifts_of`` order (that of ``cache_shapes``); the new
    layers, in that order."""
    index = {id(shift): i for i, shift in enumerate(shifts_of(backbone))}
    cached: list[CachedShift | None] = [None] * len(index)
    for module in list(backbone.modules()):
        for name, child in module.named_children():
            if isinstance(child, TemporalShift):
                i = index[id(child)]
                cached[i] = CachedShift(child.fold_div, folds[i])
                setattr(module, name, cached[i])
    return nn.ModuleList(cached)


@torch.no_grad()
def online_frame_logits(online: OnlineTSM, clips: Tensor) -> Tensor:
    """Logits ``(N, T, K)`` of every frame of clips ``(N, T, C, H, W)``, streamed frame by frame."""
    if clips.dim() != 5 or clips.shape[1] < 1:
        raise UserError(
            f"online TSM streams (N, T, C, H, W) clips of >= 1 frame; got {list(clips.shape)}"
        )
    online.eval()
    caches = online.initial_caches(clips.shape[0])
    frames = []
    for t in range(clips.shape[1]):
        logits, *caches = online(clips[:, t], *caches)
        frames.append(logits)
    return torch.stack(frames, dim=1)
