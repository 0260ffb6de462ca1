"""Shared pieces of the command line, used by ``cli.py`` and by method packages that add
their own sub-command (e.g. ``mobiledl prune``, ``mobiledl quantize``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

Handler = Callable[[argparse.Namespace], Any]


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
    sub.add_argument("--seed", type=int, default=0, help="seed of the data split (default 0)")
