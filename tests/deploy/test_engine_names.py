"""Nothing outside ``mobiledl.deploy`` names an engine (DESIGN.md, "Engine"): callers ask
``get_engine()`` for the default one, ``get_engine(name)`` for one the user chose, or
``engine_for_artifact(path)`` for the one that runs a file."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import mobiledl
from mobiledl.deploy import artifact_suffixes, engine_for_artifact, get_engine
from mobiledl.errors import UserError

SOURCE = Path(mobiledl.__file__).parent
#: An engine's name as code uses it, or an import of an engine's (or its format's) package.
ENGINE_NAME = re.compile(
    r"""["'](onnxruntime|executorch|litert|openvino|tflite)["']"""
    r"|^\s*(import|from)\s+(onnxruntime|onnx|executorch|ai_edge_litert|openvino)\b",
    re.MULTILINE,
)


def test_no_engine_is_named_outside_deploy() -> None:
    offenders = [
        f"{path.relative_to(SOURCE)}:{text[: match.start()].count(chr(10)) + 1}"
        for path in sorted(SOURCE.rglob("*.py"))
        if "deploy" not in path.relative_to(SOURCE).parts
        for text in [path.read_text()]
        for match in ENGINE_NAME.finditer(text)
    ]
    assert not offenders, f"engine names outside mobiledl.deploy: {offenders}"


def test_the_pattern_catches_what_it_is_for() -> None:
    assert ENGINE_NAME.search('get_engine("onnxruntime")')
    assert ENGINE_NAME.search("import onnx\n")
    assert not ENGINE_NAME.search('path = "model.onnx"')


def test_artifacts_find_their_engine() -> None:
    assert ".onnx" in artifact_suffixes()
    assert engine_for_artifact("m.onnx").name == get_engine().name
    with pytest.raises(UserError, match="no engine runs '.xyz'"):
        engine_for_artifact("m.xyz")


def test_the_suffix_table_matches_every_installed_engine() -> None:
    from mobiledl.deploy.engine import _BUILTIN_SUFFIXES

    for name, suffix in _BUILTIN_SUFFIXES.items():
        try:
            engine = get_engine(name)
        except UserError as error:  # an optional engine that is not installed
            assert "needs a package that is not installed" in str(error)
            continue
        assert engine.file_suffix == suffix
        assert engine_for_artifact(f"model{suffix}").name == name
