"""ExecuTorch, an optional engine (``pip install 'mobiledl[executorch]'``): a ``.pte`` program
whose layers run in the XNNPACK delegate, loaded through ``executorch.runtime``.

Export follows ExecuTorch's staged flow (docs: "Exporting to ExecuTorch", "XNNPACK Backend"):
``lower_model`` -> ``torch.export.export`` with a dynamic batch -> ``to_edge_transform_and_lower``
with ``XnnpackPartitioner`` -> ``to_executorch`` -> the program's bytes. Operators XNNPACK does
not take run on ExecuTorch's portable kernels; one the runtime has no kernel for is an export
error naming it and the module issuing it.

- **Dynamic sizes.** The program is memory-planned for the largest size of every dynamic
  dimension, so that bound is real memory: it is ``MAX_BATCH`` (1024) samples, lowered to the
  largest power of two whose inputs fit ``INPUT_BUDGET_BYTES`` (a 224x224 RGB image: 64), and
  never below the example's batch. A larger batch is refused with a message giving the bound.
  ``torch.export`` specializes a dimension whose example size is 1, so a batch-1 example is
  repeated to 2 samples first. PyTorch's fake convolution chooses a memory format by asking
  which kernel the example's sizes would pick, a test such as ``batch < 16`` (depending on the
  thread count) that becomes a guard capping the planned batch at 15; while exporting and
  lowering, symbolic sizes are reported unhinted to it
  (``torch.fx.experimental.symbolic_shapes.has_guarding_hint``), so it keeps the default format
  and adds no guard.
- **Inputs.** ``MethodMeta`` tells each input's dtype and its upper-bound sizes, not its name
  nor which dimensions are dynamic, so the ``InputSpec``s are stored in the program itself, as
  the JSON string a constant method ``mobiledl_input_specs`` returns.
- **Int8, ours.** A quantized model's weights become int8 codes behind PT2E's
  ``quantized_decomposed.dequantize_per_channel`` (or ``_per_tensor``) and every fixed
  activation quantize-dequantize step becomes a ``quantize_per_tensor`` / ``dequantize_per_tensor``
  pair with the same scale and zero point (unsigned grids shifted by 128 to int8, the same real
  values), which is the graph ``convert_pt2e`` gives XNNPACK's partitioner: it runs the layers
  between the pairs as int8 kernels with our calibration, not with ``XNNPACKQuantizer``'s
  (``mobiledl.deploy.executorch_int8``). A layer with float output (the logits) runs in fp32 on
  its grid-exact weights. The runtime has no portable quantized kernels, so a Q/DQ step XNNPACK
  does not take is an export error naming its module.
- **Threads.** XNNPACK runs on ExecuTorch's one process-wide threadpool, sized from Python by
  ``executorch.extension.pybindings.portable_lib._unsafe_reset_threadpool`` (experimental in
  1.5.1). Resizing it replaces the pool under every XNNPACK method already loaded (they keep a
  pointer to the old one; running or reloading them then crashed the process here), so the
  pool is sized once, by the first ``load`` of the process (to its ``threads``; ``None`` keeps
  the pool's default, the number of cores). A later ``load`` asking for a different count gets
  the pool as it is, and its runner's ``threads`` says the count actually used.
"""

from __future__ import annotations

import contextlib
import json
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from unittest import mock

import numpy as np
import torch
from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
from executorch.exir import (
    EdgeCompileConfig,
    ExecutorchProgramManager,
    to_edge,
    to_edge_transform_and_lower,
)
from executorch.extension.pybindings import portable_lib
from executorch.runtime import Program, Runtime
from torch import nn
from torch.export import Dim, ExportedProgram
from torch.fx.experimental import symbolic_shapes

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
    to_numpy,
    to_tensor,
)
from mobiledl.deploy.executorch_int8 import to_pt2e_int8
from mobiledl.deploy.lowering import composite_attention, lower_model
from mobiledl.errors import UserError
from mobiledl.fileio import atomic_path, check_output_file
from mobiledl.validate import MAX_THREADS, check_int, expect_module

#: Upper bound of a dynamic dimension (the program is memory-planned for it).
MAX_BATCH = 1024
#: The bound is lowered until one batch of inputs at the bound fits in this many bytes.
INPUT_BUDGET_BYTES = 64 * 2**20
#: The constant method holding the program's ``InputSpec``s as JSON.
SPECS_METHOD = "mobiledl_input_specs"
METHOD = "forward"
#: The edge dialect's dtype verifier is off: it reads the sizes returned by ops such as
#: ``chunk`` as Python ints, which specializes a dynamic batch to the example's (ShuffleNet).
_EDGE_CONFIG = EdgeCompileConfig(_check_ir_validity=False)
Args = tuple[torch.Tensor, ...]

