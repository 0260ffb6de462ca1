"""K-means weight sharing and Deep Compression: codebooks, pooled gradients, storage, files."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from mobiledl.compress.encode import huffman_bytes
from mobiledl.compress.quantize.kmeans import (
    KMeansLayer,
    LayerStorage,
    StorageReport,
    coded_bytes,
    deep_compression,
    fit_codebook,
    kmeans_layers,
    kmeans_quantize,
    layer_storage,
)
from mobiledl.data import Task
from mobiledl.errors import UserError
from mobiledl.models import create_model, load_model, save_model
from mobiledl.train import evaluate

pytestmark = pytest.mark.usefixtures("single_thread")


def blob_task() -> Task:
    """Three Gaussian blobs as 1x4x4 images: a task small models learn in a few epochs."""
    generator = torch.Generator().manual_seed(0)
    centers = torch.randn(3, 1, 4, 4, generator=generator) * 2
    y = torch.arange(240) % 3
    x = centers[y] + torch.randn(240, 1, 4, 4, generator=generator)
    return Task("blobs", 3, x[:160], y[:160], x[160:200], y[160:200], x[200:], y[200:])


def small_lenet(name: str = "lenet5") -> nn.Module:
    torch.manual_seed(0)
    return create_model(name, num_classes=3, in_channels=1, image_size=4, width_mult=0.25)


def test_codebook_has_at_most_2_to_the_bits_values_per_layer() -> None:
    model = small_lenet()
    quantized = kmeans_quantize(model, {"features.0": 1, "features.3.weight": 3, "classifier.0": 2})
    expected = {"features.0": 1, "features.3": 3, "classifier.0": 2}
    layers = kmeans_layers(quantized)
    assert {name: layer.bits for name, layer in layers.items()} == expected
    for name, layer in layers.items():
        values = layer.weight.detach().unique()
        assert len(values) <= 2 ** expected[name]
        assert set(values.tolist()) <= set(layer.codebook.detach().tolist())
    assert isinstance(quantized.features[6], nn.Conv2d)  # unlisted layers stay float
    assert isinstance(model.features[0], nn.Conv2d)  # the input model is untouched


def test_linear_initialization_and_lloyd_iterations() -> None:
    weight = torch.tensor([-1.0, -0.9, 0.0, 1.0, 0.95])
    codebook, indices, mask = fit_codebook(weight, bits=1)
    assert torch.allclose(codebook, torch.tensor([-0.95, 0.975]))
    assert indices.tolist() == [0, 0, 0, 1, 1]
    assert mask.tolist() == [True, True, False, True, True]


def test_pruned_zeros_are_not_clustered_and_stay_zero_through_finetuning() -> None:
    model = small_lenet("lenet300")
    first = model.features[0]
    with torch.no_grad():
        first.weight[first.weight.abs() < first.weight.abs().median()] = 0.0
    zeros = first.weight == 0
    quantized = kmeans_quantize(model, 2, blob_task(), finetune_epochs=1)
    layer = quantized.features[0]
    assert torch.equal(layer.mask, ~zeros)
    assert torch.all(layer.weight[zeros] == 0)
    assert torch.all(layer.weight[~zeros] != 0)


def test_centroid_gradient_is_the_pooled_weight_gradient() -> None:
    layer = KMeansLayer(nn.Linear(3, 2, bias=False), bits=1)
    with torch.no_grad():
        layer.codebook.copy_(torch.tensor([-1.0, 2.0]))
        layer.indices.copy_(torch.tensor([[0, 1, 1], [1, 0, 0]], dtype=torch.uint8))
        layer.mask.copy_(torch.tensor([[True, True, False], [True, True, True]]))
    x = torch.tensor([[1.0, 2.0, 3.0]])
    upstream = torch.tensor([[0.5, -2.0]])
    (layer(x) * upstream).sum().backward()
    grad = upstream.T @ x  # dL/dW of a linear layer
    expected = torch.stack(
        [grad[0, 0] + grad[1, 1] + grad[1, 2], grad[0, 1] + grad[1, 0]]  # grad[0, 2] is pruned
    )
    assert torch.allclose(layer.codebook.grad, expected)
    assert torch.equal(layer.weight, torch.tensor([[-1.0, 2.0, 0.0], [2.0, -1.0, -1.0]]))


def test_finetuning_moves_the_centroids() -> None:
    model = small_lenet()
    before = kmeans_quantize(model, 3)
    after = kmeans_quantize(model, 3, blob_task(), finetune_epochs=2)
    moved = [
        not torch.allclose(kmeans_layers(before)[name].codebook, layer.codebook)
        for name, layer in kmeans_layers(after).items()
    ]
    assert all(moved)
    for name, layer in kmeans_layers(after).items():
        assert torch.equal(layer.indices, kmeans_layers(before)[name].indices)


def test_bad_config_names_the_layer() -> None:
    model = small_lenet()
    with pytest.raises(UserError, match="unknown layer 'features.9'"):
        kmeans_quantize(model, {"features.9": 4})
    with pytest.raises(UserError, match="'features.1'"):
        kmeans_quantize(model, {"features.1": 4})  # a ReLU has no weight
    with pytest.raises(UserError, match="layer 'features.3' must be an integer in 1..8; got 9"):
        kmeans_quantize(model, {"features.3": 9})
    with pytest.raises(UserError, match="got 0"):
        kmeans_quantize(model, 0)
    with pytest.raises(UserError, match="needs a task"):
        kmeans_quantize(model, 4, finetune_epochs=1)


def test_save_load_round_trip(tmp_path: Path) -> None:
    quantized = kmeans_quantize(small_lenet(), {"features.3": 4, "classifier.0": 2})
    path = save_model(tmp_path / "kmeans.pt", quantized)
    loaded = load_model(path).model
    x = blob_task().x_test
    assert torch.equal(loaded(x), quantized.eval()(x))
    assert set(kmeans_layers(loaded)) == {"features.3", "classifier.0"}
    assert loaded.classifier[0].indices.dtype == torch.uint8


def hand_layer() -> KMeansLayer:
    """A 2x8 layer, 2-bit codebook, nonzeros at flat positions 1, 4 and 15."""
    layer = KMeansLayer(nn.Linear(8, 2, bias=False), bits=2)
    mask = torch.zeros(16, dtype=torch.bool)
    mask[[1, 4, 15]] = True
    indices = torch.zeros(16, dtype=torch.uint8)
    indices[[1, 4, 15]] = torch.tensor([0, 3, 1], dtype=torch.uint8)
    with torch.no_grad():
        layer.mask.copy_(mask.reshape(2, 8))
        layer.indices.copy_(indices.reshape(2, 8))
    return layer


def test_storage_arithmetic_on_a_hand_example() -> None:
    # 2-bit gaps (at most 4): entries at 1 (gap 2), 4 (gap 3), fillers at 8 and 12, 15 (gap 3).
    row = layer_storage("fc", hand_layer(), index_bits=2)
    assert (row.weights, row.nonzeros) == (16, 3)
    assert row.dense_bytes == 16 * 4
    assert row.sparse_bytes == math.ceil(5 * (2 + 32) / 8)
    codebook = 4 * 4
    # Fillers need a fifth cluster symbol, so fixed-width cluster indices take 3 bits.
    assert row.quantized_bytes == math.ceil(5 * (2 + 3) / 8) + codebook
    # Five symbols per stream: the code tables cost more than they save -> fixed width.
    assert row.huffman_bytes == math.ceil(5 * 2 / 8) + math.ceil(5 * 3 / 8) + codebook
    report = StorageReport([row], other_values=10)
    assert report.total("dense") == 64 + 40
    assert report.total("huffman") == row.huffman_bytes + 40
    assert report.compression_ratio == pytest.approx(104 / (row.huffman_bytes + 40))
    assert "total" in report.table() and "fc" in str(report)
    assert json.loads(json.dumps(report.to_dict()))["total"]["dense_bytes"] == 104


def test_huffman_of_a_skewed_stream_beats_fixed_width() -> None:
    symbols = np.array([0] * 900 + [1, 2, 3, 4, 5, 6, 7] * 14 + [7, 7])
    fixed = math.ceil(len(symbols) * 3 / 8)
    coded = coded_bytes(symbols, alphabet=8)
    assert coded == huffman_bytes(symbols) + math.ceil(8 * 5 / 8)
    assert coded < fixed / 2


def test_unpruned_layer_is_stored_densely() -> None:
    layer = KMeansLayer(nn.Linear(4, 4, bias=False), bits=3)
    row = layer_storage("dense", layer, index_bits=5)
    assert row == LayerStorage("dense", 16, 16, 3, 5, 64, 64, 6 + 32, row.huffman_bytes)
    assert row.huffman_bytes == 6 + 32  # all indices equal: fixed width wins over table


def test_deep_compression_pipeline_prunes_quantizes_and_reports() -> None:
    model = small_lenet("lenet300")
    task = blob_task()
    compressed, report = deep_compression(
        model, task, 0.8, conv_bits=4, fc_bits=3, prune_steps=2, prune_epochs=1, finetune_epochs=1
    )
    layers = kmeans_layers(compressed)
    assert {name: layer.bits for name, layer in layers.items()} == {
        "features.0": 3,
        "features.2": 3,
        "classifier": 3,
    }
    for layer in layers.values():
        assert layer.mask.float().mean().item() == pytest.approx(0.2, abs=0.02)
    totals = [report.total(stage) for stage in ("dense", "sparse", "quantized", "huffman")]
    assert totals[0] == 4 * sum(p.numel() for p in model.parameters())
    assert totals == sorted(totals, reverse=True)
    assert report.compression_ratio > 5
    assert 0.0 <= evaluate(compressed, task) <= 1.0
