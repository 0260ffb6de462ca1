"""Packages import only from packages below them (issue 12, part 6): a method package never
reaches up into the command line, a pipeline or another method's package above it."""

from __future__ import annotations

import re
from pathlib import Path

import mobiledl

SOURCE = Path(mobiledl.__file__).parent
#: Lowest first. ``report`` is the HTML toolkit the NAS and run reports build on.
LAYERS = [
    "errors", "validate", "resources", "fileio", "core", "models", "apps", "data", "profile",
    "deploy",
    "report", "train", "compress", "automl", "measure", "pipeline", "demo", "cli",
]  # fmt: skip
#: Known exceptions, each a lazy import inside a function with its reason next to it.
ALLOWED = {
    ("core/methods.py", "models"),
    ("models/zoo.py", "apps"),  # the zoo registers the video models of apps/video
}
IMPORT = re.compile(r"^\s*(?:from|import) mobiledl\.(\w+)", re.MULTILINE)


def test_no_package_imports_from_a_package_above_it() -> None:
    rank = {name: index for index, name in enumerate(LAYERS)}
    upward = []
    for path in sorted(SOURCE.rglob("*.py")):
        relative = path.relative_to(SOURCE)
        package = relative.parts[0].removesuffix(".py")
        if package not in rank:
            continue
        for match in IMPORT.finditer(path.read_text()):
            target = match.group(1)
            if rank.get(target, -1) > rank[package] and (str(relative), target) not in ALLOWED:
                upward.append(f"{relative} imports mobiledl.{target}")
    assert not upward, upward


def test_every_package_has_a_layer() -> None:
    packages = {p.name.removesuffix(".py") for p in SOURCE.iterdir() if not p.name.startswith("_")}
    assert packages - {"py.typed"} <= set(LAYERS), packages - set(LAYERS)
