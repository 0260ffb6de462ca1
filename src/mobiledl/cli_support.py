"""Shared pieces of the command line, used by ``cli.py`` and by method packages that add
their own sub-command (e.g. ``mobiledl prune``, ``mobiledl quantize``)."""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

from mobiledl.errors import UserError
from mobiledl.validate import positive_number_arg, seed_arg

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
        help="built-in task (digits, mnist1d, mnist5k) or a path to user data "
        "(image folder per class, .npz with x/y, or MNIST IDX files)",
    )
    sub.add_argument("--seed", type=seed_arg, default=0, help="seed of the data split (default 0)")


def add_engine_arg(sub: argparse.ArgumentParser) -> None:
    """``--engine NAME`` of the engine that exports (default: ``DEFAULT_ENGINE``)."""
    from mobiledl.deploy import DEFAULT_ENGINE, list_engines

    sub.add_argument(
        "--engine",
        default=None,
        help=f"engine that builds the artifact: {', '.join(list_engines())} "
        f"(default {DEFAULT_ENGINE})",
    )


def task_for_input(spec: str, input_shape: tuple[int, ...], seed: int, model_path: Path) -> Any:
    """The task ``spec`` with inputs shaped ``input_shape`` (resized if the task allows)."""
    from mobiledl.data import build_task

    task = build_task(spec, seed=seed)
    if tuple(task.input_shape) == tuple(input_shape):
        return task
    if task.in_channels == input_shape[0]:
        with contextlib.suppress(UserError):
            task = build_task(spec, image_size=tuple(input_shape[1:]), seed=seed)
    if tuple(task.input_shape) != tuple(input_shape):
        raise UserError(
            f"{model_path} takes inputs shaped {list(input_shape)} but task '{spec}' "
            f"gives {list(task.input_shape)}"
        )
    return task
