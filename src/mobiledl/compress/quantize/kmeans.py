"""K-means weight sharing: the trained quantization of Deep Compression (Han et al. 2016).

Each layer's nonzero weights are clustered into ``2**b`` shared values (a per-layer codebook)
by one-dimensional k-means with *linear* initialization over ``[min, max]``, which the paper
found best because it keeps the few large weights representable (Sec. 3.2). The layer then
stores a ``b``-bit cluster index per weight and the codebook. Pruned weights (exact zeros) are
not clustered and stay zero.

During fine-tuning the centroids are the trained parameters: the gradient of a centroid is the
sum of the gradients of the weights assigned to it (Sec. 3.3, eq. 3). :class:`KMeansLayer`
reconstructs the weight as ``codebook[indices]`` in the forward pass, so autograd's gather
backward pools the gradients exactly that way.

:func:`deep_compression` runs the whole three-stage pipeline of the paper: fine-grained
iterative magnitude pruning (:mod:`mobiledl.compress.prune`), k-means weight sharing with
centroid fine-tuning, and Huffman coding (:mod:`mobiledl.compress.encode`); its
:class:`StorageReport` gives the bytes after each stage, per layer and in total.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize

from mobiledl.compress.encode import (
    CONV_INDEX_BITS,
    FC_INDEX_BITS,
    huffman_bytes,
    relative_index_encoding,
    sparse_relative_index_bytes,
)
from mobiledl.compress.prune import PruneConfig
from mobiledl.compress.quantize.config import KMeansConfig
from mobiledl.core.clone import clone_module
from mobiledl.core.config import LayerRule
from mobiledl.core.methods import apply
from mobiledl.core.task import TensorTask
from mobiledl.errors import UserError
from mobiledl.models.checkpoint import record_transform, register_freeze, register_transform
from mobiledl.models.entropy import CODE_LENGTH_BITS
from mobiledl.models.quantized import set_submodule
from mobiledl.train.trainer import TrainConfig, train

MIN_BITS, MAX_BITS = 1, 8
KMEANS_ITERATIONS = 50
FINETUNE_LR = 0.01
WEIGHTED_TYPES = (nn.Conv2d, nn.Linear)


class KMeansLayer(nn.Module):
    """A ``Conv2d`` / ``Linear`` whose weight is ``codebook[indices]``, zero where not ``mask``.

    Holds the wrapped layer without its weight (its bias and hyper-parameters stay), a
    trainable ``codebook`` of ``2**bits`` centroids, ``indices`` (uint8, the weight's shape)
    and a boolean ``mask`` of the unpruned positions.
    """

    def __init__(self, layer: nn.Conv2d | nn.Linear, bits: int) -> None:
        super().__init__()
        shape = layer.weight.shape
        del layer.weight
        self.layer = layer
        self.bits = bits
        self.codebook = nn.Parameter(torch.zeros(2**bits))
        self.register_buffer("indices", torch.zeros(shape, dtype=torch.uint8))
        self.register_buffer("mask", torch.ones(shape, dtype=torch.bool))

    @property
    def weight(self) -> Tensor:
        """The shared-value weight; its gradient flows to the centroids, pooled per cluster."""
        return torch.where(self.mask, self.codebook[self.indices.long()], 0.0)

    def forward(self, x: Tensor) -> Tensor:
        if isinstance(self.layer, nn.Linear):
            return F.linear(x, self.weight, self.layer.bias)
        return self.layer._conv_forward(x, self.weight, self.layer.bias)

    @torch.no_grad()
    def fit(self, weight: Tensor, iterations: int = KMEANS_ITERATIONS) -> None:
        """Cluster ``weight``'s nonzeros; store centroids, indices and the nonzero mask."""
        codebook, indices, mask = fit_codebook(weight, self.bits, iterations)
        self.codebook.copy_(codebook)
        self.indices.copy_(indices)
        self.mask.copy_(mask)

    def extra_repr(self) -> str:
        return f"bits={self.bits}"

    @torch.no_grad()
    def lower(self, keep_quantization: bool = True) -> nn.Module:
        """The wrapped layer holding the decoded weight (see ``mobiledl.deploy.lowering``)."""
        plain = clone_module(self.layer)
        plain.weight = nn.Parameter(self.weight.detach().clone())
        return plain

    def packed_bytes(self) -> int:
        """Bytes of the layer's weight in Deep Compression's "quantized" stage (``bits``-bit
        indices in the relative-index sparse format, plus the fp32 codebook; the bias is
        counted at fp32 by ``packed_storage_bytes``; ``storage_report`` has the Huffman-coded
        stage too)."""
        index_bits = FC_INDEX_BITS if isinstance(self.layer, nn.Linear) else CONV_INDEX_BITS
        return layer_storage("", self, index_bits).quantized_bytes


def _nearest(values: Tensor, sorted_centroids: Tensor) -> Tensor:
    """Index of the nearest centroid for each value (centroids sorted ascending)."""
    return torch.bucketize(values, (sorted_centroids[1:] + sorted_centroids[:-1]) / 2)


def fit_codebook(
    weight: Tensor, bits: int, iterations: int = KMEANS_ITERATIONS
) -> tuple[Tensor, Tensor, Tensor]:
    """1-D k-means (Lloyd) of the nonzero entries of ``weight`` into ``2**bits`` centroids.

    Centroids start evenly spaced over ``[min, max]`` (linear initialization, Han et al. 2016);
    a cluster that empties keeps its centroid. Returns ``(codebook, indices, mask)`` with
    ``indices`` uint8 shaped like ``weight`` (0 where pruned) and ``mask = weight != 0``.
    """
    weight = weight.detach().float()
    mask = weight != 0
    values = weight[mask]
    k = 2**bits
    indices = torch.zeros(weight.shape, dtype=torch.uint8)
    if values.numel() == 0:
        return torch.zeros(k), indices, mask
    centroids = torch.linspace(values.min().item(), values.max().item(), k)
    for _ in range(iterations):
        assign = _nearest(values, centroids)
        sums = torch.zeros(k).index_add_(0, assign, values)
        counts = torch.bincount(assign, minlength=k)
        updated = torch.where(counts > 0, sums / counts.clamp(min=1), centroids).sort().values
        if torch.equal(updated, centroids):
            break
        centroids = updated
    indices[mask] = _nearest(values, centroids).to(torch.uint8)
    return centroids, indices, mask


def _check_bits(name: str, bits: Any) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int) or not MIN_BITS <= bits <= MAX_BITS:
        raise UserError(
            f"kmeans: bits for layer '{name}' must be an integer in {MIN_BITS}..{MAX_BITS}; "
            f"got {bits!r}"
        )
    return bits


