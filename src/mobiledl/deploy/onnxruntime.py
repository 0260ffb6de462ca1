"""ONNX Runtime, the engine mobiledl always has: export to ``.onnx``, load, run, time.

Export uses PyTorch's TorchScript-based ("legacy") exporter at opset 17 with a dynamic
batch dimension. The graph's inputs are named and typed by ``InputSpec``s (an image model
takes float32 ``input``, a token model int64 ``tokens``); a model taking keyword inputs
(a dict batch) is exported with its inputs in the dict's order. When a model cannot be
exported, the error names the module whose forward issues the unsupported operator, so the
user knows which layer to replace.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import re
import sys
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from mobiledl.core.inputs import InputSpec, input_tensors, map_inputs, specs_of
from mobiledl.deploy.diagnosis import (
    KeywordInputs,
    describe_module,
    first_failing_submodule,
    first_line,
    forward_error,
)
from mobiledl.deploy.engine import (
    Batch,
    Engine,
    PathLike,
    Runner,
    ordered_inputs,
    register_engine,
    shape_error,
    to_numpy,
    to_tensor,
)
from mobiledl.deploy.lowering import composite_attention, lower_model
from mobiledl.deploy.onnx_files import check_external_data
from mobiledl.deploy.onnx_packing import pack_weights, packed_weight_elements
from mobiledl.deploy.qdq import tidy_qdq_graph
from mobiledl.errors import UserError
from mobiledl.fileio import atomic_path
from mobiledl.validate import MAX_THREADS, check_int, expect_module

OPSET = 17
OUTPUT_NAME = "output"

_ORT_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}
Args = tuple[torch.Tensor, ...]
_OrtInvalidArgument = ort.capi.onnxruntime_pybind11_state.InvalidArgument
# How the legacy exporter names an operator it cannot convert.
_OP_PATTERNS = (
    re.compile(r"operator '(\w+::\w+)'"),
    re.compile(r"export of operator (\w+)"),
)


class OrtRunner(Runner):
    """An ``onnxruntime.InferenceSession`` on one ``.onnx`` file, called with numpy."""

    def __init__(self, path: Path, session: ort.InferenceSession, threads: int | None) -> None:
        self.path = path
        self.session = session
        self.threads = threads
        inputs = session.get_inputs()
        self.input_dtypes = [_ORT_DTYPES.get(i.type, np.float32) for i in inputs]
        self.input_specs = tuple(
            InputSpec(i.name, tuple(d if isinstance(d, int) else None for d in i.shape), _torch(dt))
            for i, dt in zip(inputs, self.input_dtypes, strict=True)
        )
        self.output_names = [output.name for output in session.get_outputs()]

    def run(self, x: Batch) -> np.ndarray:
        """Run one batch; return the first output."""
        return self.run_all(x)[0]

    def run_all(self, x: Batch) -> list[np.ndarray]:
        """Run one batch; return every output of the graph."""
        feed = self._feed(x)
        try:
            return self.session.run(self.output_names, feed)
        except _OrtInvalidArgument as error:
            raise shape_error(self.path, list(feed.values()), self.input_specs, error) from None

    def _feed(self, x: Batch) -> dict[str, np.ndarray]:
        """Input name -> contiguous array of the input's dtype."""
        arrays = ordered_inputs(x, self.input_specs, self.path)
        return {
            name: np.ascontiguousarray(to_numpy(array), dtype=dtype)
            for name, array, dtype in zip(
                [spec.name for spec in self.input_specs], arrays, self.input_dtypes, strict=True
            )
        }


