"""Pruning schedules: when to prune how much, and how to recover accuracy in between.

- ``oneshot``: prune to the target once, then fine-tune (``finetune.epochs``, may be 0).
- ``iterative``: ``steps`` rounds of prune -> fine-tune, each round removing the same fraction
  of the remaining weights (Han et al. 2015, "Learning both Weights and Connections").
- ``agp``: automated gradual pruning (Zhu & Gupta 2017): during training, sparsity follows
  ``s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (n * dt))**3`` with ``steps`` pruning events over
  the first ``agp_ramp`` of the training steps.
- ``lottery``: iterative magnitude pruning with weight rewinding (Frankle & Carbin 2019;
  rewinding to iteration k of Frankle et al. 2020): train, record the weights after
  ``rewind_epochs`` epochs, prune, reset the surviving weights to the recorded ones, retrain.

Every schedule takes ``(model, task, config)``, prunes ``model`` in place with masks
(``masks.py``) and returns it with the masks still attached; ``prune`` bakes them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
from collections.abc import Callable, Iterator

import torch
from torch import Tensor, nn

from mobiledl.compress.prune.config import PruneConfig
from mobiledl.compress.prune.criteria import DATA_CRITERIA, weight_scores
from mobiledl.compress.prune.granularity import Target, compute_masks
from mobiledl.compress.prune.masks import (
    apply_masks,
    current_masks,
    prunable_layers,
    sparsity_of,
)
from mobiledl.core.inputs import Inputs, call_model, slice_batch
from mobiledl.core.task import TensorTask
from mobiledl.errors import UserError
from mobiledl.models.registry import example_input_for
from mobiledl.train import train

logger = logging.getLogger(__name__)

Schedule = Callable[[nn.Module, TensorTask | None, PruneConfig], nn.Module]


# ---------------------------------------------------------------- one pruning step


def prune_step(
    model: nn.Module, config: PruneConfig, target: Target, task: TensorTask | None = None
) -> dict[str, Tensor]:
    """Score the current (masked) weights, grow the masks to ``target`` and attach them."""
    scores = weight_scores(
        model,
        config.criterion,
        task,
        config.num_batches,
        exclude=config.exclude,
        seed=config.finetune.seed,
    )
    granularity = config.parsed_granularity
    masks = compute_masks(scores, granularity, target, config.ranking_scope, current_masks(model))
    if not masks:
        raise UserError(f"no layer of the model can be pruned at granularity {granularity}")
    apply_masks(model, masks)
    return masks


def resolve_target(model: nn.Module, config: PruneConfig, task: TensorTask | None = None) -> Target:
    """The final sparsity: the ``N:M`` pattern's, ``config.sparsity``, or one found by
    bisection so that the non-zero MACs of convolution and linear layers match
    ``config.macs_ratio``."""
    granularity = config.parsed_granularity
    if granularity.kind == "nm":
        return granularity.pattern_sparsity
    if config.sparsity is not None:
        return config.sparsity
    return _sparsity_for_macs(model, config, task)


def _sparsity_for_macs(model: nn.Module, config: PruneConfig, task: TensorTask | None) -> float:
    positions = _output_positions(model, example_input(model, task))
    dense = sum(m.weight.numel() * positions[n] for n, m in prunable_layers(model).items())
    scores = weight_scores(
        model, config.criterion, task, config.num_batches, exclude=config.exclude
    )
    current = current_masks(model)
    granularity = config.parsed_granularity

    def macs_ratio(sparsity: float) -> float:
        masks = compute_masks(scores, granularity, sparsity, config.ranking_scope, current)
        pruned = sum(float((1 - masks[n]).sum()) * positions[n] for n in masks)
        return 1.0 - pruned / dense

    low, high = 0.0, 0.999
    if macs_ratio(high) > config.macs_ratio:
        raise UserError(
            f"macs_ratio {config.macs_ratio} is out of reach: pruning 99.9% of the prunable "
            f"weights keeps {macs_ratio(high):.3f} of the MACs"
        )
    for _ in range(40):
        middle = (low + high) / 2
        low, high = (middle, high) if macs_ratio(middle) > config.macs_ratio else (low, middle)
    return high


def _output_positions(model: nn.Module, x: Inputs) -> dict[str, int]:
    """Multiplications per weight element for one input: output positions of each layer."""
    positions: dict[str, int] = {}
    handles = []
    for name, module in prunable_layers(model).items():

        def hook(m: nn.Module, args: tuple, out: Tensor, name: str = name) -> None:
            channels = m.out_features if isinstance(m, nn.Linear) else m.out_channels
            positions[name] = positions.get(name, 0) + out[:1].numel() // channels

        handles.append(module.register_forward_hook(hook))
    was_training = model.training
    try:
        with torch.no_grad():
            call_model(model.eval(), slice_batch(x, 0, 1))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return {name: positions.get(name, 0) for name in prunable_layers(model)}


def example_input(model: nn.Module, task: TensorTask | None) -> Inputs:
    """One real input from ``task``, else a random one of the shape the model was built for."""
    if task is not None:
        return task.example_input(1)
    arch = getattr(model, "mobiledl_arch", None)
    if not arch:
        raise UserError("an example input is needed: pass a task or a model from create_model")
    return example_input_for(arch)


def _scaled(target: Target, fraction: Callable[[float], float]) -> Target:
    """Apply ``fraction(final_sparsity) -> sparsity`` to one number or every layer's."""
    if isinstance(target, dict):
        return {name: fraction(value) for name, value in target.items()}
    return fraction(target)