def quantizable_layers(model: nn.Module) -> dict[str, nn.Module]:
    """``Conv2d`` / ``Linear`` layers with a weight of their own, by module name."""
    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, WEIGHTED_TYPES) and hasattr(module, "weight")
    }


def resolve_bits(model: nn.Module, bits: int | Mapping[str, int]) -> dict[str, int]:
    """Bits per layer: an int applies to every quantizable layer, a dict to the named ones.

    Names are module names (``"features.0"``; a trailing ``".weight"`` is accepted). An unknown
    name or bits outside 1..8 raise a ``UserError`` naming the layer.
    """
    layers = quantizable_layers(model)
    if not isinstance(bits, Mapping):
        return {name: _check_bits(name, bits) for name in layers}
    resolved = {}
    for key, value in bits.items():
        name = key.removesuffix(".weight")
        if name not in layers:
            raise UserError(
                f"kmeans: unknown layer '{key}'; quantizable layers: {', '.join(layers)}"
            )
        resolved[name] = _check_bits(name, value)
    return resolved


def _wrap(model: nn.Module, layer_bits: Mapping[str, int], fit: bool) -> nn.Module:
    """Replace each named layer by a :class:`KMeansLayer` (clustered if ``fit``), in place.

    A pruning mask attached by :mod:`mobiledl.compress.prune.masks` is baked in first, so the
    pruned positions are the zeros that stay out of the clusters.
    """
    for name, bits in layer_bits.items():
        layer = model.get_submodule(name)
        if parametrize.is_parametrized(layer, "weight"):
            parametrize.remove_parametrizations(layer, "weight", leave_parametrized=True)
        weight = layer.weight.detach().clone()
        wrapper = KMeansLayer(layer, bits)
        if fit:
            wrapper.fit(weight)
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, wrapper)
    return model


@register_transform("kmeans")
def _rebuild(model: nn.Module, config: dict[str, Any]) -> nn.Module:
    """Re-wrap the layers when ``load_model`` rebuilds a k-means quantized model."""
    return _wrap(model, config["layers"], fit=False)


@register_freeze("kmeans")
def _freeze(model: nn.Module, config: dict[str, Any]) -> nn.Module:
    """Replace each k-means layer by the plain layer holding its shared-value weight."""
    for name in config["layers"]:
        set_submodule(model, name, model.get_submodule(name).lower())
    return model