class OnnxRuntimeEngine(Engine):
    """Export with ``torch.onnx`` (opset 17, dynamic batch) and run with ONNX Runtime."""

    name = "onnxruntime"
    file_suffix = ".onnx"

    def export(
        self,
        model: nn.Module,
        example_input: Batch,
        path: PathLike,
        input_specs: Sequence[InputSpec] | None = None,
    ) -> Path:
        """Lower ``model`` (``mobiledl.deploy.lowering``) and export it to ``path``; the file
        appears only if export works. A quantized model becomes an int8 QDQ graph that ONNX
        Runtime runs with integer kernels (``mobiledl.deploy.qdq``).

        ``input_specs`` name the graph's inputs and their dynamic dimensions (default: from
        the example, a dynamic batch). The graph is checked with ``onnx.checker``. A module
        that cannot be exported raises ``UserError`` naming it (qualified name and class)
        and the operator.
        """
        target = Path(path)
        graph = onnx_graph(model, example_input, input_specs)
        with atomic_path(target) as tmp:
            onnx.save(graph, str(tmp))
        return target

    def artifact_params(self, path: PathLike) -> int | None:
        """Elements of the graph's weight initializers (tensors of rank >= 1, so scalar
        quantization scales and zero points are not counted); a packed weight counts the
        elements it unpacks to, not its codes and codebook."""
        model = onnx.load(str(path), load_external_data=False)
        unpacked, prefix = packed_weight_elements(model)
        stored = (t for t in model.graph.initializer if not prefix or not t.name.startswith(prefix))
        return unpacked + sum(math.prod(t.dims) for t in stored if len(t.dims) >= 1)

    def load(self, path: PathLike, threads: int | None = None) -> OrtRunner:
        """An ``OrtRunner`` with ``threads`` intra-op threads (``None``: ORT's default)."""
        source = Path(path)
        if not source.is_file():
            raise UserError(f"{source}: no such ONNX file")
        if threads is not None:
            check_int(threads, "threads", 1, MAX_THREADS)
        check_external_data(source)
        try:
            session = ort.InferenceSession(
                str(source), session_options(threads), providers=["CPUExecutionProvider"]
            )
        except Exception as error:  # ORT raises several pybind types for bad files
            raise UserError(f"{source}: not a valid ONNX model ({first_line(error)})") from None
        return OrtRunner(source, session, threads)


def parity_check(model: nn.Module, path_or_runner: PathLike | Runner, x: Batch) -> float:
    """Max absolute difference between ``model``'s eval output and ONNX Runtime's on ``x``."""
    return OnnxRuntimeEngine().parity_check(model, path_or_runner, x)


def onnx_graph(
    model: nn.Module,
    example_input: Batch,
    input_specs: Sequence[InputSpec] | None = None,
    pack: bool = True,
) -> onnx.ModelProto:
    """The checked ONNX graph ``OnnxRuntimeEngine.export`` writes, built in memory: engines
    that read ONNX (OpenVINO) start their lowering from it. ``pack=False`` keeps low-bit
    weights as plain initializers instead of packed codes (for an engine whose converter
    does not fold the unpacking nodes)."""
    expect_module(model, "export")
    x = map_inputs(to_tensor, example_input)
    specs = tuple(input_specs) if input_specs is not None else specs_of(x)
    args = tuple(input_tensors(x))
    if len(specs) != len(args):
        raise UserError(f"{len(specs)} input specs given for an example of {len(args)} inputs")
    lowered = lower_model(model)
    module = KeywordInputs(lowered.model, list(x)) if isinstance(x, dict) else lowered.model
    exported = io.BytesIO()
    _export_file(module, args, specs, exported)
    graph = _rewritten(exported.getvalue(), lowered.quantized, pack)
    _check_graph(graph)
    return graph


def session_options(threads: int | None) -> ort.SessionOptions:
    """The options every session of this engine uses (``threads`` intra-op threads, ``None``:
    ORT's default; sequential execution; every graph optimization), shared by the profiler
    so that a profiled session runs the same graph."""
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return options


def _torch(dtype: type) -> torch.dtype:
    """The torch dtype of a numpy scalar type."""
    return torch.from_numpy(np.zeros(0, dtype)).dtype


def _export_file(
    model: nn.Module, args: Args, specs: Sequence[InputSpec], file: Path | io.BytesIO
) -> None:
    """Run the legacy exporter quietly; turn its failure into a ``UserError``."""
    try:
        _legacy_export(model, args, file, specs)
    except UserError:
        raise
    except Exception as error:
        with warnings.catch_warnings():  # the diagnosis re-runs the model; keep it silent
            warnings.simplefilter("ignore")
            user_error = _export_error(model, args, error)
        raise user_error from None


def _legacy_export(
    model: nn.Module,
    args: Args,
    file: Path | io.BytesIO,
    specs: Sequence[InputSpec] | None = None,
) -> None:
    """Export ``model(*args)``; inputs named by ``specs`` (default: from ``args``)."""
    target = str(file) if isinstance(file, Path) else file
    specs = specs if specs is not None else specs_of(args if len(args) > 1 else args[0])
    dynamic = {spec.name: _dynamic_axes(spec) for spec in specs}
    with _quiet(), composite_attention():
        torch.onnx.export(
            model,
            args,
            target,
            dynamo=False,
            opset_version=OPSET,
            input_names=[spec.name for spec in specs],
            output_names=[OUTPUT_NAME],
            dynamic_axes={**dynamic, OUTPUT_NAME: {0: "batch"}},
        )


