"""``mobiledl adapt MODEL --task TASK --method full|last|bias|tinytl|sparse
[--memory-budget-kb N] [--epochs N] --out adapted.pt [--json]``: on-device transfer learning."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from mobiledl.cli_support import add_command, add_task_args, task_for_input
from mobiledl.errors import UserError


def add_adapt_command(commands: argparse._SubParsersAction) -> None:
    """Register ``mobiledl adapt``."""
    sub = add_command(
        commands,
        "adapt",
        "adapt a model to a new task under a training-memory budget (TinyTL, sparse update)",
        _cmd_adapt,
    )
    sub.add_argument("model", type=Path, help="a mobiledl .pt file (the pretrained model)")
    add_task_args(sub, required=True)
    sub.add_argument(
        "--method",
        default="tinytl",
        help="full, last, bias, tinytl or sparse (default tinytl)",
    )
    sub.add_argument(
        "--memory-budget-kb",
        type=float,
        default=None,
        help="training-memory budget in KiB (required for sparse; checked for the others)",
    )
    sub.add_argument("--epochs", type=int, default=10)
    sub.add_argument("--batch-size", type=int, default=32)
    sub.add_argument("--lr", type=float, default=None, help="default depends on the method")
    sub.add_argument("--optimizer", default="momentum", help="sgd, momentum or adam")
    sub.add_argument(
        "--checkpoint-segments", type=int, default=None, help="gradient checkpointing stages"
    )
    sub.add_argument(
        "--probe-steps",
        type=int,
        default=None,
        help="sparse: training steps per candidate in the contribution analysis (default 40)",
    )
    sub.add_argument("--out", type=Path, required=True, help="output model file (.pt)")


def _cmd_adapt(args: argparse.Namespace) -> dict[str, Any] | None:
    from mobiledl.models import load_model, save_model
    from mobiledl.train.adapt import AdaptConfig, adapt
    from mobiledl.train.sparse_update import SparseUpdateConfig

    if args.memory_budget_kb is not None and args.memory_budget_kb <= 0:
        raise UserError(f"--memory-budget-kb must be > 0; got {args.memory_budget_kb:g}")
    config = AdaptConfig(
        method=args.method,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        optimizer=args.optimizer,
        memory_budget=None if args.memory_budget_kb is None else int(args.memory_budget_kb * 1024),
        checkpoint_segments=args.checkpoint_segments,
        seed=args.seed,
        sparse=SparseUpdateConfig(probe_steps=args.probe_steps or SparseUpdateConfig.probe_steps),
    )
    loaded = load_model(args.model)
    shape = (loaded.arch["in_channels"], *loaded.arch["image_size"])
    task = task_for_input(args.task, shape, args.seed, args.model)
    result = adapt(loaded.model, task, config)
    meta = {"task": args.task, "seed": args.seed, "method": args.method, "plan": result.plan}
    save_model(args.out, result.model, {**meta, "test_accuracy": result.accuracy})
    measurement = result.measurement(loaded.name)
    measurement.extra["out"] = str(args.out)
    if args.json:
        return measurement.to_dict()
    print(
        f"wrote {args.out}: test accuracy {result.accuracy:.4f} | training peak "
        f"{result.predicted.peak_bytes / 1024:,.0f} KB predicted, "
        f"{result.measured.peak_bytes / 1024:,.0f} KB measured | "
        f"{result.predicted.trainable_params:,} trainable parameters"
    )
    return None
