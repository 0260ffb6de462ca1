"""``mobiledl report RUN_DIR [--out FILE] [--json]``: render a run's HTML report again from the
data the run saved (``report.json``, written by ``mobiledl run`` and ``mobiledl demo``), without
re-running or re-measuring anything."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from mobiledl.cli.support import add_command
from mobiledl.errors import UserError
from mobiledl.fileio import output_file_arg
from mobiledl.report.run import REPORT_DATA, REPORT_PAGE


def add_report_command(commands: argparse._SubParsersAction) -> None:
    """Register ``mobiledl report``."""
    sub = add_command(
        commands,
        "report",
        "re-render a run folder's HTML report from its saved data (no re-running)",
        _cmd_report,
    )
    sub.add_argument("run_dir", type=Path, help=f"a folder holding {REPORT_DATA}")
    sub.add_argument(
        "--out", type=output_file_arg, help=f"the page to write (default RUN_DIR/{REPORT_PAGE})"
    )


def _cmd_report(args: argparse.Namespace) -> dict[str, Any] | None:
    from mobiledl.report.run import load_report_data, write_run_report

    folder: Path = args.run_dir
    if not folder.is_dir():
        raise UserError(f"{folder}: no such run folder")
    data = folder / REPORT_DATA
    if not data.is_file():
        raise UserError(f"{folder} has no {REPORT_DATA} (mobiledl run and mobiledl demo write one)")
    report = load_report_data(data)
    page = write_run_report(args.out or folder / REPORT_PAGE, report)
    result = {
        "report": str(page),
        "data": str(data),
        "steps": len(report.steps),
        "profiled_steps": list(report.layer_times),
    }
    if args.json:
        return result
    print(f"wrote {page} ({len(report.steps)} steps)")
    return None