def _finetune(model: nn.Module, task: TensorTask | None, config: PruneConfig, epochs: int) -> None:
    if epochs >= 1 and task is not None:
        train(model, task, dataclasses.replace(config.finetune, epochs=epochs))


def _needs_task(config: PruneConfig, task: TensorTask | None) -> None:
    if task is not None:
        return
    if config.criterion in DATA_CRITERIA:
        raise UserError(f"criterion '{config.criterion}' needs a task: it estimates from data")
    if config.finetune.epochs > 0:
        raise UserError("fine-tuning after pruning needs a task")


# ---------------------------------------------------------------- schedules


def oneshot(model: nn.Module, task: TensorTask | None, config: PruneConfig) -> nn.Module:
    """Prune once to the target, then fine-tune ``config.finetune.epochs`` epochs."""
    _needs_task(config, task)
    prune_step(model, config, resolve_target(model, config, task), task)
    _finetune(model, task, config, config.finetune.epochs)
    return model


def iterative_sparsity(final: float, step: int, steps: int) -> float:
    """Sparsity after round ``step`` of ``steps`` when each round removes the same fraction of
    the remaining weights: ``1 - (1 - final) ** (step / steps)``."""
    return 1.0 - (1.0 - final) ** (step / steps)


def iterative(model: nn.Module, task: TensorTask | None, config: PruneConfig) -> nn.Module:
    """``steps`` rounds of prune -> fine-tune (Han et al. 2015)."""
    _needs_task(config, task)
    target = resolve_target(model, config, task)
    for step in range(1, config.steps + 1):
        round_target = _scaled(target, lambda s, k=step: iterative_sparsity(s, k, config.steps))
        prune_step(model, config, round_target, task)
        logger.info(f"prune round {step}/{config.steps}: sparsity {sparsity_of(model):.3f}")
        _finetune(model, task, config, config.finetune.epochs)
    return model


def agp_sparsity(
    step: int, final: float, ramp_steps: int, initial: float = 0.0, start: int = 0
) -> float:
    """Zhu & Gupta 2017, eq. 1: ``s_f + (s_i - s_f) * (1 - (t - t0) / (n dt))**3``, held at
    ``s_i`` before ``t0 = start`` and at ``s_f`` after ``t0 + n dt = start + ramp_steps``."""
    progress = min(max((step - start) / max(ramp_steps, 1), 0.0), 1.0)
    return final + (initial - final) * (1.0 - progress) ** 3


