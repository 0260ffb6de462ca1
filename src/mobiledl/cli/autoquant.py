"""``mobiledl autoquant MODEL --task TASK --size-kb N [--search hawq|measured]
[--bits 2,3,4,5,6,8] [--act-bits 8|none] [--probes N] [--joint]
[--hessian-samples N] --out q.pt
[--json]``: weight bits per layer searched under a model-size budget (HAWQ-V2's Hessian
sensitivity or measured sensitivity, then an exact knapsack), the model quantized with them."""

from __future__ import annotations

import argparse
from typing import Any

from mobiledl.cli.methods import _finish, add_method_io, load_and_measure, measure_and_save
from mobiledl.cli.support import add_command, log
from mobiledl.errors import UserError
from mobiledl.validate import arg_type, check_int, positive_int_arg, positive_number_arg


def _bits_list(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UserError(
            f"--bits must be comma-separated integers, e.g. 2,4,8; got {text!r}"
        ) from None
    if not values:
        raise UserError("--bits needs at least one width")
    return [check_int(value, "--bits width", 2, 8) for value in values]


def _act_bits(text: str) -> int | None:
    if text == "none":
        return None
    if not text.strip().isdigit():
        raise UserError(f"--act-bits must be a width in 2..8 or 'none'; got {text!r}")
    return check_int(int(text), "--act-bits", 2, 8)


def add_autoquant_command(commands: argparse._SubParsersAction) -> None:
    """Register ``mobiledl autoquant``."""
    from mobiledl.automl.compress.autoquant import SEARCHES
    from mobiledl.automl.compress.hawq import HESSIAN_SAMPLES, HUTCHINSON_PROBES

    sub = add_command(
        commands,
        "autoquant",
        "mixed-precision weight bits per layer under a size budget (HAWQ-V2 + exact knapsack)",
        _cmd_autoquant,
    )
    add_method_io(sub, needs_task=True)
    sub.add_argument(
        "--size-kb",
        type=positive_number_arg,
        required=True,
        help="model-size budget in kB (1024 bytes): packed weight codes, per-channel scales, "
        "every other parameter at fp32",
    )
    sub.add_argument(
        "--search",
        choices=SEARCHES,
        default="hawq",
        help="hawq: Hessian-trace sensitivity (Hutchinson); measured: the val loss with each "
        "layer quantized alone (default: hawq)",
    )
    sub.add_argument(
        "--bits",
        type=arg_type(_bits_list, str, "comma-separated widths in 2..8"),
        default=[2, 3, 4, 5, 6, 8],
        help="candidate weight widths (default: 2,3,4,5,6,8)",
    )
    sub.add_argument(
        "--act-bits",
        type=arg_type(_act_bits, str, "a width in 2..8 or 'none'"),
        default=8,
        help="bits of every layer's input activation, or 'none' to keep them float (default: 8)",
    )
    sub.add_argument(
        "--probes",
        type=positive_int_arg,
        default=HUTCHINSON_PROBES,
        help=f"Hutchinson probes per layer (default: {HUTCHINSON_PROBES})",
    )
    sub.add_argument(
        "--joint",
        action="store_true",
        help="probe all layers with one vector per probe instead of each layer on its own: "
        "faster (ResNet-20: 5.8x) but noisier (4x the standard error)",
    )
    sub.add_argument(
        "--hessian-samples",
        type=positive_int_arg,
        default=HESSIAN_SAMPLES,
        help=f"training samples the Hessian is taken over (default: {HESSIAN_SAMPLES})",
    )


def _cmd_autoquant(args: argparse.Namespace) -> dict[str, Any] | None:
    from mobiledl.automl.compress import autoquant

    start = load_and_measure(args)
    budget = int(args.size_kb * 1024)
    log(f"autoquant: {args.search} sensitivity, budget {budget:,} bytes...")
    result = autoquant(
        start.loaded.model,
        start.task,
        budget,
        search=args.search,
        bits=args.bits,
        act_bits=args.act_bits,
        samples=args.hessian_samples,
        probes=args.probes,
        seed=args.seed,
        joint=args.joint,
    )
    report = result.report()
    measurement = measure_and_save(
        args, start, result.model, "autoquant", {"autoquant": report}, {"autoquant": result.policy}
    )
    if not args.json:
        for name, bits in result.policy.items():
            print(f"  {name}: {bits}-bit weights")
        print(
            f"size {result.size_bytes / 1024:.1f} kB of {budget / 1024:.1f} kB budget "
            f"(fp32 {result.float_bytes / 1024:.1f} kB), activations "
            f"{'float' if result.act_bits is None else f'{result.act_bits}-bit'}"
        )
    return _finish(args, measurement)