#: ExecuTorch ``ScalarType`` codes (``MethodMeta``'s ``TensorInfo.dtype()``) -> torch dtypes.
_SCALAR_TYPES = {
    0: torch.uint8,
    1: torch.int8,
    3: torch.int32,
    4: torch.int64,
    5: torch.float16,
    6: torch.float32,
    11: torch.bool,
}
#: Names ``_specs_json`` writes dtypes under -> the dtypes.
_DTYPES = {str(dtype).removeprefix("torch."): dtype for dtype in _SCALAR_TYPES.values()}
#: Whether a method has been loaded in this process (the threadpool is fixed from then on).
_loaded = False


class ExecuTorchRunner(Runner):
    """One loaded ``.pte`` method, called with numpy (or torch) batches."""

    def __init__(
        self, path: Path, program: Program, specs: tuple[InputSpec, ...], threads: int | None
    ) -> None:
        self.path = path
        self.program = program  # the method runs in the program's memory: keep it alive
        self.method = program.load_method(METHOD)
        self.input_specs = specs
        self.threads = threads
        meta = self.method.metadata
        self.max_sizes = [meta.input_tensor_meta(i).sizes() for i in range(meta.num_inputs())]

    def run(self, x: Batch) -> np.ndarray:
        """Run one batch; return the first output as a numpy array."""
        tensors = self._feed(x)
        try:
            outputs = self.method.execute(tensors)
        except RuntimeError as error:
            raise UserError(f"{self.path}: the program failed: {first_line(error)}") from None
        return to_numpy(outputs[0]).copy()

    def _feed(self, x: Batch) -> list[torch.Tensor]:
        """The inputs in order, as contiguous tensors of each input's dtype and shape."""
        arrays = ordered_inputs(x, self.input_specs, self.path)
        tensors = [
            _row_major(to_tensor(array).to(spec.dtype))
            for array, spec in zip(arrays, self.input_specs, strict=True)
        ]
        for tensor, spec, bound in zip(tensors, self.input_specs, self.max_sizes, strict=True):
            self._check_shape(tensor, spec, bound)
        return tensors

    def _check_shape(self, tensor: torch.Tensor, spec: InputSpec, bound: tuple[int, ...]) -> None:
        fits = len(tensor.shape) == len(spec.shape) and all(
            size == want if want is not None else 1 <= size <= top
            for size, want, top in zip(tensor.shape, spec.shape, bound, strict=True)
        )
        if not fits:
            limits = ", ".join(
                str(want) if want is not None else f"1..{top}"
                for want, top in zip(spec.shape, bound, strict=True)
            )
            raise UserError(
                f"{self.path}: cannot run an input of shape {list(tensor.shape)} (the model "
                f"takes {spec.describe()}, sizes [{limits}])"
            )


class ExecuTorchEngine(Engine):
    """Export through ``torch.export`` to an ExecuTorch program delegated to XNNPACK."""

    name = "executorch"
    file_suffix = ".pte"

    def export(
        self,
        model: nn.Module,
        example_input: Batch,
        path: PathLike,
        input_specs: Sequence[InputSpec] | None = None,
    ) -> Path:
        """Lower ``model`` (int8 PT2E form if quantized), export it and write the ``.pte`` to
        ``path``; the file appears only if every step works. A module that cannot be
        exported, or whose operator the runtime has no kernel for, is a ``UserError`` naming
        it (see the module docstring)."""
        target = check_output_file(path)
        if target.suffix != self.file_suffix:
            raise UserError(f"{target}: an ExecuTorch program must end in {self.file_suffix}")
        program = executorch_program(model, example_input, input_specs)
        with atomic_path(target) as tmp:
            tmp.write_bytes(program.buffer)
        return target

    def load(self, path: PathLike, threads: int | None = None) -> ExecuTorchRunner:
        """Load a ``.pte`` and its ``forward`` method; ``threads`` sizes XNNPACK's threadpool
        if it is the process's first load (see the module docstring), ``None``: its default."""
        source = Path(path)
        if not source.is_file():
            raise UserError(f"{source}: no such ExecuTorch program")
        if threads is not None:
            check_int(threads, "threads", 1, MAX_THREADS)
        try:
            program = Runtime.get().load_program(source)
        except (RuntimeError, ValueError) as error:
            raise UserError(
                f"{source}: not a valid ExecuTorch program ({first_line(error)})"
            ) from None
        if METHOD not in program.method_names:
            raise UserError(f"{source}: the program has no '{METHOD}' method")
        specs = _stored_specs(program)
        try:
            return ExecuTorchRunner(source, program, specs, _pool_threads(threads))
        except RuntimeError as error:
            raise UserError(
                f"{source}: cannot load the '{METHOD}' method ({first_line(error)})"
            ) from None


