"""Adapt a pretrained model to a new task on the device, with one of five methods.

``full``, ``last`` and ``bias`` are TinyTL's baselines (``transfer``), ``tinytl`` is Cai et al.
2020 (``tinytl``) and ``sparse`` is MCUNetV3's sparse update under a memory budget (Lin et al.
2022, ``sparse_update``). Every method trains with the same lean engine (``ondevice``), and every
result reports the profiler's predicted training peak next to the peak measured on a real step.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from mobiledl.core.clone import clone_module
from mobiledl.core.config import MethodConfig
from mobiledl.core.inputs import describe_specs, specs_match
from mobiledl.core.task import TensorTask
from mobiledl.errors import UserError
from mobiledl.models.registry import model_input_specs
from mobiledl.profile import Measurement
from mobiledl.train.ondevice.finetune import FineTuneConfig, fine_tune
from mobiledl.train.ondevice.memory import TrainingMemoryProfile, training_memory
from mobiledl.train.ondevice.sparse_update import SparseUpdateConfig, sparse_update
from mobiledl.train.ondevice.step import MeasuredStep, measure_training_step
from mobiledl.train.ondevice.tinytl import LiteResidual, TinyTLConfig, find_blocks, tinytl
from mobiledl.train.trainer import evaluate, seed_everything
from mobiledl.train.transfer import BASELINES, freeze, replace_classifier
from mobiledl.validate import check_int, check_number

METHODS = (*BASELINES, "tinytl", "sparse")

#: Learning rates that worked for each method (SGD with momentum, cosine schedule).
DEFAULT_LR = {"full": 0.01, "last": 0.05, "bias": 0.05, "tinytl": 0.05, "sparse": 0.05}


@dataclass(frozen=True, kw_only=True)
class AdaptConfig(MethodConfig):
    """Adapt a pretrained model to a new task on the device (Cai et al. 2022, Sec. 4): which
    parameters train, how, and within how much training memory.

    - ``strategy``: ``full``, ``last`` (classifier only), ``bias`` (biases and classifier),
      ``tinytl`` (lite residuals + biases, Cai et al. 2020) or ``sparse`` (sparse update under
      the memory budget, Lin et al. 2022).
    - ``epochs`` / ``batch_size`` / ``lr`` / ``optimizer``: the fine-tuning run (``lr``
      ``None``: a rate that worked for the strategy).
    - ``memory_budget``: bytes of predicted training peak the run must fit in (``sparse``
      needs one; ``tinytl`` adapts only as many of the last blocks as fit).
    - ``checkpoint_segments``: gradient checkpointing in this many segments.
    - ``seed``: seeds the new classifier, the lite modules and the training order.
    - ``tinytl`` / ``sparse``: the settings of those strategies.
    """

    method: ClassVar[str] = "adapt"

    strategy: Literal["full", "last", "bias", "tinytl", "sparse"] = "tinytl"
    epochs: int = 10
    batch_size: int = 32
    lr: float | None = None
    optimizer: Literal["sgd", "momentum", "adam"] = "momentum"
    memory_budget: int | None = None
    checkpoint_segments: int | None = None
    seed: int = 0
    tinytl: TinyTLConfig = field(default_factory=TinyTLConfig)
    sparse: SparseUpdateConfig = field(default_factory=SparseUpdateConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.strategy == "sparse" and self.memory_budget is None:
            raise UserError("strategy 'sparse' needs a memory budget (--memory-budget-kb)")
        if self.memory_budget is not None and self.memory_budget <= 0:
            raise UserError(f"memory_budget must be > 0 bytes; got {self.memory_budget}")
        if self.epochs < 0 or self.batch_size < 1:
            raise UserError("epochs must be >= 0 and batch_size >= 1")
        if self.lr is not None:
            check_number(self.lr, "lr", 0.0)
        if self.checkpoint_segments is not None:
            check_int(self.checkpoint_segments, "checkpoint_segments", 1)

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.strategy]


@dataclass
class AdaptResult:
    """The adapted model, its test accuracy and its training memory (predicted and measured)."""

    model: nn.Module
    method: str
    accuracy: float
    predicted: TrainingMemoryProfile
    measured: MeasuredStep
    plan: dict[str, Any]
    history: list[dict[str, float]]

    def measurement(self, name: str = "model") -> Measurement:
        """``peak_memory_bytes`` is the predicted training peak; ``extra`` has the measured one."""
        measurement = self.predicted.measurement(name)
        measurement.accuracy = self.accuracy
        measurement.extra.update(
            method=self.method,
            measured_peak_memory_bytes=self.measured.peak_bytes,
            trainable_params=self.predicted.trainable_params,
            plan=self.plan,
        )
        return measurement


def adapt(model: nn.Module, task: TensorTask, config: AdaptConfig) -> AdaptResult:
    """Deprecated: use ``mobiledl.apply(model, AdaptConfig(...), task)`` (a new module; the
    measurements are in its report)."""
    warnings.warn("adapt() is deprecated; use mobiledl.apply", DeprecationWarning, stacklevel=2)
    return adapt_model(model, task, config)


def adapt_model(model: nn.Module, task: TensorTask, config: AdaptConfig) -> AdaptResult:
    """Adapt ``model`` to ``task`` in place with ``config.strategy`` and measure the result."""
    _check_input(model, task)
    seed_everything(config.seed)  # the new classifier and lite modules start from the seed too
    replace_classifier(model, task.num_classes)
    plan = _prepare(model, task, config)
    x, y = (t[: config.batch_size] for t in task.split("train"))
    predicted = training_memory(
        model, x, y, config.optimizer, config.checkpoint_segments, task.loss
    )
    budget = config.memory_budget
    if budget is not None and config.strategy != "sparse" and predicted.peak_bytes > budget:
        raise UserError(
            f"method '{config.strategy}' needs {predicted.peak_bytes / 1024:.0f} KB of training "
            f"memory at batch size {config.batch_size}, over the budget of {budget / 1024:.0f} KB"
        )
    history = fine_tune(model, task, fine_tune_settings(config))
    measured = measure_training_step(
        model, x, y, config.optimizer, config.checkpoint_segments, task.loss
    )
    accuracy = evaluate(model, task, "test")
    return AdaptResult(model, config.strategy, accuracy, predicted, measured, plan, history)


def fine_tune_settings(config: AdaptConfig) -> FineTuneConfig:
    """The fine-tuning run of ``config``: every field the two configs share, with the
    strategy's learning rate."""
    shared = {f.name for f in dataclasses.fields(FineTuneConfig)}
    values = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    settings = {name: value for name, value in values.items() if name in shared}
    return FineTuneConfig(**{**settings, "lr": config.learning_rate})


