"""The ``mobiledl`` command line, one module per command group (DESIGN.md, "Command line").

- ``main``: the parser, the single-model commands (``models``, ``train``, ``eval``,
  ``profile``, ``export``, ``bench``, ``demo``) and error handling (one line, exit 2);
- ``prune``, ``quantize``, ``adapt``, ``nas``, ``run``: the command groups of their packages;
- ``methods``: ``mobiledl apply METHOD``, the flow every method command shares;
- ``args``: flags derived from method configs; ``support``: shared arguments and helpers.
"""

from mobiledl.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
