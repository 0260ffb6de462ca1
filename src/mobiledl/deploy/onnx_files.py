"""Checks on ONNX files mobiledl is asked to read (``eval``, ``bench``, ``Engine.load``).

An ONNX file is data: ONNX Runtime runs its graph with the built-in kernels (mobiledl
registers no custom-op libraries), so a file cannot run code. It can, however, name
*external data* files for its weights; a hostile file could name ``/etc/shadow`` or
``../../secret`` to have them read (and their bytes echoed through the model's outputs).
``check_external_data`` refuses any external-data location that is absolute, uses ``..`` or
leads (through a symlink) outside the model file's folder, before the runtime opens it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import onnx
from onnx import AttributeProto, GraphProto, TensorProto

from mobiledl.errors import UserError
from mobiledl.fileio import confined_path


def check_external_data(path: Path) -> None:
    """``UserError`` if an external-data location in ``path`` leads outside its folder."""
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as error:  # protobuf raises several types for corrupt bytes
        raise UserError(f"{path}: not a valid ONNX model ({type(error).__name__})") from None
    for tensor in _tensors(model.graph):
        if tensor.data_location != TensorProto.EXTERNAL:
            continue
        entries = {entry.key: entry.value for entry in tensor.external_data}
        confined_path(
            path.parent,
            entries.get("location", ""),
            f"{path}: external data of '{tensor.name[:60]}'",
        )


def _tensors(graph: GraphProto) -> Iterator[TensorProto]:
    """Every tensor in ``graph``: initializers, sparse initializers, node attributes and the
    tensors of sub-graphs (``If``, ``Loop``, ``Scan`` bodies)."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attribute in node.attribute:
            yield from _attribute_tensors(attribute)


def _attribute_tensors(attribute: AttributeProto) -> Iterator[TensorProto]:
    if attribute.HasField("t"):
        yield attribute.t
    yield from attribute.tensors
    if attribute.HasField("g"):
        yield from _tensors(attribute.g)
    for graph in attribute.graphs:
        yield from _tensors(graph)