def config_bits(model: nn.Module, config: KMeansConfig) -> dict[str, int]:
    """Bits per layer the config gives: ``layers`` (default all quantizable layers) at
    ``bits``, changed or skipped by ``overrides``."""
    selected = (
        resolve_bits(model, dict.fromkeys(config.layers, config.bits)) if config.layers else None
    )
    layers = quantizable_layers(model)
    bits = {}
    for name in selected or layers:
        layer = config.for_layer(name, layers[name])
        if layer is not None:
            bits[name] = _check_bits(name, layer.bits)
    return bits


def kmeans_model(model: nn.Module, config: KMeansConfig, task: TensorTask | None) -> nn.Module:
    """``model`` (changed in place) whose layers share ``2**bits`` k-means centroids each.

    Zeros (pruned weights) are kept out of the clusters and stay zero. With fine-tuning
    epochs, the centroids (and the remaining float parameters such as biases) are trained.
    """
    layer_bits = config_bits(model, config)
    if config.finetune.epochs and task is None:
        raise UserError("kmeans: centroid fine-tuning needs a task")
    quantized = _wrap(model, layer_bits, fit=True)
    if getattr(quantized, "mobiledl_arch", None):
        record_transform(quantized, "kmeans", {"layers": layer_bits})
    if config.finetune.epochs:
        train(quantized, task, config.finetune)
    return quantized


def kmeans_quantize(
    model: nn.Module,
    bits: int | Mapping[str, int],
    task: TensorTask | None = None,
    finetune_epochs: int = 0,
    train_config: TrainConfig | None = None,
) -> nn.Module:
    """Deprecated: use ``mobiledl.apply(model, KMeansConfig(...), task)``."""
    warnings.warn("kmeans_quantize() is deprecated; use mobiledl.apply", DeprecationWarning, 2)
    if finetune_epochs < 0:
        raise UserError(f"kmeans: finetune_epochs must be >= 0; got {finetune_epochs}")
    base = train_config or TrainConfig(lr=FINETUNE_LR, progress=False)
    return kmeans_model(clone_module(model), _config_of(model, bits, base, finetune_epochs), task)


def _config_of(
    model: nn.Module, bits: int | Mapping[str, int], base: TrainConfig, epochs: int
) -> KMeansConfig:
    finetune = dataclasses.replace(base, epochs=epochs)
    if not isinstance(bits, Mapping):
        return KMeansConfig(bits=bits, finetune=finetune)
    layer_bits = resolve_bits(model, bits)
    rules = tuple(LayerRule((name,), {"bits": b}) for name, b in layer_bits.items())
    return KMeansConfig(layers=tuple(layer_bits), finetune=finetune, overrides=rules)


