"""Measured accuracy of sub-networks, in this process or on a Ray cluster.

Evaluating an architecture = extract it from the supernet, recalibrate its batch norms on a
fixed subset of the training split, and score it on one split. Every evaluation runs with one
PyTorch thread on the same data, so the numbers do not depend on where it runs: a Ray run and
an in-process run with the same seed give the same results. Ray (``pip install
'mobiledl[nas]'``) is imported only when a :class:`RayEvaluator` is created.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from mobiledl.automl.nas.elastic import OFASupernet
from mobiledl.automl.nas.extract import calibration_indices, extract_subnet, recalibrate_bn
from mobiledl.automl.nas.space import Arch
from mobiledl.automl.nas.store import supernet_bytes, supernet_from_bytes
from mobiledl.core.task import TensorTask
from mobiledl.errors import UserError
from mobiledl.train.trainer import evaluate


@dataclass(frozen=True)
class EvalSpec:
    """How an architecture is scored: the split, and the seed and size of the fixed subset
    of training samples its batch norms are recalibrated on."""

    seed: int = 0
    split: str = "val"
    calibration_size: int = 1000


class Evaluator(Protocol):
    def __call__(self, archs: Sequence[Arch]) -> list[float]: ...


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run PyTorch on one intra-op thread inside the block (reproducible, fair to others)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def evaluate_archs(
    supernet: OFASupernet, task: TensorTask, archs: Sequence[Arch], spec: EvalSpec
) -> list[float]:
    """The metric of each architecture on ``spec.split`` after batch-norm recalibration."""
    calibration = task.x_train[
        calibration_indices(len(task.x_train), spec.calibration_size, spec.seed)
    ]
    scores = []
    with one_thread():
        for arch in archs:
            model = recalibrate_bn(extract_subnet(supernet, arch), calibration)
            scores.append(evaluate(model, task, spec.split))
    return scores


class LocalEvaluator:
    """Evaluations in this process."""

    def __init__(self, supernet: OFASupernet, task: TensorTask, spec: EvalSpec) -> None:
        self.supernet, self.task, self.spec = supernet, task, spec

    def __call__(self, archs: Sequence[Arch]) -> list[float]:
        return evaluate_archs(self.supernet, self.task, archs, self.spec)


def _evaluate_chunk(
    supernet_data: bytes, task: TensorTask, spec: EvalSpec, arch_dicts: list[dict[str, Any]]
) -> list[float]:
    """Body of a Ray task: rebuild the supernet, evaluate a chunk of architectures."""
    supernet = supernet_from_bytes(supernet_data)
    archs = [Arch.from_dict(d, supernet.space) for d in arch_dicts]
    return evaluate_archs(supernet, task, archs, spec)


class RayEvaluator:
    """Evaluations as Ray tasks (one CPU each), on the cluster at ``address`` or on a local
    Ray started here with ``num_cpus`` CPUs. The supernet and the task's tensors go to the
    object store once. Use as a context manager to shut a local Ray down afterwards."""

    def __init__(
        self,
        supernet: OFASupernet,
        task: TensorTask,
        spec: EvalSpec,
        address: str | None = None,
        num_cpus: int = 2,
        chunk_size: int = 8,
    ) -> None:
        try:
            import ray
        except ImportError:
            raise UserError("Ray is not installed: pip install 'mobiledl[nas]'") from None
        self._ray, self.spec, self.chunk_size = ray, spec, chunk_size
        self._started = not ray.is_initialized()
        if self._started:
            _init_ray(ray, address, num_cpus)
        self._supernet = ray.put(supernet_bytes(supernet))
        self._task = ray.put(task)
        self._remote = ray.remote(num_cpus=1)(_evaluate_chunk)

    def __call__(self, archs: Sequence[Arch]) -> list[float]:
        chunks = [archs[i : i + self.chunk_size] for i in range(0, len(archs), self.chunk_size)]
        futures = [
            self._remote.remote(self._supernet, self._task, self.spec, [a.to_dict() for a in chunk])
            for chunk in chunks
        ]
        return [score for chunk in self._ray.get(futures) for score in chunk]

    def close(self) -> None:
        if self._started and self._ray.is_initialized():
            self._ray.shutdown()

    def __enter__(self) -> RayEvaluator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _init_ray(ray: Any, address: str | None, num_cpus: int) -> None:
    """Connect to ``address`` or start a local Ray (no dashboard, short temp dir)."""
    try:
        if address:
            ray.init(address=address, logging_level="ERROR", log_to_driver=False)
        else:
            ray.init(
                num_cpus=num_cpus,
                include_dashboard=False,
                _temp_dir=tempfile.mkdtemp(prefix="ray", dir="/tmp"),
                logging_level="ERROR",
                log_to_driver=False,
            )
    except (ConnectionError, ValueError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise UserError(f"cannot start or reach Ray at '{address or 'local'}': {first}") from None
