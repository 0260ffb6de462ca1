"""``mobiledl adapt MODEL --task TASK --method full|last|bias|tinytl|sparse
[--memory-budget-kb N] [--epochs N] --out adapted.pt [--json]``: on-device transfer learning.

The flags are ``AdaptConfig``'s, derived from the class (``--method`` sets its ``strategy``;
the budget is given in KiB); the JSON has the predicted and the measured training peak.
"""

from __future__ import annotations

import argparse
from typing import Any

from mobiledl.cli.args import add_config_arguments, config_from_args
from mobiledl.cli.methods import add_method_io, run_method_command
from mobiledl.cli.support import add_command
from mobiledl.errors import UserError

RENAMES = {"strategy": "--method", "sparse.probe_steps": "--probe-steps"}


def add_adapt_command(commands: argparse._SubParsersAction) -> None:
    """Register ``mobiledl adapt``."""
    from mobiledl.train.ondevice.adapt import AdaptConfig

    sub = add_command(
        commands,
        "adapt",
        "adapt a model to a new task under a training-memory budget (TinyTL, sparse update)",
        _cmd_adapt,
    )
    add_method_io(sub, needs_task=True)
    add_config_arguments(
        sub, AdaptConfig, renames=RENAMES, skip=("memory_budget", "seed"), title="adapt settings"
    )
    sub.add_argument(
        "--memory-budget-kb",
        type=float,
        default=None,
        help="training-memory budget in KiB (required for sparse; checked for the others)",
    )


def _cmd_adapt(args: argparse.Namespace) -> dict[str, Any] | None:
    from mobiledl.train.ondevice.adapt import AdaptConfig

    budget = args.memory_budget_kb
    if budget is not None and not budget > 0:
        raise UserError(f"--memory-budget-kb must be > 0; got {budget:g}")
    values = {"memory_budget": None if budget is None else int(budget * 1024), "seed": args.seed}
    config = config_from_args(AdaptConfig, args, renames=RENAMES, values=values)
    measurement = run_method_command(args, config, {"method": config.strategy})
    extra = measurement.extra
    measurement.peak_memory_bytes = extra["training_peak_bytes"]  # adapt measures training
    extra.update(memory_kind="training", method=config.strategy)
    if args.json:
        return measurement.to_dict()
    print(
        f"wrote {args.out}: test accuracy {measurement.accuracy:.4f} | training peak "
        f"{extra['training_peak_bytes'] / 1024:,.0f} KB predicted, "
        f"{extra['measured_peak_memory_bytes'] / 1024:,.0f} KB measured | "
        f"{extra['trainable_params']:,} trainable parameters"
    )
    return None