@contextlib.contextmanager
def on_training_steps(model: nn.Module, callback: Callable[[int], None]) -> Iterator[None]:
    """Call ``callback(step)`` before every training-mode forward of ``model``; ``step`` counts
    the training forwards so far (so ``step`` optimizer updates have happened). Eval-mode
    forwards (validation, scoring) are not counted. Lets schedules act inside any loop."""
    count = 0

    def hook(module: nn.Module, args: tuple) -> None:
        nonlocal count
        if module.training:
            callback(count)
            count += 1

    handle = model.register_forward_pre_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def agp(model: nn.Module, task: TensorTask | None, config: PruneConfig) -> nn.Module:
    """Automated gradual pruning (Zhu & Gupta 2017) inside one ``mobiledl.train`` run.

    ``train`` returns the best-on-validation epoch; if that epoch came before the ramp
    reached the target, the target is enforced and the model fine-tuned for the epochs
    that followed the ramp.
    """
    if task is None:
        raise UserError("schedule 'agp' needs a task to train on")
    target = resolve_target(model, config, task)
    epochs = config.finetune.epochs
    steps_per_epoch = math.ceil(len(task.x_train) / config.finetune.batch_size)
    ramp = max(round(config.agp_ramp * epochs * steps_per_epoch), config.steps)
    events = {round(ramp * k / config.steps) for k in range(1, config.steps + 1)}

    def maybe_prune(step: int) -> None:
        if step in events:
            prune_step(model, config, _scaled(target, lambda s: agp_sparsity(step, s, ramp)), task)

    apply_masks(model, {n: torch.ones_like(m.weight) for n, m in _layers(model, config).items()})
    with on_training_steps(model, maybe_prune):
        train(model, task, config.finetune)
    reached = sparsity_of(model, config.exclude)
    prune_step(model, config, target, task)
    if sparsity_of(model, config.exclude) > reached + 1e-6:
        logger.info(
            "agp: best epoch preceded the end of the ramp; pruning to target and fine-tuning"
        )
        _finetune(model, task, config, max(1, round((1 - config.agp_ramp) * epochs)))
    return model


def _layers(model: nn.Module, config: PruneConfig) -> dict[str, nn.Module]:
    return prunable_layers(model, config.exclude)


def parameter_snapshot(model: nn.Module) -> dict[str, Tensor]:
    """Copies of all parameters keyed by their unmasked names (``"features.0.weight"``)."""
    return {_plain_name(n): p.detach().clone() for n, p in model.named_parameters()}


def rewind(model: nn.Module, snapshot: dict[str, Tensor]) -> nn.Module:
    """Reset every parameter to ``snapshot``; masks stay, so pruned weights remain zero."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.copy_(snapshot[_plain_name(name)])
    return model


def _plain_name(name: str) -> str:
    return name.replace(".parametrizations.weight.original", ".weight")


def lottery(model: nn.Module, task: TensorTask | None, config: PruneConfig) -> nn.Module:
    """Iterative magnitude pruning with rewinding (Frankle & Carbin 2019; Frankle et al. 2020).

    Trains ``finetune.epochs`` epochs, recording all parameters after ``rewind_epochs`` epochs
    (``0`` = the weights given). Then each of ``steps`` rounds prunes the same fraction of the
    remaining weights, rewinds the survivors to the record and retrains.
    """
    if task is None:
        raise UserError("schedule 'lottery' needs a task to train on")
    steps_per_epoch = math.ceil(len(task.x_train) / config.finetune.batch_size)
    rewind_step = round(config.rewind_epochs * steps_per_epoch)
    snapshot = parameter_snapshot(model)

    def record(step: int) -> None:
        if step == rewind_step:
            snapshot.update(parameter_snapshot(model))

    with on_training_steps(model, record):
        train(model, task, config.finetune)
    target = resolve_target(model, config, task)
    for step in range(1, config.steps + 1):
        round_target = _scaled(target, lambda s, k=step: iterative_sparsity(s, k, config.steps))
        prune_step(model, config, round_target, task)
        rewind(model, snapshot)
        logger.info(
            f"lottery round {step}/{config.steps}: sparsity {sparsity_of(model):.3f}, rewound"
        )
        train(model, task, config.finetune)
    return model


SCHEDULES: dict[str, Schedule] = {
    "oneshot": oneshot,
    "iterative": iterative,
    "agp": agp,
    "lottery": lottery,
}
