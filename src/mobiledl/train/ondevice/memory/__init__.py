"""Training memory: what one training step must hold, layer by layer, and its peak.

On-device training is limited by memory, not compute (Cai et al. 2022, Sec. 4; Cai et al.
2020, TinyTL; Lin et al. 2022, MCUNetV3). A step holds

- **weights** (parameters and buffers, at their storage precision, e.g. int8 frozen weights);
- **gradients** of the trainable parameters (none for frozen ones);
- **optimizer state**: 0 (plain SGD), 1x (SGD momentum) or 2x (Adam) the trainable parameters;
- the **input batch**: one batch of inputs and targets as the data loader hands it over (its
  own buffers, in the training layout), never the dataset it comes from: a slice such as
  ``x_train[:64]`` is copied first (``training_batch``), as the loader's collation copies;
- **activations saved for backward**, which depend on what trains. This models
  ``mobiledl.train.ondevice.lean.LeanAutograd``, the engine mobiledl trains with: a convolution or
  linear layer keeps its input only if its weight trains (a bias or the gradient flowing
  on to earlier layers needs no input); ReLU/ReLU6 keep a 1-bit mask; batch norm in training
  mode keeps its input, with frozen statistics and scale it keeps nothing; h-swish and
  h-sigmoid keep their input, max pooling its input and int64 indices, dropout its float
  noise, products the other factor; pooling, adds, concatenations and views keep nothing;
- frozen convolution + batch norm (+ ReLU/ReLU6) blocks run fused (``fusable_conv_bn``): one
  output tensor, BN folded into the weight, the activation in place;
- **transients**: the outputs of the op running, gradients of activations in flight during
  backward (one buffer per activation, alive from its last consumer's backward to its
  producer's), and known kernel workspaces (the ReLU mask before packing, a product's
  broadcast gradient, Adam's update temporaries).

``training_memory(model, x, y)`` traces one forward pass (ATen ops, in ``no_grad`` so nothing
is saved) with the model in the trainer's modes (``training_modes``), applies these rules
with the parameters' current ``requires_grad`` flags, and replays forward, backward and the
optimizer step as a timeline of allocations and frees. The peak is the maximum of the live
bytes over that timeline. With gradient checkpointing over ``k`` stages of ``model.features``
(Chen et al. 2016, "Training Deep Nets with Sublinear Memory Cost") a stage keeps only its
input during the forward pass and recomputes its saved activations when backward reaches it.

Layers may define their own accounting: a module with a ``memory_for_training(input_shape,
output_shape)`` method (e.g. the int8 layers of sparse update) is one op whose saved bytes and
workspaces it reports as a ``ModuleMemory``.


The model lives in ``layout`` (the trainer's conventions), ``trace`` (one forward pass),
``rules`` (what each op keeps and needs), ``simulation`` (the step as a timeline) and
``results`` (what it returns).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mobiledl.errors import UserError
from mobiledl.train.ondevice.memory.layout import (
    OPTIMIZER_STATES,
    TILE,
    LossFn,
    clamp_bounds,
    fusable_conv_bn,
    segment_bounds,
    training_batch,
    training_layout,
    training_modes,
)
from mobiledl.train.ondevice.memory.results import (
    LayerTrainingMemory,
    ModuleMemory,
    TrainingMemoryProfile,
)
from mobiledl.train.ondevice.memory.rules import uses_onednn
from mobiledl.train.ondevice.memory.simulation import StepSimulation
from mobiledl.train.ondevice.memory.trace import Activation, ForwardTracer, TracedOp, storage_nbytes

__all__ = [
    "OPTIMIZER_STATES",
    "TILE",
    "LayerTrainingMemory",
    "ModuleMemory",
    "TrainingMemoryProfile",
    "TrainingTrace",
    "clamp_bounds",
    "fusable_conv_bn",
    "segment_bounds",
    "trace_training",
    "training_batch",
    "training_layout",
    "training_memory",
    "training_modes",
    "uses_onednn",
]


def training_memory(
    model: nn.Module,
    example_input: Tensor,
    target: Tensor | None = None,
    optimizer: str = "momentum",
    checkpoint_segments: int | None = None,
    loss_fn: LossFn = F.cross_entropy,
) -> TrainingMemoryProfile:
    """Predict the memory of one training step of ``model`` on the batch ``example_input``.

    ``target`` defaults to class 0 for every sample. Trainable parameters are those with
    ``requires_grad``. ``optimizer`` is ``sgd``, ``momentum`` or ``adam``.
    """
    return trace_training(model, example_input, target, loss_fn).profile(
        optimizer, checkpoint_segments
    )


def trace_training(
    model: nn.Module,
    example_input: Tensor,
    target: Tensor | None = None,
    loss_fn: LossFn = F.cross_entropy,
) -> TrainingTrace:
    """Trace one forward pass; ``.profile()`` then predicts the step for the current flags.

    Tracing once and profiling many times is how sparse update prices candidate updates.
    """
    if not isinstance(example_input, Tensor) or example_input.dim() < 1:
        raise UserError("training memory needs an example input batch (a tensor)")
    if target is None:
        target = torch.zeros(len(example_input), dtype=torch.long)
    return TrainingTrace(model, training_batch(example_input), training_batch(target), loss_fn)


class TrainingTrace:
    """One traced forward pass (ops, activations, owners) of a model on one batch.

    ``profile`` re-reads which parameters train; which blocks run fused is fixed at tracing, so
    trace again after freezing or unfreezing convolution weights or batch-norm scales.
    """

    def __init__(self, model: nn.Module, x: Tensor, y: Tensor, loss_fn: LossFn) -> None:
        self.model = model
        self.batch_size = len(x)
        self.input_bytes = storage_nbytes(x) + storage_nbytes(y)
        self.acts: list[Activation] = []
        self.ops: list[TracedOp] = []
        self.feature_inputs: dict[int, int] = {}
        self.types = {name: type(m).__name__ for name, m in model.named_modules()}
        ForwardTracer(self).run(x, y, loss_fn)

    def profile(
        self, optimizer: str = "momentum", checkpoint_segments: int | None = None
    ) -> TrainingMemoryProfile:
        """Predict the step for the parameters' current ``requires_grad`` flags."""
        if optimizer not in OPTIMIZER_STATES:
            raise UserError(
                f"optimizer must be one of {', '.join(OPTIMIZER_STATES)}; got {optimizer}"
            )
        return StepSimulation(self, optimizer, checkpoint_segments).run()
