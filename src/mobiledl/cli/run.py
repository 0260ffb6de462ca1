"""``mobiledl run RECIPE.yaml --out DIR [--resume] [--json]``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from mobiledl.cli.support import add_command
from mobiledl.fileio import output_dir_arg


def add_run_command(commands: argparse._SubParsersAction) -> None:
    """Register ``mobiledl run``."""
    sub = add_command(
        commands,
        "run",
        "run a YAML recipe of steps, measuring and checkpointing after each; write a report",
        _cmd_run,
    )
    sub.add_argument("recipe", type=Path, help="a recipe .yaml (see recipes/)")
    sub.add_argument("--out", type=output_dir_arg, required=True, help="run directory")
    sub.add_argument(
        "--resume",
        action="store_true",
        help="continue a run in --out: keep its finished steps and resume the step in progress "
        "after its last finished epoch (the result is that of an uninterrupted run)",
    )


def _cmd_run(args: argparse.Namespace) -> list[dict[str, Any]] | None:
    from mobiledl.pipeline import run_recipe

    measurements = run_recipe(args.recipe, args.out, resume=args.resume, progress=not args.json)
    return [m.to_dict() for m in measurements] if args.json else None
