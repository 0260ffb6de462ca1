"""Training: the trainer (with a generic loss-term hook) and on-device training.

``train(..., checkpoint=PATH)`` resumes after the last finished epoch, bit-identical to an
uninterrupted run (``mobiledl.train.resume``).

On-device training (Cai et al. 2022, Sec. 4): ``adapt`` a pretrained model to a new task with
the TinyTL baselines (``full``, ``last``, ``bias``), TinyTL (Cai et al. 2020) or sparse update
under a memory budget (Lin et al. 2022), all trained by the lean engine of ``lean`` / ``step``.
"""

from mobiledl.train.ondevice.adapt import METHODS, AdaptConfig, AdaptResult, adapt
from mobiledl.train.ondevice.finetune import FineTuneConfig, fine_tune
from mobiledl.train.ondevice.lean import LeanAutograd, fused_layers, gradient_checkpointing
from mobiledl.train.ondevice.memory import TrainingMemoryProfile, trace_training, training_memory
from mobiledl.train.ondevice.sparse_update import (
    Contribution,
    QuantizedConv2d,
    QuantizedLinear,
    SparsePlan,
    SparseUpdateConfig,
    apply_plan,
    quantize_for_sparse_update,
    select_update,
    sparse_update,
)
from mobiledl.train.ondevice.step import (
    MeasuredStep,
    make_optimizer,
    measure_training_step,
    training_step,
)
from mobiledl.train.ondevice.tinytl import LiteResidual, TinyTLConfig, tinytl
from mobiledl.train.resume import CheckpointError, epoch_checkpoints
from mobiledl.train.trainer import (
    ExtraLoss,
    TrainConfig,
    TrainResult,
    evaluate,
    predict,
    predict_split,
    seed_everything,
    train,
)
from mobiledl.train.transfer import classifier_layer, freeze, replace_classifier

__all__ = [
    "METHODS",
    "AdaptConfig",
    "AdaptResult",
    "CheckpointError",
    "Contribution",
    "ExtraLoss",
    "FineTuneConfig",
    "LeanAutograd",
    "LiteResidual",
    "MeasuredStep",
    "QuantizedConv2d",
    "QuantizedLinear",
    "SparsePlan",
    "SparseUpdateConfig",
    "TinyTLConfig",
    "TrainConfig",
    "TrainResult",
    "TrainingMemoryProfile",
    "adapt",
    "apply_plan",
    "classifier_layer",
    "epoch_checkpoints",
    "evaluate",
    "fine_tune",
    "freeze",
    "fused_layers",
    "gradient_checkpointing",
    "make_optimizer",
    "measure_training_step",
    "predict",
    "predict_split",
    "quantize_for_sparse_update",
    "replace_classifier",
    "seed_everything",
    "select_update",
    "sparse_update",
    "tinytl",
    "trace_training",
    "train",
    "training_memory",
    "training_step",
]