def kmeans_layers(model: nn.Module) -> dict[str, KMeansLayer]:
    """The :class:`KMeansLayer` modules of ``model`` by module name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, KMeansLayer)}


# ---------------------------------------------------------------- storage (Deep Compression)


@dataclass
class LayerStorage:
    """Bytes of one layer's weight after each stage of Deep Compression.

    - ``dense``: every weight at fp32.
    - ``sparse`` (pruning): the nonzeros at fp32 in the relative-index format of
      :mod:`mobiledl.compress.encode` (``index_bits`` per gap, filler entries included).
    - ``quantized`` (+ weight sharing): the same entries with a fixed-width cluster index
      instead of the value, plus the fp32 codebook. Filler entries need a symbol of their own
      (``2**bits``, decoded as an exact zero), so a layer with fillers spends ``bits + 1``
      bits per entry (the paper's count, ``bits``, could not tell a filler from a centroid).
    - ``huffman`` (+ Huffman coding): the gap stream and the cluster-index stream each
      Huffman-coded with its code table counted (or fixed-width where that is smaller, see
      :func:`coded_bytes`), plus the codebook.

    A layer without pruned weights is stored densely (no gaps) at every stage.
    """

    name: str
    weights: int
    nonzeros: int
    bits: int
    index_bits: int
    dense_bytes: int
    sparse_bytes: int
    quantized_bytes: int
    huffman_bytes: int

    @property
    def compression_ratio(self) -> float:
        return self.dense_bytes / self.huffman_bytes if self.huffman_bytes else math.inf


STAGES = ("dense", "sparse", "quantized", "huffman")


@dataclass
class StorageReport:
    """Per-layer and total bytes after pruning, weight sharing and Huffman coding.

    ``other_values`` counts every other float parameter and buffer (biases, layers left in
    float, norm statistics), stored at fp32 at every stage and included in the totals.
    """

    layers: list[LayerStorage]
    other_values: int

    @property
    def other_bytes(self) -> int:
        return 4 * self.other_values

    def total(self, stage: str) -> int:
        """Bytes of the whole model after ``stage`` (one of :data:`STAGES`)."""
        return sum(getattr(row, f"{stage}_bytes") for row in self.layers) + self.other_bytes

    @property
    def compression_ratio(self) -> float:
        """Dense fp32 bytes over bytes after Huffman coding, for the whole model."""
        return self.total("dense") / self.total("huffman")

    def to_dict(self) -> dict[str, Any]:
        layers = [
            {**dataclasses.asdict(row), "compression_ratio": row.compression_ratio}
            for row in self.layers
        ]
        totals = {f"{stage}_bytes": self.total(stage) for stage in STAGES}
        return {
            "layers": layers,
            "other_values": self.other_values,
            "other_bytes": self.other_bytes,
            "total": {**totals, "compression_ratio": self.compression_ratio},
        }

    def table(self) -> str:
        """A plain-text table: one row per layer, the fp32 rest, and the total."""
        header = ["layer", "weights", "nonzero", "bits", "idx", *STAGES, "ratio"]
        rows = [_storage_row(row) for row in self.layers]
        rows.append(["other (fp32)", f"{self.other_values:,}", "", "", "", *_fp32_cells(self)])
        rule_at = len(rows) + 1
        totals = [self.total(stage) for stage in STAGES]
        rows.append(["total", "", "", "", "", *(f"{t:,}" for t in totals)])
        rows[-1].append(f"{self.compression_ratio:.1f}x")
        lines = _align([header, *rows])
        rule = "-" * len(lines[0])
        return "\n".join([lines[0], rule, *lines[1:rule_at], rule, *lines[rule_at:]])

    def __str__(self) -> str:
        return self.table()


def _storage_row(row: LayerStorage) -> list[str]:
    return [
        row.name,
        f"{row.weights:,}",
        f"{100 * row.nonzeros / row.weights:.1f}%",
        str(row.bits),
        str(row.index_bits) if row.nonzeros < row.weights else "-",
        *(f"{getattr(row, f'{stage}_bytes'):,}" for stage in STAGES),
        f"{row.compression_ratio:.1f}x",
    ]


def _fp32_cells(report: StorageReport) -> list[str]:
    return [f"{report.other_bytes:,}"] * len(STAGES) + ["1.0x"]


def _align(rows: list[list[str]]) -> list[str]:
    """Columns padded to equal width; all but the first right-aligned."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in rows
    ]


def coded_bytes(symbols: np.ndarray, alphabet: int) -> int:
    """Bytes of a symbol stream: Huffman-coded with its code table, or fixed-width if smaller.

    The table of a canonical Huffman code is one ``CODE_LENGTH_BITS`` code length per symbol
    of the ``alphabet``; an encoder falls back to ``ceil(log2(alphabet))`` bits per symbol
    when the table would cost more than the coding saves (small layers).
    """
    fixed = math.ceil(len(symbols) * math.ceil(math.log2(alphabet)) / 8)
    table = math.ceil(alphabet * CODE_LENGTH_BITS / 8)
    return min(huffman_bytes(symbols) + table, fixed)


def layer_storage(name: str, layer: KMeansLayer, index_bits: int) -> LayerStorage:
    """The :class:`LayerStorage` of one k-means layer with ``index_bits``-bit gaps."""
    mask = layer.mask.detach().cpu()
    weights, nonzeros, bits = mask.numel(), int(mask.sum()), layer.bits
    codebook = 4 * layer.codebook.numel()
    ids = layer.indices.detach().cpu().flatten().numpy().astype(np.int64)
    row = dict(name=name, weights=weights, nonzeros=nonzeros, bits=bits, index_bits=index_bits)
    if nonzeros == weights:
        return LayerStorage(
            **row,
            dense_bytes=4 * weights,
            sparse_bytes=4 * weights,
            quantized_bytes=math.ceil(weights * bits / 8) + codebook,
            huffman_bytes=coded_bytes(ids, 2**bits) + codebook,
        )
    if nonzeros == 0:  # nothing stored: the decoder knows the shape
        return LayerStorage(
            **row, dense_bytes=4 * weights, sparse_bytes=0, quantized_bytes=0, huffman_bytes=0
        )
    gaps, stored = relative_index_encoding(mask, index_bits)
    symbols = np.where(mask.flatten().numpy()[stored], ids[stored], 2**bits)
    alphabet = 2**bits + (1 if len(stored) > nonzeros else 0)  # + the filler symbol
    width = math.ceil(math.log2(alphabet))
    coded = coded_bytes(gaps, 2**index_bits) + coded_bytes(symbols, alphabet)
    return LayerStorage(
        **row,
        dense_bytes=4 * weights,
        sparse_bytes=sparse_relative_index_bytes(mask, index_bits, 32),
        quantized_bytes=sparse_relative_index_bytes(mask, index_bits, width) + codebook,
        huffman_bytes=coded + codebook,
    )


