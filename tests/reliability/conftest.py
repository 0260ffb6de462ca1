"""Fixtures of the bad-input suite: the session's input files and the ``refused`` check.

``refused(argv, match)`` runs the CLI in-process and asserts the contract for bad input: exit
code 2, no traceback, one error line that matches ``match``, and no file created or changed
in the case's folder or the inputs.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from badinput import Inputs, Refused, error_line, make_inputs, snapshot

from mobiledl.cli import main


@pytest.fixture(scope="session")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Inputs:
    return make_inputs(tmp_path_factory.mktemp("inputs"))


@pytest.fixture
def refused(capsys: pytest.CaptureFixture[str], inputs: Inputs, tmp_path: Path) -> Refused:
    """``refused(argv, match)``: ``main(argv)`` exits 2 with one matching error line and no
    file under ``tmp_path`` or the inputs is created or changed. Returns the line."""

    def check(argv: list[str], match: str) -> str:
        before = snapshot(tmp_path, inputs.root)
        code = main(argv)
        captured = capsys.readouterr()
        assert "Traceback" not in captured.err
        assert code == 2, f"exit {code}; stderr: {captured.err[-1000:]!r}"
        line = error_line(captured.err)
        assert re.search(match, line), f"{match!r} not in {line!r}"
        assert snapshot(tmp_path, inputs.root) == before, "an output file was created or changed"
        return line

    return check