def _dynamic_axes(spec: InputSpec) -> dict[int, str]:
    """``{0: "batch"}`` plus ``{i: "<name>_<i>"}`` for the spec's other dynamic dimensions."""
    return {
        i: "batch" if i == 0 else f"{spec.name}_{i}"
        for i, size in enumerate(spec.shape)
        if size is None
    }


def _rewritten(exported: bytes, quantized: bool, pack: bool) -> onnx.ModelProto:
    """The exported graph rewritten: a QDQ graph for ONNX Runtime's integer kernels, and
    (``pack``) low-bit weights as packed codes (``mobiledl.deploy.onnx_packing``)."""
    model = onnx.load_from_string(exported)
    if quantized:
        tidy_qdq_graph(model.graph)
    if pack:
        pack_weights(model)
    return model


def _check_graph(model: onnx.ModelProto) -> None:
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as error:
        raise UserError(f"exported ONNX graph is invalid: {first_line(error)}") from None


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporter: its DeprecationWarning and the TorchScript IR it dumps.

    On failure the exporter prints the whole IR graph from C++ straight to file
    descriptor 1, which would corrupt a ``--json`` stdout; point that fd at devnull.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # static sizes become constants
        with _fd_silenced(1):
            yield


@contextlib.contextmanager
def _fd_silenced(fd: int) -> Iterator[None]:
    try:
        saved = os.dup(fd)
    except OSError:  # no such descriptor (embedded interpreters): nothing to silence
        yield
        return
    sys.stdout.flush()
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, fd)
        os.close(saved)
        os.close(devnull)


# ---------------------------------------------------------------- export diagnosis


def _export_error(model: nn.Module, args: Args, error: Exception) -> UserError:
    """A one-line ``UserError`` naming the module (and operator) that broke export."""
    failure = forward_error(model, args)
    if failure is not None:
        shapes = "; ".join(str(list(x.shape)) for x in args)
        return UserError(
            f"cannot export model ({type(model).__name__}) to ONNX: it fails on an input of "
            f"shape {shapes}: {first_line(failure)}"
        )
    op = _unsupported_op(error)
    if op is not None:
        reason = f"{op} has no ONNX mapping at opset {OPSET}"
        if "operator '" not in str(error):  # mapped, but not for these arguments
            detail = re.sub(
                r"^Unsupported: ONNX export of operator \w+,?\s*", "", first_line(error)
            ).rstrip(".")
            reason = f"{op} is not supported with these arguments at opset {OPSET} ({detail})"
        qualname = _module_issuing(model, args, op)
    else:
        reason = first_line(error)
        qualname = first_failing_submodule(model, args, _export_submodule)
    return UserError(f"cannot export {describe_module(model, qualname)} to ONNX: {reason}")


def _unsupported_op(error: Exception) -> str | None:
    """The ``aten::...`` operator the exporter complained about, if it named one."""
    message = str(error)
    for pattern in _OP_PATTERNS:
        match = pattern.search(message)
        if match:
            op = match.group(1)
            return op if "::" in op else f"aten::{op}"
    return None


def _module_issuing(model: nn.Module, args: Args, op: str) -> str | None:
    """Qualified name of the innermost module whose forward issues ``op`` ("" = root).

    Traces the model with TorchScript, which records each node's module scope.
    """
    try:
        with torch.no_grad(), composite_attention():
            traced = torch.jit.trace(model, args, check_trace=False)
        nodes = list(traced.inlined_graph.nodes())
    except Exception:
        return first_failing_submodule(model, args, _export_submodule)
    bare = op.split("::")[-1]
    for node in nodes:
        if node.kind() == op or node.kind().split("::")[-1].rstrip("_") == bare:
            return _scope_to_qualname(node.scopeName())
    return first_failing_submodule(model, args, _export_submodule)


def _export_submodule(module: nn.Module, x: torch.Tensor) -> None:
    """Export one submodule to memory (how the diagnosis tries each)."""
    _legacy_export(module, (x,), io.BytesIO())


def _scope_to_qualname(scope: str) -> str:
    """``"__module.head/__module.head.fft"`` → ``"head.fft"``; the root → ``""``."""
    innermost = scope.rsplit("/", 1)[-1]
    if innermost.startswith("__module."):
        return innermost[len("__module.") :]
    return ""


register_engine(OnnxRuntimeEngine.name, OnnxRuntimeEngine)