def _prepare(model: nn.Module, task: TensorTask, config: AdaptConfig) -> dict[str, Any]:
    """Freeze / wrap / quantize ``model`` for the method; returns what was chosen."""
    if config.strategy in BASELINES:
        freeze(model, config.strategy)
        return {}
    if config.strategy == "tinytl":
        settings = config.tinytl
        if config.memory_budget is not None and settings.last_blocks is None:
            settings = _tinytl_within_budget(model, task, config)
        tinytl(model, settings)
        blocks = [name for name, m in model.named_modules() if isinstance(m, LiteResidual)]
        return {"lite_residual_blocks": blocks, "last_blocks": settings.last_blocks}
    sparse = dataclasses.replace(
        config.sparse,
        memory_budget=config.memory_budget,
        batch_size=config.batch_size,
        optimizer=config.optimizer,
        seed=config.seed,
    )
    _, plan = sparse_update(model, task, sparse)
    return {"bias_depth": plan.bias_depth, "layers": plan.layers}


def _tinytl_within_budget(model: nn.Module, task: TensorTask, config: AdaptConfig) -> TinyTLConfig:
    """TinyTL with lite residuals (and trainable biases) in as many of the last blocks as the
    predicted training peak allows within ``config.memory_budget``."""
    x, y = (t[: config.batch_size] for t in task.split("train"))
    budget = config.memory_budget
    assert budget is not None
    blocks = len(find_blocks(model, x[:1]))
    peak = None
    for count in range(blocks, 0, -1):
        settings = dataclasses.replace(
            config.tinytl, last_blocks=None if count == blocks else count
        )
        args = (config.optimizer, config.checkpoint_segments, task.loss)
        with torch.random.fork_rng():  # trials (lite inits, dropout) leave the real run as is
            trial = tinytl(clone_module(model), settings, x[:1])
            peak = training_memory(trial, x, y, *args).peak_bytes
        if peak <= budget:
            return settings
    if peak is None:  # no image-to-image blocks: biases and classifier only
        return config.tinytl
    raise UserError(
        f"method 'tinytl' does not fit a budget of {budget / 1024:.0f} KB even in the last block "
        f"at batch size {config.batch_size} (predicted {peak / 1024:.0f} KB)"
    )


def _check_input(model: nn.Module, task: TensorTask) -> None:
    specs = model_input_specs(model)
    if specs is not None and not specs_match(task.input_specs(), specs):
        raise UserError(
            f"the model takes inputs {describe_specs(specs)} but task '{task.name}' gives inputs "
            f"{describe_specs(task.input_specs())}"
        )
