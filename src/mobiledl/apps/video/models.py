"""Clip classifiers: TSN and TSM on a 2D backbone, and a C3D-style 3D-conv baseline.

- ``VideoClassifier``: a 2D image classifier run on every frame of a clip ``(N, T, C, H, W)``
  and its logits averaged over the ``T`` frames: TSN's segmental consensus (Wang et al. 2016,
  "Temporal Segment Networks") when nothing is shifted, TSM (Lin et al. 2019) once
  ``add_temporal_shift`` has put shifts into its residual blocks. Both have the same
  parameters and MACs: the shift only moves memory. Backbones: ResNet-8 and MobileNetV2.
- ``C3D``: the eight 3x3x3 convolutions of C3D (Tran et al. 2015, "Learning Spatiotemporal
  Features with 3D Convolutional Networks") at half the paper's widths: the first pooling is
  spatial only, the later ones halve time too. Deviations, for training from scratch on
  small clips: batch norm after every convolution, and a global average pool and one linear
  classifier in place of pool5 and the two 4096-wide fully connected layers.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mobiledl.apps.video.shift import add_temporal_shift
from mobiledl.core.inputs import CLIP
from mobiledl.errors import UserError
from mobiledl.models.blocks import scale_channels
from mobiledl.models.mobilenet import mobilenet_v2
from mobiledl.models.registry import register_model
from mobiledl.models.resnet import CifarResNet

TSM_PAPER = "Lin, Gan, Han 2019, TSM: Temporal Shift Module for Efficient Video Understanding"
TSN_PAPER = "Wang et al. 2016, Temporal Segment Networks"
C3D_PAPER = "Tran et al. 2015, Learning Spatiotemporal Features with 3D Convolutional Networks"
#: C3D's five stages with the paper's widths halved: the convolutions' widths and the
#: max-pool after the stage (the paper's pool5 and fc6/fc7 become a global average pool).
C3D_STAGES: tuple[tuple[tuple[int, ...], tuple[int, int, int] | None], ...] = (
    ((32,), (1, 2, 2)),
    ((64,), (2, 2, 2)),
    ((128, 128), (2, 2, 2)),
    ((256, 256), (2, 2, 2)),
    ((256, 256), None),
)


def check_clip(x: Tensor, n_segments: int) -> None:
    """``UserError`` unless ``x`` is a batch of clips ``(N, n_segments, C, H, W)``."""
    if x.dim() != 5:
        raise UserError(f"a clip model takes (N, T, C, H, W) clips; got a {x.dim()}-D tensor")
    if x.shape[1] != n_segments:
        raise UserError(f"the model takes clips of {n_segments} frames; got {x.shape[1]}")


# A leaf of torch.fx graphs (channel pruning traces models symbolically).
torch.fx.wrap("check_clip")


class VideoClassifier(nn.Module):
    """``backbone`` on each frame, logits averaged over time (TSN consensus; TSM if shifted).

    ``backbone`` maps frames ``(N*T, C, H, W)`` to logits ``(N*T, K)``; ``features``, ``pool``
    and ``classifier`` are the backbone's (the attributes every zoo model has).
    """

    def __init__(self, backbone: nn.Module, n_segments: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.n_segments = n_segments

    def frame_logits(self, clips: Tensor) -> Tensor:
        """Per-frame logits ``(N, T, K)`` of clips ``(N, T, C, H, W)``."""
        check_clip(clips, self.n_segments)
        frames = clips.reshape(-1, clips.shape[2], clips.shape[3], clips.shape[4])
        logits = self.backbone(frames)
        return logits.reshape(-1, self.n_segments, logits.shape[-1])

    def forward(self, clips: Tensor) -> Tensor:
        return self.frame_logits(clips).mean(dim=1)


class C3D(nn.Module):
    """C3D-style network (see module docstring) on clips ``(N, T, C, H, W)``."""

    def __init__(
        self, num_classes: int, in_channels: int, n_segments: int, width_mult: float = 1.0
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for widths, pool in C3D_STAGES:
            for width in (scale_channels(w, width_mult) for w in widths):
                layers += [
                    nn.Conv3d(channels, width, 3, padding=1, bias=False),
                    nn.BatchNorm3d(width),
                    nn.ReLU(),
                ]
                channels = width
            if pool is not None:
                layers.append(nn.MaxPool3d(pool, ceil_mode=True))
        self.n_segments = n_segments
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(channels, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv3d):
                nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")

    def forward(self, clips: Tensor) -> Tensor:
        check_clip(clips, self.n_segments)
        x = self.features(clips.transpose(1, 2))  # (N, C, T, H, W)
        return self.classifier(torch.flatten(x.mean(dim=(2, 3, 4)), 1))


def _resnet8_clips(
    num_classes: int,
    in_channels: int,
    image_size: tuple[int, int],
    n_segments: int,
    width_mult: float,
) -> VideoClassifier:
    backbone = CifarResNet(num_classes, in_channels, image_size, 1, width_mult)
    return VideoClassifier(backbone, n_segments)


@register_model(
    "tsn_resnet8",
    description="TSN: ResNet-8 on every frame, logits averaged over the clip",
    paper=TSN_PAPER,
    inputs=CLIP,
)
def tsn_resnet8(
    num_classes: int,
    in_channels: int,
    image_size: tuple[int, int],
    n_segments: int,
    width_mult: float,
) -> nn.Module:
    """TSN with a ResNet-8 backbone."""
    return _resnet8_clips(num_classes, in_channels, image_size, n_segments, width_mult)


@register_model(
    "tsm_resnet8",
    description="TSM: TSN ResNet-8 with a bi-directional residual shift (1/8 + 1/8 channels)",
    paper=TSM_PAPER,
    inputs=CLIP,
)
def tsm_resnet8(
    num_classes: int,
    in_channels: int,
    image_size: tuple[int, int],
    n_segments: int,
    width_mult: float,
) -> nn.Module:
    """Offline TSM: every residual branch shifts 1/8 of its channels from t-1 and 1/8 from t+1."""
    model = _resnet8_clips(num_classes, in_channels, image_size, n_segments, width_mult)
    add_temporal_shift(model, n_segments, bidirectional=True)
    return model


@register_model(
    "tsm_uni_resnet8",
    description="uni-directional TSM ResNet-8: 1/8 of the channels from the past only "
    "(streams online)",
    paper=TSM_PAPER,
    inputs=CLIP,
)
def tsm_uni_resnet8(
    num_classes: int,
    in_channels: int,
    image_size: tuple[int, int],
    n_segments: int,
    width_mult: float,
) -> nn.Module:
    """Uni-directional TSM (the paper's online model, Sec. 3.3): shifts from t-1 only."""
    model = _resnet8_clips(num_classes, in_channels, image_size, n_segments, width_mult)
    add_temporal_shift(model, n_segments, bidirectional=False)
    return model


@register_model(
    "c3d_small",
    description="C3D at half width: eight 3x3x3 conv-BN-ReLU layers (32/64/128x2/256x4), "
    "max-pools 1x2x2 then 2x2x2, global average pool",
    paper=C3D_PAPER,
    inputs=CLIP,
)
def c3d_small(
    num_classes: int,
    in_channels: int,
    image_size: tuple[int, int],
    n_segments: int,
    width_mult: float,
) -> nn.Module:
    """``C3D`` with the paper's widths halved (global pooling makes any frame size work)."""
    del image_size
    return C3D(num_classes, in_channels, n_segments, width_mult)


@register_model(
    "tsn_mobilenet_v2",
    description="TSN: MobileNetV2 on every frame, logits averaged over the clip",
    paper=TSN_PAPER,
    inputs=CLIP,
)
def tsn_mobilenet_v2(
    num_classes: int,
    in_channels: int,
    image_size: tuple[int, int],
    n_segments: int,
    width_mult: float,
) -> nn.Module:
    """TSN with a MobileNetV2 backbone."""
    backbone = mobilenet_v2(num_classes, in_channels, image_size, width_mult)
    return VideoClassifier(backbone, n_segments)


@register_model(
    "tsm_mobilenet_v2",
    description="TSM: TSN MobileNetV2 with a bi-directional shift in every residual "
    "inverted-residual block",
    paper=TSM_PAPER,
    inputs=CLIP,
)
def tsm_mobilenet_v2(
    num_classes: int,
    in_channels: int,
    image_size: tuple[int, int],
    n_segments: int,
    width_mult: float,
) -> nn.Module:
    """Offline TSM on MobileNetV2 (the paper's mobile backbone, Table 8 / Sec. 5.3)."""
    model = tsn_mobilenet_v2(num_classes, in_channels, image_size, n_segments, width_mult)
    add_temporal_shift(model, n_segments, bidirectional=True)
    return model
