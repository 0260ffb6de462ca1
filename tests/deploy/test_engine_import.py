"""Loading an optional engine prints nothing: its package's import-time log records (torchao's
CUDA libraries, torch's enum deprecations) are kept out of the user's terminal."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest


@pytest.mark.skipif(
    importlib.util.find_spec("executorch") is None,
    reason="the executorch extra is not installed (pip install 'mobiledl[executorch]')",
)
def test_loading_executorch_engine_prints_nothing() -> None:
    code = "from mobiledl.deploy import get_engine; print(get_engine('executorch').name)"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "executorch"
    assert done.stderr == ""
