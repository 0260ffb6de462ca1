"""The ``Engine`` interface: export a module to an artifact, load it, run it, time it.

ONNX Runtime is the built-in engine; OpenVINO (an optional extra) and others plug in by subclassing
``Engine`` and ``Runner`` and calling ``register_engine``. Everything an engine needs
beyond export and load (running, timing, parity against PyTorch) is written once here.

Models may take several inputs of any dtype (``mobiledl.core.inputs``): a batch is one array,
a tuple of arrays (the artifact's inputs in order) or a dict of arrays by input name, and an
export may be given ``InputSpec``s to name the artifact's inputs.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from mobiledl.core.inputs import (
    InputSpec,
    batch_size_of,
    call_model,
    input_tensors,
    map_inputs,
    slice_batch,
)
from mobiledl.deploy.diagnosis import first_line
from mobiledl.deploy.timing import LatencyStats, interleaved_benchmark
from mobiledl.errors import UserError

PathLike = str | os.PathLike[str]
ArrayLike = np.ndarray | torch.Tensor
#: A batch for a runner: one array, a tuple of arrays in input order, or a dict by input name.
Batch = ArrayLike | tuple[ArrayLike, ...] | dict[str, ArrayLike]

DEFAULT_ENGINE = "onnxruntime"

# Built-in engines, imported only when asked for (optional engines need optional packages),
# with the suffix of their artifacts, so finding the engine of a file imports only that one.
_BUILTIN_ENGINES: dict[str, str] = {
    "onnxruntime": "mobiledl.deploy.onnxruntime:OnnxRuntimeEngine",
    "openvino": "mobiledl.deploy.openvino:OpenVinoEngine",
    "executorch": "mobiledl.deploy.executorch:ExecuTorchEngine",
}
_BUILTIN_SUFFIXES: dict[str, str] = {
    "onnxruntime": ".onnx",
    "openvino": ".xml",
    "executorch": ".pte",
}
_ENGINES: dict[str, Callable[[], Engine]] = {}
#: Loggers that warn while an engine's package is imported (see ``_quiet_import_logs``).
_NOISY_IMPORT_LOGGERS = ("torchao", "torch.utils._pytree")


class Runner(ABC):
    """A loaded artifact: call it with a numpy batch, get the numpy output back.

    ``input_specs`` describe the artifact's inputs (``None`` for dynamic dimensions, normally
    the batch); ``input_shape`` is the first input's shape; ``threads`` is the intra-op thread
    count it was loaded with, ``None`` for the engine's default.
    """

    path: Path
    threads: int | None
    input_specs: tuple[InputSpec, ...]

    @property
    def input_shape(self) -> tuple[int | None, ...]:
        """Shape of the first input, ``None`` for dynamic dimensions."""
        return self.input_specs[0].shape

    @abstractmethod
    def run(self, x: Batch) -> np.ndarray:
        """Run one batch and return the (first) output."""

    def __call__(self, x: Batch) -> np.ndarray:
        return self.run(x)


class Engine(ABC):
    """An inference engine mobiledl can export to and time models on."""

    name: ClassVar[str]
    file_suffix: ClassVar[str]

    @property
    def suffix(self) -> str:
        """Alias of ``file_suffix`` (e.g. ``".onnx"``)."""
        return self.file_suffix

    @abstractmethod
    def export(
        self,
        model: nn.Module,
        example_input: Batch,
        path: PathLike,
        input_specs: Sequence[InputSpec] | None = None,
    ) -> Path:
        """Write ``model`` (traced on ``example_input``) to ``path`` atomically.

        ``input_specs`` name the artifact's inputs and mark their dynamic dimensions
        (default: ``specs_of(example_input)``, a dynamic batch). Raises ``UserError`` naming
        the module that cannot be exported.
        """

    @abstractmethod
    def load(self, path: PathLike, threads: int | None = None) -> Runner:
        """Load an artifact; ``UserError`` naming the file if it is missing or corrupt."""

    def artifact_params(self, path: PathLike) -> int | None:
        """Weight elements stored in the artifact, where the format lists them (else None)."""
        return None

    def artifact_bytes(self, path: PathLike) -> int:
        """Bytes of the artifact: its file, plus any files beside it that it needs."""
        return Path(path).stat().st_size

    def run(self, path_or_runner: PathLike | Runner, x: Batch) -> np.ndarray:
        """Run ``x`` through an artifact (loaded on the fly if given as a path)."""
        return self._as_runner(path_or_runner).run(x)

    def benchmark(
        self, runner: Runner, x: Batch, warmup: int = 10, repeats: int = 50
    ) -> LatencyStats:
        """Time ``runner`` on ``x``: ``warmup`` untimed calls, then ``repeats`` timed ones."""
        batch = map_inputs(to_numpy, x)
        stats = interleaved_benchmark({self.name: lambda: runner.run(batch)}, warmup, repeats)
        first = input_tensors(batch)[0]
        return stats[self.name].with_context(
            batch_size=int(first.shape[0]) if first.ndim else 1,
            threads=runner.threads,
            engine=self.name,
        )

    def top1_agreement(
        self, model: nn.Module, path_or_runner: PathLike | Runner, x: Batch, batch: int = 256
    ) -> float:
        """Fraction of samples on which ``model`` and the engine agree on the arg-max class."""
        runner = self._as_runner(path_or_runner)
        inputs = map_inputs(to_numpy, x)
        total = batch_size_of(inputs)
        agree = 0
        for start in range(0, total, batch):
            chunk = slice_batch(inputs, start, start + batch)
            ours = eager_output(model, chunk).argmax(axis=1)
            agree += int((runner.run(chunk).argmax(axis=1) == ours).sum())
        return agree / max(total, 1)

    def parity_check(self, model: nn.Module, path_or_runner: PathLike | Runner, x: Batch) -> float:
        """Largest absolute difference between ``model``'s eval output and the engine's."""
        return max_abs_difference(eager_output(model, x), self.run(path_or_runner, x), self.name)

    def _as_runner(self, path_or_runner: PathLike | Runner) -> Runner:
        if isinstance(path_or_runner, Runner):
            return path_or_runner
        return self.load(path_or_runner)


def ordered_inputs(x: Batch, specs: Sequence[InputSpec], path: Path) -> list[ArrayLike]:
    """The arrays of a batch in the order of an artifact's ``specs`` (a dict by input name, a
    tuple in order, or one array); ``UserError`` naming ``path`` if one is missing or the
    count is wrong. Every runner feeds its engine through this."""
    names = [spec.name for spec in specs]
    if isinstance(x, dict):
        missing = [name for name in names if name not in x]
        if missing:
            raise UserError(f"{path}: no value given for input '{missing[0]}'")
        arrays = [x[name] for name in names]
    else:
        arrays = input_tensors(x)
    if len(arrays) != len(names):
        raise UserError(
            f"{path}: the model takes {len(names)} input(s) ({', '.join(names)}); got {len(arrays)}"
        )
    return arrays


def shape_error(
    path: Path, arrays: Sequence[np.ndarray], specs: Sequence[InputSpec], error: BaseException
) -> UserError:
    """The one-line error of an engine that refused a batch: what was given, what the
    artifact takes, and the engine's first line."""
    given = "; ".join(str(list(array.shape)) for array in arrays)
    expected = "; ".join(spec.describe() for spec in specs)
    return UserError(
        f"{path}: cannot run an input of shape {given} (the model takes {expected}): "
        f"{first_line(error)}"
    )


