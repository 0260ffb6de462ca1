"""Shared pieces of the command line, used by ``cli.py`` and by method packages that add
their own sub-command (e.g. ``mobiledl prune``, ``mobiledl quantize``)."""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from mobiledl.core.inputs import CLIP, IMAGE, InputSpec, describe_specs, specs_match
from mobiledl.core.task import TensorTask
from mobiledl.errors import UserError
from mobiledl.validate import positive_number_arg, seed_arg

if TYPE_CHECKING:
    from mobiledl.data.prepare import Split

Handler = Callable[[argparse.Namespace], Any]


@contextlib.contextmanager
def logging_to_stderr() -> Iterator[None]:
    """Show the library's ``logging`` messages (INFO and up) on stderr while a command runs."""
    logger = logging.getLogger("mobiledl")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    previous = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)


class OneLineParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line on stderr and exit code 2 (the CLI
    contract), without the usage block argparse prints first."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def log(message: str) -> None:
    """Progress and human-readable notes go to stderr, keeping stdout for results."""
    print(message, file=sys.stderr, flush=True)


def add_command(
    commands: argparse._SubParsersAction, name: str, help_text: str, handler: Handler
) -> argparse.ArgumentParser:
    """Add a sub-command with ``--json``. ``handler(args)`` returns a JSON-ready result
    (printed when ``--json`` is given) or ``None`` after printing for humans."""
    sub = commands.add_parser(name, help=help_text, description=help_text)
    sub.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    sub.add_argument(
        "--max-memory-gb",
        type=positive_number_arg,
        help="refuse work estimated to need more memory (GiB; default: what is available)",
    )
    sub.set_defaults(handler=handler)
    return sub


def add_task_args(sub: argparse.ArgumentParser, required: bool) -> None:
    """``--task`` (built-in name or path to user data) and ``--seed`` of its split."""
    sub.add_argument(
        "--task",
        required=required,
        help="built-in task (digits, mnist1d, mnist1d-tokens, mnist5k), a path to user data "
        "(image folder per class, .npz with x/y, or MNIST IDX files) or three .npz files "
        "TRAIN,VAL,TEST (each with x/y, used as given); split per class by --split into "
        "train/val/test, or train/val in the same ratio when the data has its own test split "
        "(x_test/y_test, t10k files)",
    )
    sub.add_argument("--seed", type=seed_arg, default=0, help="seed of the data split (default 0)")
    sub.add_argument(
        "--split",
        type=split_arg,
        default=None,
        metavar="TRAIN,VAL,TEST",
        help="fractions of each class for train, validation and test, summing to 1 "
        "(default 0.6,0.2,0.2)",
    )


def split_arg(text: str) -> Split:
    """``--split TRAIN,VAL,TEST``: three positive fractions summing to 1 (an argparse type)."""
    from mobiledl.data.prepare import parse_split

    try:
        return parse_split(text)
    except UserError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_engine_arg(sub: argparse.ArgumentParser, auto: bool = False) -> None:
    """``--engine NAME`` of the engine that exports (default: ``DEFAULT_ENGINE``); with
    ``auto``, ``--engine auto`` (the fastest installed engine, measured) is offered too."""
    from mobiledl.deploy import DEFAULT_ENGINE, list_engines

    names = [*list_engines(), *(["auto (the fastest installed one, measured)"] if auto else [])]
    sub.add_argument(
        "--engine",
        default=None,
        help=f"engine that builds the artifact: {', '.join(names)} (default {DEFAULT_ENGINE})",
    )


def task_for_specs(
    spec: str,
    input_specs: Sequence[InputSpec],
    seed: int,
    model_path: Path,
    split: Split | None = None,
) -> TensorTask:
    """The task ``spec`` (split by ``split``) with inputs that fit ``input_specs`` (a model's or
    an artifact's); an image task is resized to the model's image size if the task allows it."""
    from mobiledl.data import build_task

    task = build_task(spec, seed=seed, split=split)
    if specs_match(task.input_specs(), input_specs):
        return task
    size = _image_size(input_specs)
    if task.input_kind in (IMAGE, CLIP) and size:
        with contextlib.suppress(UserError):
            task = build_task(spec, image_size=size, seed=seed, split=split)
    if not specs_match(task.input_specs(), input_specs):
        raise UserError(
            f"{model_path} takes inputs {describe_specs(input_specs)} but task '{spec}' "
            f"gives inputs {describe_specs(task.input_specs())}"
        )
    return task


def data_record(args: argparse.Namespace) -> dict[str, Any]:
    """What a model file records of the data a command used: ``task``, ``seed``, ``split``."""
    split = getattr(args, "split", None)
    return {"task": args.task, "seed": args.seed, "split": list(split) if split else None}


def task_for_model(
    spec: str,
    arch: dict[str, Any],
    seed: int,
    model_path: Path,
    split: Split | None = None,
    meta: dict[str, Any] | None = None,
) -> TensorTask:
    """The task ``spec`` (split by ``split``) with inputs that fit the model ``arch`` records.

    ``meta`` is the model file's record: if it was made on the same task with another split
    seed or fractions, a warning says so (its test split may hold its training samples)."""
    from mobiledl.models import input_specs

    if meta:
        _warn_if_other_split(spec, seed, split, meta, model_path)
    return task_for_specs(spec, input_specs(arch), seed, model_path, split)


def _warn_if_other_split(
    spec: str, seed: int, split: Split | None, meta: dict[str, Any], model_path: Path
) -> None:
    from mobiledl.data.prepare import DEFAULT_SPLIT

    if meta.get("task") != spec or "seed" not in meta:
        return
    recorded = tuple(meta.get("split") or DEFAULT_SPLIT)
    given = tuple(split or DEFAULT_SPLIT)
    if meta["seed"] == seed and all(
        abs(a - b) < 1e-9 for a, b in zip(recorded, given, strict=True)
    ):
        return
    logging.getLogger("mobiledl").warning(
        "%s was made on %s with --seed %s --split %s, but this run splits it with --seed %s "
        "--split %s: its test split may hold the model's training samples; pass the same "
        "--seed and --split",
        model_path, spec, meta["seed"], ",".join(f"{f:g}" for f in recorded), seed,
        ",".join(f"{f:g}" for f in given),
    )  # fmt: skip


def _image_size(specs: Sequence[InputSpec]) -> tuple[int, int] | None:
    """``(H, W)`` if ``specs`` is one real-valued input of fixed size: images
    ``(batch, C, H, W)`` or clips ``(batch, T, C, H, W)``."""
    if len(specs) != 1 or specs[0].is_integer or len(specs[0].shape) not in (4, 5):
        return None
    height, width = specs[0].shape[-2:]
    return (height, width) if height and width else None