def executorch_program(
    model: nn.Module, example_input: Batch, input_specs: Sequence[InputSpec] | None = None
) -> ExecutorchProgramManager:
    """The ExecuTorch program ``ExecuTorchEngine.export`` writes, built in memory."""
    expect_module(model, "export")
    x = map_inputs(to_tensor, example_input)
    specs = tuple(input_specs) if input_specs is not None else specs_of(x)
    args = tuple(input_tensors(x))
    if len(specs) != len(args):
        raise UserError(f"{len(specs)} input specs given for an example of {len(args)} inputs")
    lowered = lower_model(model)
    module = KeywordInputs(lowered.model, list(x)) if isinstance(x, dict) else lowered.model
    args = tuple(_two_samples(arg, spec) for arg, spec in zip(args, specs, strict=True))
    exported = _exported(module, args, specs)
    if lowered.quantized:
        exported = _exported(to_pt2e_int8(exported.module()), args, specs)
    with _lowering_mode():
        try:
            edge = to_edge_transform_and_lower(
                exported,
                partitioner=[XnnpackPartitioner()],
                constant_methods={SPECS_METHOD: _specs_json(specs)},
                compile_config=_EDGE_CONFIG,
            )
            program = edge.to_executorch()
        except Exception as error:
            raise _lowering_error(module, args, error, lowered.quantized) from None
    _check_kernels(program, module)
    return program


def delegated_calls(program: ExecutorchProgramManager) -> int:
    """How many ``executorch_call_delegate`` calls (XNNPACK subgraphs) ``forward`` makes."""
    graph = program.exported_program(METHOD).graph
    return sum(1 for node in graph.nodes if _op_name(node) == "executorch_call_delegate")


def max_batch(args: Args, specs: Sequence[InputSpec]) -> int:
    """The bound of the dynamic dimensions: ``MAX_BATCH``, halved while one batch of the
    inputs at the bound exceeds ``INPUT_BUDGET_BYTES``, never below the example's batch."""
    per_sample = sum(
        arg[:1].numel() * arg.element_size() for arg, spec in zip(args, specs, strict=True)
    )
    bound = MAX_BATCH
    while bound > 2 and bound * per_sample > INPUT_BUDGET_BYTES:
        bound //= 2
    return max(bound, max(int(arg.shape[0]) for arg in args))


def _two_samples(arg: torch.Tensor, spec: InputSpec) -> torch.Tensor:
    """The example as export should see it: a dynamic batch of one sample repeated to two
    (``torch.export`` fixes a size-1 dimension), in contiguous strides (the program keeps the
    example's dim order: a 1-channel image with channels-last strides would make the program
    take channels-last inputs)."""
    if arg.dim() and arg.shape[0] == 1 and spec.shape and spec.shape[0] is None:
        arg = torch.cat([arg, arg])
    return arg.clone(memory_format=torch.contiguous_format)


def _exported(module: nn.Module, args: Args, specs: Sequence[InputSpec]) -> ExportedProgram:
    """``torch.export.export`` with a ``Dim`` for every dynamic dimension of ``specs``."""
    bound = max_batch(args, specs)
    batch = Dim("batch", min=1, max=bound)
    dynamic = tuple(
        {
            axis: batch if axis == 0 else Dim(f"{spec.name}_{axis}", min=1, max=bound)
            for axis, size in enumerate(spec.shape)
            if size is None
        }
        for spec in specs
    )
    try:
        with _lowering_mode(), composite_attention():
            return torch.export.export(module, args, dynamic_shapes=dynamic, strict=False)
    except Exception as error:
        raise _export_error(module, args, error) from None


@contextlib.contextmanager
def _lowering_mode() -> Iterator[None]:
    """Symbolic sizes count as unhinted for fake convolutions (see the module docstring), and
    deprecation warnings are quiet."""
    unhinted = mock.patch.object(symbolic_shapes, "has_guarding_hint", _concrete)
    with unhinted, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _concrete(value: object) -> bool:
    """``has_guarding_hint`` while lowering: only concrete sizes have one."""
    return not isinstance(value, torch.SymInt | torch.SymFloat | torch.SymBool)