def storage_report(
    model: nn.Module, conv_index_bits: int = CONV_INDEX_BITS, fc_index_bits: int = FC_INDEX_BITS
) -> StorageReport:
    """Storage of a k-means quantized ``model`` after each Deep Compression stage.

    Gaps take ``conv_index_bits`` in convolutions and ``fc_index_bits`` in linear layers
    (8 and 5 in the paper).
    """
    layers = kmeans_layers(model)
    if not layers:
        raise UserError("storage report: the model has no k-means quantized layer")
    rows = [
        layer_storage(
            name,
            layer,
            fc_index_bits if isinstance(layer.layer, nn.Linear) else conv_index_bits,
        )
        for name, layer in layers.items()
    ]
    codebooks = {id(layer.codebook) for layer in layers.values()}
    other = sum(p.numel() for p in model.parameters() if id(p) not in codebooks)
    other += sum(b.numel() for b in model.buffers() if b.is_floating_point())
    return StorageReport(layers=rows, other_values=other)


# ---------------------------------------------------------------- the pipeline


def _prune(
    model: nn.Module,
    task: TensorTask,
    sparsity: float | Mapping[str, float],
    steps: int,
    epochs: int,
    train_config: TrainConfig,
) -> nn.Module:
    """Fine-grained magnitude pruning, ``steps`` rounds of prune + fine-tune (in place)."""
    if not isinstance(sparsity, Mapping):
        if sparsity == 0:
            return model
        target: float | dict[str, float] = float(sparsity)
    else:
        target = {f"{k.removesuffix('.weight')}.weight": v for k, v in sparsity.items()}
    config = PruneConfig(
        granularity="element",
        criterion="l1",
        sparsity=target,
        scope="layer",
        schedule="iterative" if epochs else "oneshot",
        steps=steps,
        finetune=dataclasses.replace(train_config, epochs=epochs),
    )
    return apply(model, config, task)


def deep_compression(
    model: nn.Module,
    task: TensorTask,
    prune_sparsity: float | Mapping[str, float],
    conv_bits: int = 8,
    fc_bits: int = 5,
    prune_steps: int = 3,
    prune_epochs: int = 10,
    finetune_epochs: int = 10,
    conv_index_bits: int = CONV_INDEX_BITS,
    fc_index_bits: int = FC_INDEX_BITS,
    train_config: TrainConfig | None = None,
) -> tuple[nn.Module, StorageReport]:
    """Deep Compression (Han et al. 2016): prune, share weights by k-means, Huffman-code.

    1. Fine-grained magnitude pruning in ``prune_steps`` rounds, each followed by
       ``prune_epochs`` of masked fine-tuning (Han et al. 2015); ``prune_sparsity`` is one
       sparsity for every layer or a dict ``{layer: sparsity}``.
    2. K-means weight sharing with ``conv_bits`` / ``fc_bits`` per layer (8 / 5 in the paper),
       then ``finetune_epochs`` of centroid fine-tuning.
    3. Huffman coding of the cluster indices and of the relative-index gaps, measured by the
       returned :class:`StorageReport`.

    ``model`` is not changed. Training uses ``train_config`` (default SGD, lr 0.01) with its
    epochs replaced per stage.
    """
    base = train_config or TrainConfig(lr=FINETUNE_LR, progress=False)
    pruned = _prune(clone_module(model), task, prune_sparsity, prune_steps, prune_epochs, base)
    bits = {
        name: fc_bits if isinstance(layer, nn.Linear) else conv_bits
        for name, layer in quantizable_layers(pruned).items()
    }
    config = _config_of(pruned, bits, base, finetune_epochs)
    quantized = kmeans_model(pruned, config, task)
    return quantized, storage_report(quantized, conv_index_bits, fc_index_bits)
