"""``mobiledl prune MODEL --task TASK --granularity G --criterion C (--sparsity S | --macs-ratio R)
[--schedule oneshot|iterative|agp|lottery] [--finetune-epochs N] --out pruned.pt [--json]``.

The flags are those of ``PruneConfig`` (weight masks) and ``ChannelPruneConfig``
(``--granularity channel``), derived from the config classes.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from mobiledl.cli.args import (
    add_config_arguments,
    config_field_paths,
    config_from_args,
    dest_of,
    flag_for,
)
from mobiledl.cli.methods import add_method_io, run_method_command, unused_flags
from mobiledl.cli.support import add_command, log
from mobiledl.errors import UserError
from mobiledl.fileio import output_file_arg

#: Flags kept from before they were derived (they set the fine-tuning run).
ALIASES = {
    "finetune.lr": ["--lr"],
    "finetune.optimizer": ["--optimizer"],
    "finetune.batch_size": ["--batch-size"],
}
CHANNEL = "channel"


def add_prune_command(commands: argparse._SubParsersAction) -> None:
    """Register ``mobiledl prune``."""
    from mobiledl.compress.prune.config import ChannelPruneConfig, PruneConfig

    sub = add_command(
        commands,
        "prune",
        "prune a model: fine-grained, vector, kernel, filter, N:M masks or physical channels",
        _cmd_prune,
    )
    add_method_io(sub, needs_task=True)
    add_config_arguments(sub, PruneConfig, aliases=ALIASES, title="pruning settings")
    add_config_arguments(sub, ChannelPruneConfig, aliases=ALIASES)
    granularity = next(a for a in sub._actions if "--granularity" in a.option_strings)
    granularity.help = "element, vector, kernel, filter, N:M (e.g. 2:4) or channel (physical)"
    sub.add_argument(
        "--sensitivity-tolerance",
        type=float,
        help="allocate per-layer sparsity from a per-layer sensitivity analysis: each layer's "
        "largest sparsity within this val-accuracy drop, scaled to reach --sparsity",
    )
    sub.add_argument(
        "--sensitivity-plot", type=output_file_arg, help="write the analysis as .png/.svg"
    )


def prune_config(args: argparse.Namespace) -> Any:
    """``ChannelPruneConfig`` for ``--granularity channel``, else ``PruneConfig``; the data
    seed also seeds fine-tuning unless ``--finetune-seed`` is given."""
    from mobiledl.compress.prune.config import ChannelPruneConfig, PruneConfig

    channel = getattr(args, dest_of("--granularity"), None) == CHANNEL
    nm = ":" in str(getattr(args, dest_of("--granularity"), ""))
    amounts = (dest_of("--sparsity"), dest_of("--macs-ratio"))
    if not nm and not any(hasattr(args, dest) for dest in amounts):
        raise UserError("set exactly one of sparsity and macs_ratio (--sparsity, --macs-ratio)")
    if not channel and getattr(args, dest_of("--scope"), None) == "latency":
        raise UserError("scope 'latency' needs channel granularity: masks save no time")
    config_type = ChannelPruneConfig if channel else PruneConfig
    skip = {"granularity"} if channel else set()
    used = {dest_of(flag_for(path)) for path in config_field_paths(config_type)} | {
        dest_of(flag_for(path)) for path in skip
    }
    unused_flags(args, used, "channel pruning" if channel else "mask pruning")
    if channel:
        delattr(args, dest_of("--granularity"))
    values = {"finetune.seed": args.seed, "finetune.progress": not args.json}
    return config_from_args(config_type, args, values=values)


def _sensitivity(model: Any, task: Any, config: Any, args: argparse.Namespace) -> Any:
    """Run the per-layer sensitivity analysis; plot it; allocate per-layer sparsity if asked."""
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
    from mobiledl.cli.methods import _finish
    from mobiledl.compress.prune.config import PruneConfig

    config = prune_config(args)
    wants_sensitivity = args.sensitivity_tolerance is not None or args.sensitivity_plot
    if wants_sensitivity and not isinstance(config, PruneConfig):
        raise UserError("the sensitivity analysis allocates mask sparsity; not for channels")
    if args.sensitivity_tolerance is not None and not isinstance(config.sparsity, float):
        raise UserError("--sensitivity-tolerance allocates a --sparsity target; give --sparsity")
    if wants_sensitivity:
        from mobiledl.cli.support import task_for_model
        from mobiledl.core.methods import check_input_kind
        from mobiledl.models import load_model

        loaded = load_model(args.model)
        task = task_for_model(
            args.task, loaded.arch, args.seed, args.model, args.split, loaded.meta
        )
        check_input_kind(config, loaded.model, task)
        config = _sensitivity(loaded.model, task, config, args)
    measurement = run_method_command(args, config, {"pruning": config.fields_dict()})
    return _finish(args, measurement)