def _export_error(module: nn.Module, args: Args, error: Exception) -> UserError:
    """``torch.export`` failed: name the model (fails in PyTorch) or the failing module."""
    failure = forward_error(module, args)
    if failure is not None:
        shapes = "; ".join(str(list(x.shape)) for x in args)
        return UserError(
            f"cannot export model ({type(module).__name__}) to ExecuTorch: it fails on an "
            f"input of shape {shapes}: {first_line(failure)}"
        )
    qualname = first_failing_submodule(module, args, _export_submodule)
    return UserError(
        f"cannot export {describe_module(module, qualname)} to ExecuTorch: {first_line(error)}"
    )


def _lowering_error(module: nn.Module, args: Args, error: Exception, quantized: bool) -> UserError:
    """Edge lowering failed: name the first submodule that fails to lower alone (a float
    model; a quantized one's submodules hold fake quantizations no edge program takes alone,
    so the int8 model is named)."""
    if quantized:
        what = f"the int8 form of model ({type(module).__name__})"
    else:
        what = describe_module(module, first_failing_submodule(module, args, _lower_submodule))
    return UserError(f"cannot lower {what} to ExecuTorch: {first_line(error)}")


def _export_submodule(module: nn.Module, x: torch.Tensor) -> ExportedProgram:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.export.export(module, (x,), strict=False)


def _lower_submodule(module: nn.Module, x: torch.Tensor) -> None:
    with _lowering_mode():
        to_edge(_export_submodule(module, x)).to_executorch()


def _check_kernels(program: ExecutorchProgramManager, module: nn.Module) -> None:
    """``UserError`` naming the first operator left outside XNNPACK that the runtime has no
    kernel for, and the module issuing it."""
    kernels = Runtime.get().operator_registry.operator_names
    for node in program.exported_program(METHOD).graph.nodes:
        name = _op_name(node)
        if node.op == "call_function" and "::" in name and name not in kernels:
            stack = node.meta.get("nn_module_stack") or {}
            qualname = list(stack.values())[-1][0] if stack else None
            raise UserError(
                f"cannot export {describe_module(module, qualname)} to ExecuTorch: the runtime "
                f"has no kernel for {name}"
            )


def _op_name(node: torch.fx.Node) -> str:
    """``aten::convolution.out`` for an operator overload, else the callable's name."""
    schema = getattr(node.target, "_schema", None)
    if schema is not None:
        overload = schema.overload_name
        return f"{schema.name}.{overload}" if overload else schema.name
    return getattr(node.target, "__name__", str(node.target))


def _row_major(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` in row-major strides (the dim order the program takes), copied only if not:
    ``contiguous()`` keeps, e.g., the channels-last strides of a 1-channel image."""
    expected = torch.empty(0).new_empty(tensor.shape).stride()
    if tensor.stride() == expected:
        return tensor
    return tensor.clone(memory_format=torch.contiguous_format)


def _pool_threads(threads: int | None) -> int:
    """Size the threadpool for ``threads`` if no method is loaded yet; the size in use."""
    global _loaded
    if threads is not None and not _loaded:
        portable_lib._unsafe_reset_threadpool(threads)
    _loaded = True
    return portable_lib._threadpool_get_thread_count()


def _specs_json(specs: Sequence[InputSpec]) -> str:
    return json.dumps(
        [
            {
                "name": spec.name,
                "shape": list(spec.shape),
                "dtype": str(spec.dtype).removeprefix("torch."),
                "high": spec.high,
            }
            for spec in specs
        ]
    )


def _parsed_specs(text: str) -> tuple[InputSpec, ...]:
    """The ``InputSpec``s of ``_specs_json``'s text; ``UserError`` if it is not that."""
    try:
        entries = json.loads(text)
        specs = tuple(
            InputSpec(entry["name"], tuple(entry["shape"]), _DTYPES[entry["dtype"]], entry["high"])
            for entry in entries
        )
    except (ValueError, KeyError, TypeError) as error:
        raise UserError(f"the program's {SPECS_METHOD} are unreadable ({error!r})") from None
    return specs


def _stored_specs(program: Program) -> tuple[InputSpec, ...]:
    """The specs the program stores, or (a program from elsewhere) ones from ``MethodMeta``:
    ``input``, ``input_1``... with the planned sizes, all static."""
    if SPECS_METHOD in program.method_names:
        return _parsed_specs(program.load_method(SPECS_METHOD).execute([])[0])
    meta = program.metadata(METHOD)
    infos = [meta.input_tensor_meta(i) for i in range(meta.num_inputs())]
    return tuple(
        InputSpec(
            "input" if i == 0 else f"input_{i}",
            tuple(info.sizes()),
            _SCALAR_TYPES.get(info.dtype(), torch.float32),
        )
        for i, info in enumerate(infos)
    )
