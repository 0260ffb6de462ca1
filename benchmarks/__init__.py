"""mobiledl's benchmarks: ``python -m benchmarks NAME [--smoke] [...]``.

Each module here is one benchmark. It measures mobiledl against baselines and peers and
writes ``NAME.json`` (one schema for all, see ``harness.results``) and ``NAME.md`` into
``--out`` (default ``benchmarks/results``). Every published table in the README and
``docs/`` is reproduced by the one command recorded in its JSON's ``argv``.
"""

from __future__ import annotations

import ast
from pathlib import Path

HERE = Path(__file__).resolve().parent


def available() -> dict[str, str]:
    """Every benchmark's name and the first line of its docstring (read, not imported)."""
    found = {}
    for path in sorted(HERE.glob("*.py")):
        if not path.stem.startswith("_"):
            doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
            found[path.stem] = doc.strip().splitlines()[0] if doc.strip() else ""
    return found
