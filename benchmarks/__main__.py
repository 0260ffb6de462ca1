"""``python -m benchmarks NAME [--smoke] [ARGS]``: run one benchmark; exit code 2 with one
line on stderr for a user error (an unknown NAME lists the available ones)."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence
from pathlib import Path

from benchmarks import available
from mobiledl.errors import UserError


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark named by the first argument with the rest of the arguments."""
    argv = list(sys.argv[1:] if argv is None else argv)
    choices = available()
    if argv[:1] in (["-h"], ["--help"]):
        print("\n".join(f"{name:24s} {doc}" for name, doc in choices.items()))
        return 0
    if not argv or argv[0] not in choices:
        listing = "; ".join(f"{name}: {doc}" for name, doc in choices.items())
        problem = f"unknown benchmark '{argv[0]}'" if argv else "no benchmark named"
        print(f"error: {problem}; available: {listing}", file=sys.stderr)
        return 2
    module = importlib.import_module(f"benchmarks.{argv[0]}")
    try:
        report = module.main(argv[1:])
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print((Path(report["config"]["out"]) / f"{argv[0]}.md").read_text(encoding="utf-8"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
