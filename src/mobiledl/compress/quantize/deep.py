"""Deep Compression recipes: the per-layer sparsity and codebook bits of each model.

Han et al. (ICLR 2016, Tables 2-3) prune the big hidden layers hardest and the small first
and last layers least, and share 2**8 values per convolution and 2**5 per fully connected
layer. The LeNet recipes below were chosen on the validation split of ``digits`` and
``mnist1d`` (``python -m benchmarks deep_compression``): 4-bit codebooks, because a
256-entry fp32 codebook (1 KB) outweighs a small pruned layer. Other models get
:func:`default_recipe`: the paper's bits and its pattern of sparsities.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from mobiledl.compress.quantize.kmeans import StorageReport, deep_compression, quantizable_layers
from mobiledl.core.task import TensorTask
from mobiledl.train.trainer import TrainConfig

#: Sparsity of the first and last weighted layer, and of the others, in the default recipe.
EDGE_SPARSITY = 0.5
CONV_SPARSITY, FC_SPARSITY = 0.7, 0.9


@dataclass(frozen=True)
class DeepCompressionRecipe:
    """Deep Compression settings for one model: per-layer sparsity, bits, epochs."""

    sparsity: dict[str, float] = field(default_factory=dict)
    conv_bits: int = 8
    fc_bits: int = 5
    prune_steps: int = 5
    prune_epochs: int = 15
    finetune_epochs: int = 15


RECIPES = {
    "lenet300": DeepCompressionRecipe(
        sparsity={"features.0": 0.92, "features.2": 0.97, "classifier": 0.6},
        conv_bits=4,
        fc_bits=4,
    ),
    "lenet5": DeepCompressionRecipe(
        sparsity={
            "features.0": 0.4,
            "features.3": 0.75,
            "features.6": 0.95,
            "classifier.0": 0.9,
            "classifier.2": 0.6,
        },
        conv_bits=4,
        fc_bits=4,
    ),
}

#: Per-task overrides, chosen on the validation split: on mnist1d's 40 inputs LeNet-300-100's
#: first layer is small and sensitive, so it keeps more weights and the 300x100 layer fewer
#: (validation accuracy 63.0% against 58.2% with the shared recipe, same size).
TASK_RECIPES = {
    ("lenet300", "mnist1d"): DeepCompressionRecipe(
        sparsity={"features.0": 0.88, "features.2": 0.98, "classifier": 0.6},
        conv_bits=4,
        fc_bits=4,
    ),
}


def recipe_for(name: str, task: str | None, model: nn.Module) -> DeepCompressionRecipe:
    """The recipe of zoo model ``name`` on ``task``, or :func:`default_recipe` of ``model``."""
    known = TASK_RECIPES.get((name, task or "")) or RECIPES.get(name)
    return known if known is not None else default_recipe(model)


def default_recipe(model: nn.Module) -> DeepCompressionRecipe:
    """The paper's pattern for any model: first and last weighted layer pruned to
    ``EDGE_SPARSITY``, other convolutions ``CONV_SPARSITY``, other linears ``FC_SPARSITY``;
    8-bit convolution and 5-bit linear codebooks."""
    layers = quantizable_layers(model)
    names = list(layers)
    sparsity = {
        name: EDGE_SPARSITY
        if name in (names[0], names[-1])
        else FC_SPARSITY
        if isinstance(layer, nn.Linear)
        else CONV_SPARSITY
        for name, layer in layers.items()
    }
    return DeepCompressionRecipe(sparsity=sparsity)


def compress(
    model: nn.Module, task: TensorTask, recipe: DeepCompressionRecipe, training: TrainConfig
) -> tuple[nn.Module, StorageReport]:
    """:func:`~mobiledl.compress.quantize.kmeans.deep_compression` with ``recipe``'s
    sparsities, bits and epochs (``training`` gives the rest); ``model`` is not changed."""
    return deep_compression(
        model,
        task,
        recipe.sparsity,
        conv_bits=recipe.conv_bits,
        fc_bits=recipe.fc_bits,
        prune_steps=recipe.prune_steps,
        prune_epochs=recipe.prune_epochs,
        finetune_epochs=recipe.finetune_epochs,
        train_config=training,
    )