def max_abs_difference(expected: np.ndarray, actual: np.ndarray, engine: str) -> float:
    """Largest absolute difference between PyTorch's output and ``engine``'s; ``UserError``
    if their shapes differ."""
    if expected.shape != actual.shape:
        raise UserError(
            f"{engine} output has shape {list(actual.shape)} but the PyTorch model gives "
            f"{list(expected.shape)}"
        )
    if expected.size == 0:
        return 0.0
    return float(np.abs(expected.astype(np.float64) - actual.astype(np.float64)).max())


def to_numpy(x: ArrayLike) -> np.ndarray:
    """A numpy view of a tensor or array (detached, on the CPU)."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def to_tensor(x: ArrayLike) -> torch.Tensor:
    """A CPU tensor from a tensor or array (a float64 array becomes float32, the models' dtype)."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu()
    array = np.asarray(x)
    if array.dtype == np.float64:
        array = array.astype(np.float32)
    return torch.from_numpy(np.ascontiguousarray(array))


def eager_output(model: nn.Module, x: Batch) -> np.ndarray:
    """``model(x)`` in eval mode without gradients, as numpy; the mode is restored after."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            output = call_model(model, map_inputs(to_tensor, x))
    finally:
        model.train(was_training)
    if isinstance(output, (tuple, list)):
        output = output[0]
    return to_numpy(output)


def register_engine(name: str, factory: Callable[[], Engine]) -> None:
    """Make ``get_engine(name)`` return ``factory()`` (an ``Engine`` subclass works)."""
    _ENGINES[name] = factory


def list_engines() -> list[str]:
    """Names ``get_engine`` accepts, sorted."""
    return sorted(set(_BUILTIN_ENGINES) | set(_ENGINES))


def get_engine(name: str | None = None) -> Engine:
    """The engine called ``name`` (``None``: the default engine); ``UserError`` listing the
    available ones if unknown."""
    name = name or DEFAULT_ENGINE
    if name in _ENGINES:
        return _ENGINES[name]()
    if name not in _BUILTIN_ENGINES:
        raise UserError(f"unknown engine '{name}'; available: {', '.join(list_engines())}")
    module_name, class_name = _BUILTIN_ENGINES[name].split(":")
    try:
        with _quiet_import_logs():
            module = importlib.import_module(module_name)
    except ImportError as error:
        raise UserError(f"engine '{name}' needs a package that is not installed: {error}") from None
    return getattr(module, class_name)()


@contextlib.contextmanager
def _quiet_import_logs() -> Iterator[None]:
    """Importing an engine's package must not print: ExecuTorch's import of torchao logs a
    warning per CUDA library it cannot load and torch a deprecation per registered enum."""
    loggers = [logging.getLogger(name) for name in _NOISY_IMPORT_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def engine_for_artifact(path: PathLike) -> Engine:
    """The engine whose artifacts end like ``path`` (``.onnx``...); ``UserError`` if none, or
    if that engine's package is not installed."""
    suffix = Path(path).suffix
    suffixes = _suffixes()
    if suffix not in suffixes:
        known = ", ".join(sorted(suffixes))
        raise UserError(f"{path}: no engine runs '{suffix}' files (known: {known})")
    return get_engine(suffixes[suffix])


def artifact_suffixes() -> set[str]:
    """File suffixes of the engines' artifacts (``{".onnx", ...}``), installed or not."""
    return set(_suffixes())


def _suffixes() -> dict[str, str]:
    """Artifact suffix -> engine name, for the built-in and the registered engines."""
    registered = {factory().file_suffix: name for name, factory in _ENGINES.items()}
    return {**{suffix: name for name, suffix in _BUILTIN_SUFFIXES.items()}, **registered}
