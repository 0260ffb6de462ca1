"""``mobiledl deep-compress MODEL --task TASK --out small.pt [--sparsity S] [--conv-bits B]
[--fc-bits B] [--prune-steps N] [--prune-epochs N] [--finetune-epochs N] [--lr LR] [--json]``.

Deep Compression (Han et al., ICLR 2016) in one command: iterative magnitude pruning with
fine-tuning, k-means weight sharing with centroid fine-tuning, and a file that stores the
result in the relative-index sparse format with Huffman-coded gaps and cluster indices
(``mobiledl.models.packed``). Per-layer sparsities and bits come from the model's recipe
(``mobiledl.compress.quantize.deep``) unless a flag overrides them; the JSON reports the file
size actually written beside the fp32 file and the stage-by-stage storage report.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from mobiledl.cli.methods import _finish, add_method_io, load_and_measure, measure_and_save
from mobiledl.cli.support import add_command, log
from mobiledl.validate import (
    arg_type,
    check_int,
    check_number,
    non_negative_int_arg,
    positive_int_arg,
    positive_number_arg,
)


def add_deep_compress_command(commands: argparse._SubParsersAction) -> None:
    """Register ``mobiledl deep-compress``."""
    sub = add_command(
        commands,
        "deep-compress",
        "Deep Compression: prune, share weights by k-means, store Huffman-coded (one file)",
        _cmd_deep_compress,
    )
    add_method_io(sub, needs_task=True)
    group = sub.add_argument_group("deep compression settings (default: the model's recipe)")
    group.add_argument("--sparsity", type=_fraction, help="one sparsity for every layer")
    group.add_argument("--conv-bits", type=_bits, help="codebook bits of convolutions")
    group.add_argument("--fc-bits", type=_bits, help="codebook bits of linear layers")
    group.add_argument("--prune-steps", type=positive_int_arg, help="pruning rounds")
    group.add_argument(
        "--prune-epochs", type=non_negative_int_arg, help="fine-tuning epochs after each round"
    )
    group.add_argument(
        "--finetune-epochs", type=non_negative_int_arg, help="epochs fine-tuning the centroids"
    )
    group.add_argument("--lr", type=positive_number_arg, default=0.01, help="SGD lr (0.01)")


_fraction = arg_type(
    lambda v: check_number(v, "sparsity", 0, 1, high_open=True), float, "a sparsity in [0, 1)"
)
_bits = arg_type(lambda v: check_int(v, "codebook bits", 1, 8), int, "bits in 1..8")


def recipe_from_args(args: argparse.Namespace, name: str, model: Any) -> Any:
    """The model's recipe with the flags given replacing its fields."""
    from mobiledl.compress.quantize.deep import recipe_for
    from mobiledl.compress.quantize.kmeans import quantizable_layers

    recipe = recipe_for(name, args.task, model)
    changes = {
        key: getattr(args, key)
        for key in ("conv_bits", "fc_bits", "prune_steps", "prune_epochs", "finetune_epochs")
        if getattr(args, key) is not None
    }
    if args.sparsity is not None:
        changes["sparsity"] = dict.fromkeys(quantizable_layers(model), args.sparsity)
    return dataclasses.replace(recipe, **changes)


def _cmd_deep_compress(args: argparse.Namespace) -> dict[str, Any] | None:
    from mobiledl.compress.quantize.deep import compress
    from mobiledl.train import TrainConfig

    start = load_and_measure(args)
    model = start.loaded.model
    recipe = recipe_from_args(args, start.loaded.arch["name"], model)
    log(
        f"deep compression of {start.loaded.name}: {recipe.prune_steps} pruning rounds x "
        f"{recipe.prune_epochs} epochs, {recipe.conv_bits}/{recipe.fc_bits}-bit conv/fc "
        f"codebooks, {recipe.finetune_epochs} centroid epochs"
    )
    training = TrainConfig(lr=args.lr, seed=args.seed, progress=not args.json)
    compressed, report = compress(model, start.task, recipe, training)
    values = {
        "recipe": dataclasses.asdict(recipe),
        "storage": report.to_dict(),
        "storage_bytes": report.total("huffman"),
    }
    meta = {"deep_compression": values["recipe"]}
    measurement = measure_and_save(args, start, compressed, "deep_compression", values, meta)
    return _finish(args, measurement)
