"""Elastic supernet: extraction is exact, channel sorting keeps the function, kernels are
transformed centres, sub-networks export to ONNX and reload from model files."""

from __future__ import annotations

import random

import torch
from torch import nn

from mobiledl.automl.nas.elastic import OFASupernet, sort_channels
from mobiledl.automl.nas.extract import extract_subnet, recalibrate_bn
from mobiledl.automl.nas.space import SearchSpace
from mobiledl.automl.nas.store import load_supernet, save_supernet
from mobiledl.deploy import get_engine, parity_check
from mobiledl.models import load_model, save_model


def _archs(space: SearchSpace, count: int = 6) -> list:
    rng = random.Random(0)
    return [space.largest(), space.smallest()] + [space.sample(rng) for _ in range(count - 2)]


def test_extracted_subnet_matches_supernet(supernet: OFASupernet, space: SearchSpace):
    x = torch.randn(3, 1, 8, 8)
    for arch in _archs(space):
        model = extract_subnet(supernet, arch)
        kinds = {type(m) for m in model.modules() if not list(m.children())}
        assert kinds <= {
            nn.Conv2d,
            nn.BatchNorm2d,
            nn.ReLU,
            nn.Hardswish,
            nn.Hardsigmoid,
            nn.AdaptiveAvgPool2d,
            nn.Linear,
            type(model.features[0]),
        }
        with torch.no_grad():
            assert torch.allclose(model(x), supernet(x, arch), atol=1e-5)


def test_kernel_transform_starts_as_centre_crop(space: SearchSpace):
    net = OFASupernet(space, 10, 1, (8, 8))
    depthwise = net.blocks[0].depthwise
    big = depthwise.kernel(5, 4)
    assert torch.equal(depthwise.kernel(3, 4), big[:, :, 1:4, 1:4])
    with torch.no_grad():
        depthwise.transforms["5to3"].mul_(2.0)
    assert torch.allclose(depthwise.kernel(3, 4), 2 * big[:, :, 1:4, 1:4])


def test_sorting_channels_keeps_the_largest_network(supernet: OFASupernet, space: SearchSpace):
    x = torch.randn(4, 1, 8, 8)
    largest = space.largest()
    with torch.no_grad():
        before = supernet(x, largest)
        sort_channels(supernet)
        after = supernet(x, largest)
    assert torch.allclose(before, after, atol=1e-5)
    weight = supernet.blocks[0].expand_conv.weight
    norms = weight.abs().sum(dim=(1, 2, 3))
    assert torch.all(norms[:-1] >= norms[1:])


def test_recalibration_uses_the_data(supernet: OFASupernet, space: SearchSpace):
    model = extract_subnet(supernet, space.largest())
    data = 3.0 + torch.randn(64, 1, 8, 8)
    recalibrate_bn(model, data)
    stem_bn = model.features.stem.bn
    with torch.no_grad():
        conv_out = model.features.stem.conv(data)
    assert torch.allclose(stem_bn.running_mean, conv_out.mean(dim=(0, 2, 3)), atol=1e-4)
    assert not model.training


def test_subnet_exports_and_reloads(supernet: OFASupernet, space: SearchSpace, tmp_path):
    arch = _archs(space)[3]
    model = extract_subnet(supernet, arch)
    x = torch.randn(2, 1, 8, 8)
    engine = get_engine("onnxruntime")
    artifact = engine.export(model, x[:1], tmp_path / "sub.onnx")
    assert parity_check(model, engine.load(artifact), x) < 1e-4
    save_model(tmp_path / "sub.pt", model, {"note": "nas"})
    loaded = load_model(tmp_path / "sub.pt")
    with torch.no_grad():
        assert torch.allclose(loaded.model(x), model(x), atol=1e-6)
    assert loaded.arch["transforms"][0]["kind"] == "nas_subnet"


def test_supernet_file_round_trip(supernet: OFASupernet, tmp_path):
    path = save_supernet(tmp_path / "super.pt", supernet, {"task": "digits"})
    loaded = load_supernet(path)
    assert loaded.meta == {"task": "digits"}
    arch = supernet.space.largest()
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(loaded.supernet(x, arch), supernet(x, arch))
