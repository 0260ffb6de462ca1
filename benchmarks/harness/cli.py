"""The arguments every benchmark shares, and smoke/full defaults resolved in one place.

Shared: ``--smoke`` (seconds-long run of every step, numbers meaningless), ``--out`` (output
directory; default ``benchmarks/results`` for a full run, a fresh temporary directory for a
smoke run), ``--seed``, ``--repeats`` (timed calls per candidate), ``--threads`` and, for
benchmarks that time latency, ``--clock`` (``wall`` or ``thread``: CPU time of the calling
thread, immune to other processes on a shared machine, needs one thread).
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

from benchmarks.harness.results import start_run
from mobiledl.deploy import CLOCKS, clock_for
from mobiledl.errors import UserError

RESULTS = Path(__file__).resolve().parents[1] / "results"


def names(text: str) -> list[str]:
    """The non-empty, stripped entries of a comma-separated list."""
    return [part.strip() for part in text.split(",") if part.strip()]


def positive_ints(text: str, flag: str) -> list[int]:
    """A comma-separated list of positive integers given to ``flag``."""
    try:
        values = [int(part) for part in names(text)]
    except ValueError:
        raise UserError(f"{flag} must be comma-separated integers; got '{text}'") from None
    if not values or min(values) < 1:
        raise UserError(f"{flag} must be positive integers; got '{text}'")
    return values


def positive_int(flag: str) -> Callable[[str], int]:
    """An argparse type: one positive integer given to ``flag``."""

    def convert(text: str) -> int:
        values = positive_ints(text, flag)
        if len(values) != 1:
            raise UserError(f"{flag} takes one positive integer; got '{text}'")
        return values[0]

    return convert


def add_seeds_argument(parser: argparse.ArgumentParser) -> None:
    """``--seeds``: the training seeds of a benchmark that reports mean and spread over them
    (the data split stays ``--seed``'s); default ``[0]``."""

    def convert(text: str) -> list[int]:
        try:
            return [int(part) for part in names(text)] or [0]
        except ValueError:
            raise UserError(f"--seeds must be comma-separated integers; got '{text}'") from None

    parser.add_argument(
        "--seeds",
        type=convert,
        default=[0],
        help="training seeds, comma-separated (the data split stays --seed's); default 0",
    )


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are ``UserError``: one line, exit code 2."""

    def error(self, message: str) -> NoReturn:
        raise UserError(f"{self.prog}: {message}")


def benchmark_parser(
    name: str,
    doc: str,
    *,
    threads: str | int | bool | None = 1,
    threads_help: str = "torch threads",
    many_threads: bool = False,
    clock: bool = False,
) -> argparse.ArgumentParser:
    """A parser with the shared arguments; the benchmark adds its own.

    ``threads``: the default of ``--threads`` (``None``: resolved later; ``False``: no
    ``--threads``, the benchmark fixes its threads); with ``many_threads`` it is a
    comma-separated list (one entry per thread count timed).
    ``clock``: add ``--clock`` (the benchmark times latency).
    """
    parser = _Parser(prog=f"python -m benchmarks {name}", description=doc.strip().splitlines()[0])
    parser.set_defaults(benchmark=name)
    parser.add_argument("--smoke", action="store_true", help="tiny data and budgets: seconds")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output directory (default benchmarks/results; smoke: a new temporary directory)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of data and training")
    parser.add_argument(
        "--repeats", type=positive_int("--repeats"), default=None, help="timed calls per candidate"
    )
    if many_threads and threads is not False:
        parser.add_argument(
            "--threads",
            type=lambda t: positive_ints(t, "--threads"),
            default=None if threads is None else positive_ints(str(threads), "--threads"),
            help=f"{threads_help} (comma-separated)",
        )
    elif threads is not False:
        parser.add_argument(
            "--threads", type=positive_int("--threads"), default=threads, help=threads_help
        )
    if clock:
        parser.add_argument(
            "--clock",
            choices=sorted(CLOCKS),
            default="wall",
            help="wall: perf_counter; thread: CPU time of the calling thread (needs --threads "
            "1; immune to other processes on a shared machine)",
        )
    return parser


def parse(parser: argparse.ArgumentParser, argv: Sequence[str]) -> argparse.Namespace:
    """Parse ``argv`` (a usage error is a ``UserError``); record it and choose the output
    directory."""
    args = parser.parse_args(list(argv))
    args.argv = list(argv)
    start_run(args)
    if args.out is None:
        prefix = f"mobiledl-{args.benchmark}-"
        args.out = Path(tempfile.mkdtemp(prefix=prefix)) if args.smoke else RESULTS
    return args


def resolve(
    args: argparse.Namespace, smoke: Mapping[str, Any], full: Mapping[str, Any]
) -> argparse.Namespace:
    """Fill every argument still ``None`` from ``smoke`` or ``full`` (as ``--smoke`` says),
    then check ``--clock`` against ``--threads``."""
    for key, value in (smoke if args.smoke else full).items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    if hasattr(args, "clock") and hasattr(args, "threads"):
        threads = args.threads if isinstance(args.threads, list) else [args.threads]
        clock_for(args.clock, threads)
    return args


def add_compress_arguments(parser: argparse.ArgumentParser, epochs: int, finetune: int) -> None:
    """The arguments of a benchmark that trains a baseline, compresses it to a fraction of
    its MACs and fine-tunes the result: ``epochs`` and ``finetune`` are the full-run
    defaults (a smoke run: 1 and 1)."""
    parser.add_argument(
        "--task",
        default=None,
        help="built-in name, user data path or TRAIN,VAL,TEST .npz files (default mnist5k, "
        "smoke: digits)",
    )
    parser.add_argument(
        "--split", default=None, metavar="TRAIN,VAL,TEST", help="fractions splitting user data"
    )
    parser.add_argument("--image-size", type=int, default=None, help="resize inputs to S×S")
    parser.add_argument("--epochs", type=int, default=None, help=f"training (default {epochs})")
    parser.add_argument("--finetune-epochs", type=int, default=None, help=f"default {finetune}")
    parser.add_argument("--finetune-lr", type=float, default=0.01)
    parser.add_argument("--macs-ratio", type=float, default=0.5, help="fraction of MACs kept")
    parser.add_argument("--batch-sizes", default=None, help="batch sizes timed")
    parser.add_argument(
        "--train-threads",
        type=int,
        default=None,
        help="PyTorch threads for training (1: on a shared CPU, spinning OpenMP workers of "
        "two threads made training ~6x slower)",
    )


def resolve_compress(
    args: argparse.Namespace, smoke: Mapping[str, Any], full: Mapping[str, Any]
) -> argparse.Namespace:
    """``resolve`` for ``add_compress_arguments``: ``smoke`` / ``full`` add to the shared
    defaults (mnist5k, smoke digits with 1-epoch budgets and 3 timed calls); checks the MAC
    ratio and parses the batch sizes."""
    resolve(args, {"task": "digits", "epochs": 1, "finetune_epochs": 1, "repeats": 3, **smoke},
            {"task": "mnist5k", **full})  # fmt: skip
    if not 0.0 < args.macs_ratio <= 1.0:
        raise UserError(f"--macs-ratio must lie in (0, 1]; got {args.macs_ratio}")
    args.batch_sizes = positive_ints(args.batch_sizes, "--batch-sizes")
    return args
