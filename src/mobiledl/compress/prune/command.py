"""``mobiledl prune MODEL --task TASK --granularity G --criterion C (--sparsity S | --macs-ratio R)
[--schedule oneshot|iterative|agp|lottery] [--finetune-epochs N] --out pruned.pt [--json]``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from mobiledl.cli_support import add_command, add_task_args, log, task_for_input
from mobiledl.errors import UserError


def add_prune_command(commands: argparse._SubParsersAction) -> None:
    """Register ``mobiledl prune``."""
    sub = add_command(
        commands,
        "prune",
        "prune a model: fine-grained, vector, kernel, filter, N:M masks or physical channels",
        _cmd_prune,
    )
    sub.add_argument("model", type=Path, help="a mobiledl .pt file")
    add_task_args(sub, required=True)
    sub.add_argument(
        "--granularity",
        default="element",
        help="element, vector, kernel, filter, N:M (e.g. 2:4) or channel (default element)",
    )
    sub.add_argument(
        "--criterion",
        default="l1",
        help="l1, l2, taylor, hessian, bn; channel also: reconstruction (default l1)",
    )
    sub.add_argument("--sparsity", type=float, help="fraction of prunable weights to zero")
    sub.add_argument("--macs-ratio", type=float, help="fraction of conv/linear MACs to keep")
    sub.add_argument("--schedule", default="oneshot", help="oneshot, iterative, agp or lottery")
    sub.add_argument("--steps", type=int, default=5, help="pruning rounds / AGP events")
    sub.add_argument(
        "--scope",
        default=None,
        help="global, layer, or latency (channel with --macs-ratio: allocation by time measured "
        "in ONNX Runtime); default: layer for channel, else global",
    )
    sub.add_argument("--finetune-epochs", type=int, default=0, help="epochs per fine-tuning")
    sub.add_argument("--lr", type=float, default=None, help="fine-tuning learning rate")
    sub.add_argument("--optimizer", default="sgd", help="sgd or adamw (default sgd)")
    sub.add_argument("--batch-size", type=int, default=64)
    sub.add_argument("--rewind-epochs", type=float, default=0.0, help="lottery rewind point")
    sub.add_argument("--exclude", action="append", default=[], help="module never pruned")
    sub.add_argument("--slimming-epochs", type=int, default=0, help="BN-L1 training first")
    sub.add_argument("--bn-l1", type=float, default=1e-4, help="network slimming L1 strength")
    sub.add_argument(
        "--sensitivity-tolerance",
        type=float,
        help="allocate per-layer sparsity from a per-layer sensitivity analysis: each layer's "
        "largest sparsity within this val-accuracy drop, scaled to reach --sparsity",
    )
    sub.add_argument("--sensitivity-plot", type=Path, help="write the analysis as .png/.svg")
    sub.add_argument("--no-latency", action="store_true", help="skip the engine benchmark")
    sub.add_argument("--out", type=Path, required=True, help="output model file (.pt)")


def _config(args: argparse.Namespace) -> Any:
    from mobiledl.compress.prune import PruneConfig
    from mobiledl.train import TrainConfig

    finetune = TrainConfig(
        epochs=args.finetune_epochs,
        batch_size=args.batch_size,
        optimizer=args.optimizer,
        lr=args.lr,
        seed=args.seed,
        progress=not args.json,
    )
    return PruneConfig(
        granularity=args.granularity,
        criterion=args.criterion,
        sparsity=args.sparsity,
        macs_ratio=args.macs_ratio,
        scope=args.scope,
        schedule=args.schedule,
        steps=args.steps,
        finetune=finetune,
        rewind_epochs=args.rewind_epochs,
        exclude=tuple(args.exclude),
        slimming_epochs=args.slimming_epochs,
        bn_l1=args.bn_l1,
    )


def _sensitivity_allocation(model: Any, task: Any, config: Any, args: argparse.Namespace) -> Any:
    """Run the per-layer sensitivity analysis; plot it; allocate per-layer sparsity if asked."""
    import dataclasses

    from mobiledl.compress.prune import allocate_sparsity, plot_sensitivity, sensitivity_analysis

    log("per-layer sensitivity analysis on the val split...")
    result = sensitivity_analysis(
        model, task, config.granularity, config.criterion, exclude=config.exclude
    )
    if args.sensitivity_plot:
        log(f"wrote {plot_sensitivity(result, args.sensitivity_plot)}")
    if args.sensitivity_tolerance is None:
        return config
    allocation = allocate_sparsity(result, config.sparsity, args.sensitivity_tolerance)
    log("per-layer sparsity: " + ", ".join(f"{k} {v:.3f}" for k, v in allocation.items()))
    return dataclasses.replace(config, sparsity=allocation)


def _cmd_prune(args: argparse.Namespace) -> dict[str, Any] | None:
    from mobiledl.compress.encode import model_storage
    from mobiledl.compress.prune import layer_sparsity, prune, sparsity_of
    from mobiledl.measure import measure_model
    from mobiledl.models import load_model, save_model
    from mobiledl.profile import count_params
    from mobiledl.train import evaluate

    config = _config(args)
    if args.sensitivity_tolerance is not None and config.sparsity is None:
        raise UserError("--sensitivity-tolerance allocates a --sparsity target; give --sparsity")
    loaded = load_model(args.model)
    shape = (loaded.arch["in_channels"], *loaded.arch["image_size"])
    task = task_for_input(args.task, shape, args.seed, args.model)
    dense_accuracy = evaluate(loaded.model, task, "test")
    dense_params = count_params(loaded.model)
    if args.sensitivity_tolerance is not None or args.sensitivity_plot:
        config = _sensitivity_allocation(loaded.model, task, config, args)
    log(f"pruning {args.model} ({config.granularity}, {config.criterion}, {config.schedule})")
    model = prune(loaded.model, config, task)
    measurement = measure_model(model, loaded.name, task, latency=not args.no_latency)
    storage = model_storage(model)
    pruning = {
        "granularity": config.granularity,
        "criterion": config.criterion,
        "schedule": config.schedule,
        "sparsity": sparsity_of(model),
        "layer_sparsity": layer_sparsity(model),
        "dense_accuracy": dense_accuracy,
        "dense_params": dense_params,
        "dense_bytes": storage.dense_bytes,
        "sparse_format_bytes": storage.sparse_bytes,
        "compression": storage.compression,
    }
    meta = {"task": args.task, "seed": args.seed, "source": str(args.model), "pruning": pruning}
    save_model(args.out, model, {**meta, "test_accuracy": measurement.accuracy})
    measurement.extra.update(pruning, out=str(args.out))
    if args.json:
        return measurement.to_dict()
    print(
        f"wrote {args.out}: test accuracy {measurement.accuracy:.4f} (dense {dense_accuracy:.4f}), "
        f"params {measurement.params:,} of {dense_params:,}, sparsity {pruning['sparsity']:.3f}, "
        f"{storage.sparse_bytes:,} B sparse format vs {storage.dense_bytes:,} B dense "
        f"({storage.compression:.1f}x)"
    )
    return None
