"""Sub-networks as standalone models: plain ``Conv2d``/``BatchNorm2d`` zoo blocks, ONNX-exportable.

:func:`extract_subnet` copies the weights of one architecture out of the supernet (with the
elastic kernels already transformed, OFA Sec. 3.2) and :func:`recalibrate_bn` re-estimates the
batch-norm statistics on training data, since the supernet's running statistics mix all
sub-networks (OFA Sec. 3.2; Yu & Huang 2019). The model record
(:func:`subnet_record`) names the zoo's ``mobilenet_v3_small`` as its base and a ``nas_subnet``
transform that rebuilds the searched architecture, so ``load_model`` needs no user code.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from typing import Any

import torch
from torch import Tensor, nn

from mobiledl.automl.nas.elastic import OFASupernet, Resize
from mobiledl.automl.nas.space import Arch, SearchSpace
from mobiledl.models.blocks import ImageClassifier
from mobiledl.models.checkpoint import register_transform

TRANSFORM = "nas_subnet"
BASE_MODEL = "mobilenet_v3_small"


def build_subnet(
    space: SearchSpace,
    arch: Arch,
    num_classes: int,
    in_channels: int,
    input_size: tuple[int, int],
) -> nn.Module:
    """A freshly initialised standalone network of ``arch`` (zoo ``ImageClassifier`` shape)."""
    return _assemble(OFASupernet(space, num_classes, in_channels, input_size), arch)


def _assemble(supernet: OFASupernet, arch: Arch) -> ImageClassifier:
    """``features`` = [resize], stem, first block, active blocks, head conv."""
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    if arch.resolution != supernet.input_size:
        layers["resize"] = Resize(arch.resolution)
    layers["stem"] = copy.deepcopy(supernet.stem)
    layers["first"] = copy.deepcopy(supernet.first)
    for slot in supernet.space.active_slots(arch):
        block = supernet.blocks[slot]
        layers[f"block{slot}"] = block.static_block(arch.kernels[slot], arch.expands[slot])
    layers["head"] = copy.deepcopy(supernet.head)
    classifier = nn.Linear(supernet.classifier.in_features, supernet.classifier.out_features)
    return ImageClassifier(nn.Sequential(layers), classifier)


@torch.no_grad()
def extract_subnet(supernet: OFASupernet, arch: Arch) -> nn.Module:
    """The sub-network ``arch`` of ``supernet`` as an ordinary module (eval mode).

    Its batch-norm statistics are the supernet's; call :func:`recalibrate_bn` before use.
    """
    supernet.space.check(arch)
    model = _assemble(supernet, arch)
    features = model.features
    features.stem.load_state_dict(supernet.stem.state_dict())
    features.first.load_state_dict(supernet.first.state_dict())
    for slot in supernet.space.active_slots(arch):
        block = features.get_submodule(f"block{slot}")
        supernet.blocks[slot].copy_into(block, arch.kernels[slot], arch.expands[slot])
    features.head.load_state_dict(supernet.head.state_dict())
    model.classifier.load_state_dict(supernet.classifier.state_dict())
    model.mobiledl_arch = subnet_record(supernet, arch)
    return model.eval()


def calibration_indices(count: int, size: int, seed: int) -> Tensor:
    """A fixed random subset of ``size`` of ``count`` training samples for recalibration."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(count, generator=generator)[: min(size, count)]


@torch.no_grad()
def recalibrate_bn(model: nn.Module, x: Tensor, batch_size: int = 256) -> nn.Module:
    """Reset every batch norm and re-estimate its statistics as the exact mean over ``x``
    (cumulative averaging, ``momentum=None``); the model ends in eval mode."""
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    momenta = [bn.momentum for bn in norms]
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None
    model.train()
    for start in range(0, len(x), batch_size):
        model(x[start : start + batch_size])
    for bn, momentum in zip(norms, momenta, strict=True):
        bn.momentum = momentum
    return model.eval()


def subnet_record(supernet: OFASupernet, arch: Arch) -> dict[str, Any]:
    """The ``mobiledl_arch`` record that lets ``load_model`` rebuild ``arch``."""
    config = {
        "space": supernet.space.to_dict(),
        "arch": arch.to_dict(),
        "num_classes": supernet.num_classes,
        "in_channels": supernet.in_channels,
        "input_size": list(supernet.input_size),
    }
    return {
        "name": BASE_MODEL,
        "display_name": f"nas-subnet {arch.label()}",
        "num_classes": supernet.num_classes,
        "in_channels": supernet.in_channels,
        "image_size": list(supernet.input_size),
        "width_mult": 1.0,
        "transforms": [{"kind": TRANSFORM, "config": config}],
    }


@register_transform(TRANSFORM)
def _rebuild_subnet(model: nn.Module, config: dict[str, Any]) -> nn.Module:
    """Replace the base model by the searched architecture named in ``config``."""
    del model
    space = SearchSpace.from_dict(config["space"])
    arch = Arch.from_dict(config["arch"], space)
    size = (int(config["input_size"][0]), int(config["input_size"][1]))
    return build_subnet(space, arch, int(config["num_classes"]), int(config["in_channels"]), size)
