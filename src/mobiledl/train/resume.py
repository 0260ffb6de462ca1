"""Epoch checkpoints: a training run killed at any moment (``kill -9`` included) resumes after
its last finished epoch and ends bit-identical to an uninterrupted run.

After every finished epoch ``train(..., checkpoint=path)`` writes, atomically (a temporary file
renamed into place, ``mobiledl.fileio.atomic_path``), everything the loop carries to the next
epoch:

- the model's weights and buffers, the optimizer's and the learning-rate schedule's state, and
  the state of loss terms that train parameters of their own (FitNets adapters);
- the index of the finished epoch, the best-on-validation weights, epoch and accuracy, and the
  per-epoch history;
- the random number generators of PyTorch, NumPy and Python's ``random`` (dropout and any
  sampling in the loss draw from them). The data loader needs nothing: each epoch builds a
  fresh loader whose generator is seeded with ``config.seed + epoch``.

A checkpoint also records a fingerprint of its run: the training config (``progress`` aside),
a hash of the task's data (every split's inputs and labels), the model's architecture (its
``mobiledl_arch`` record, module structure, parameter shapes and which parameters train), the
model's weights when training started, and the loss terms (type, settings, and the weights of
any module they hold, e.g. a KD teacher). A checkpoint whose fingerprint differs is refused
with one line naming what differs (``CheckpointError``), as is one that cannot be read: a
damaged checkpoint is never silently replaced, since it may belong to a run worth keeping (an
interrupted write cannot damage one: the rename is atomic). Delete it to train from the start.

``epoch_checkpoints(directory)`` makes every ``train`` call in its body that is not given a
``checkpoint`` keep one in ``directory``, named after the run's fingerprint
(``train-<hash>.pt``): a recipe step runs inside it, so a step that trains several times
(iterative pruning with fine-tuning, ...) resumes each training where it stopped and skips the
finished ones. Keyed by fingerprint, a checkpoint is only ever used by the training that wrote
it.

Files are read with ``torch.load(weights_only=True)``: loading one runs no code.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
from collections.abc import Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from mobiledl.core.inputs import input_tensors
from mobiledl.core.task import Task
from mobiledl.errors import UserError
from mobiledl.fileio import atomic_path
from mobiledl.validate import expect_path

if TYPE_CHECKING:
    from mobiledl.train.trainer import TrainConfig

FORMAT = "mobiledl-train-checkpoint"
VERSION = 1
#: Config fields that do not change what training computes.
UNFINGERPRINTED_FIELDS = ("progress",)
#: Batch size used to read a task's splits when hashing them.
HASH_BATCH = 1024

_DIRECTORY: ContextVar[Path | None] = ContextVar("mobiledl_epoch_checkpoints", default=None)


class CheckpointError(UserError):
    """A checkpoint that cannot be used: unreadable, or written by a different run."""


@dataclass
class TrainingProgress:
    """What the training loop carries from one epoch to the next (besides the model and the
    optimizer): ``epoch`` is the last finished epoch (-1 before the first)."""

    epoch: int = -1
    best_accuracy: float = -1.0
    best_epoch: int = -1
    best_state: dict[str, torch.Tensor] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)


@dataclass(frozen=True)
class TrainingRun:
    """What a checkpoint belongs to and restores into: the run's ``fingerprint`` and length, and
    the live model, optimizer, schedule and loss terms."""

    fingerprint: Mapping[str, str]
    epochs: int
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    terms: Sequence[Any]


# ---------------------------------------------------------------- fingerprint


def run_fingerprint(
    model: nn.Module, task: Task, config: TrainConfig, terms: Sequence[Any] = ()
) -> dict[str, str]:
    """Hashes of what determines a training run's result, by part (see the module doc).

    Call it before training starts: it includes the model's initial weights.
    """
    settings = {k: v for k, v in config.fields_dict().items() if k not in UNFINGERPRINTED_FIELDS}
    return {
        "training config": _digest(json.dumps(settings, sort_keys=True, default=str)),
        "task data": task_fingerprint(task),
        "model architecture": _architecture_digest(model),
        "initial weights": _state_digest(model.state_dict()),
        "loss terms": _terms_digest(terms),
    }


def fingerprint_key(fingerprint: Mapping[str, str]) -> str:
    """One short hash of a whole fingerprint (names the checkpoint in ``epoch_checkpoints``)."""
    return _digest(json.dumps(dict(fingerprint), sort_keys=True))[:16]


def task_fingerprint(task: Task) -> str:
    """A hash of a task's name, classes and every split's inputs and labels, in order."""
    digest = hashlib.sha256(f"{task.name}|{task.num_classes}|{task.input_kind}".encode())
    for split in task.splits:
        digest.update(f"|{split}".encode())
        for inputs, targets in task.loader(split, HASH_BATCH, shuffle=False):
            for tensor in (*input_tensors(inputs), targets):
                _update(digest, tensor)
    return digest.hexdigest()


def _architecture_digest(model: nn.Module) -> str:
    record = getattr(model, "mobiledl_arch", None)
    trainable = [(name, p.requires_grad) for name, p in model.named_parameters()]
    shapes = [(k, list(v.shape), str(v.dtype)) for k, v in model.state_dict().items()]
    text = json.dumps([record, repr(model), trainable, shapes], sort_keys=True, default=str)
    return _digest(text)


def _terms_digest(terms: Sequence[Any]) -> str:
    parts: list[str] = []
    for term in terms:
        parts.append(f"{type(term).__module__}.{type(term).__qualname__}")
        if isinstance(term, nn.Module):
            parts.append(f"{repr(term)}:{_state_digest(term.state_dict())}")
            continue
        for key, value in sorted(getattr(term, "__dict__", {}).items()):
            if isinstance(value, nn.Module):
                parts.append(f"{key}={repr(value)}:{_state_digest(value.state_dict())}")
            elif isinstance(value, bool | int | float | str | type(None)):
                parts.append(f"{key}={value!r}")
    return _digest("\n".join(parts))


def _state_digest(state: Mapping[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for key, tensor in state.items():
        digest.update(f"|{key}".encode())
        _update(digest, tensor)
    return digest.hexdigest()


def _update(digest: Any, tensor: torch.Tensor) -> None:
    tensor = tensor.detach().cpu()
    if tensor.is_quantized:
        tensor = tensor.int_repr()
    digest.update(f"{tensor.dtype}{list(tensor.shape)}".encode())
    digest.update(tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# ---------------------------------------------------------------- random number generators


def rng_state() -> dict[str, Any]:
    """The state of PyTorch's, NumPy's and Python's global generators, as plain tensors and
    numbers (so a weights-only load reads it back)."""
    _, keys, position, has_gauss, gauss = np.random.get_state()
    version, python_state, python_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "python": {
            "version": int(version),
            "state": torch.tensor(python_state, dtype=torch.int64),
            "gauss": python_gauss,
        },
    }


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what ``rng_state`` returned."""
    torch.set_rng_state(state["torch"])
    numpy = state["numpy"]
    keys = numpy["keys"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, numpy["position"], numpy["has_gauss"], numpy["gauss"]))
    python = state["python"]
    random.setstate((python["version"], tuple(python["state"].tolist()), python["gauss"]))


# ---------------------------------------------------------------- files


def save_checkpoint(path: Path, run: TrainingRun, progress: TrainingProgress) -> None:
    """Write ``run``'s state after epoch ``progress.epoch`` to ``path`` atomically."""
    same_as_model = progress.best_epoch == progress.epoch
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "fingerprint": dict(run.fingerprint),
        "epoch": progress.epoch,
        "epochs": run.epochs,
        "model": _cpu(run.model.state_dict()),
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "terms": [_cpu(t.state_dict()) if isinstance(t, nn.Module) else None for t in run.terms],
        "best_accuracy": progress.best_accuracy,
        "best_epoch": progress.best_epoch,
        "best_state": None if same_as_model else _cpu(progress.best_state),
        "history": progress.history,
        "rng": rng_state(),
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: Path, run: TrainingRun) -> TrainingProgress | None:
    """Restore the state saved at ``path`` into ``run``'s model, optimizer, schedule, terms and
    the random generators; ``None`` if there is no checkpoint. ``CheckpointError`` (one line) if it
    cannot be read or was written by a different run."""
    path = expect_path(path, "checkpoint")
    if not path.exists():
        return None
    payload = read_checkpoint(path)
    saved, fingerprint, terms = payload["fingerprint"], run.fingerprint, run.terms
    differ = [part for part in fingerprint if saved.get(part) != fingerprint[part]]
    if differ or payload["epochs"] != run.epochs:
        what = ", ".join(differ) if differ else "number of epochs"
        raise CheckpointError(
            f"{path} is a checkpoint of a different training run (its {what} differ); delete "
            "it to train from the start"
        )
    try:
        run.model.load_state_dict(payload["model"])
        run.optimizer.load_state_dict(payload["optimizer"])
        run.scheduler.load_state_dict(payload["scheduler"])
        if len(payload["terms"]) != len(terms):
            raise ValueError(f"{len(payload['terms'])} loss terms saved, {len(terms)} given")
        for term, state in zip(terms, payload["terms"], strict=True):
            if isinstance(term, nn.Module):
                term.load_state_dict(state)
        set_rng_state(payload["rng"])
    except (RuntimeError, ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
        raise _unreadable(path, exc) from None
    best = payload["best_state"]
    return TrainingProgress(
        epoch=payload["epoch"],
        best_accuracy=float(payload["best_accuracy"]),
        best_epoch=payload["best_epoch"],
        best_state=_copy(payload["model"] if best is None else best),
        history=list(payload["history"]),
    )


def read_checkpoint(path: Path) -> dict[str, Any]:
    """The checked dict inside a checkpoint file; ``CheckpointError`` naming it otherwise."""
    from mobiledl.models.packed import is_packed_file
    from mobiledl.models.record import check_archive

    if path.is_file() and is_packed_file(path):
        raise CheckpointError(
            f"{path} is not a mobiledl training checkpoint (it is a model file); delete it "
            "or choose another output"
        )
    try:
        check_archive(path)
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except UserError as exc:
        raise CheckpointError(str(exc)) from None
    except Exception as exc:  # corrupt or truncated bytes surface as many exception types
        raise _unreadable(path, exc) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is not a mobiledl training checkpoint (no '{FORMAT}' header); delete it "
            "or choose another output"
        )
    version = payload.get("version")
    if not isinstance(version, int) or version > VERSION:
        raise CheckpointError(f"{path} was written by a newer mobiledl (format {version!r:.20})")
    expected = {
        "fingerprint": dict,
        "epoch": int,
        "epochs": int,
        "model": dict,
        "optimizer": dict,
        "scheduler": dict,
        "terms": list,
        "best_epoch": int,
        "history": list,
        "rng": dict,
    }
    for key, kind in expected.items():
        if not isinstance(payload.get(key), kind):
            raise _unreadable(path, ValueError(f"'{key}' is missing or not a {kind.__name__}"))
    if not isinstance(payload.get("best_accuracy"), int | float):
        raise _unreadable(path, ValueError("'best_accuracy' is missing or not a number"))
    if "best_state" not in payload or not isinstance(payload["best_state"], dict | None):
        raise _unreadable(path, ValueError("'best_state' is not a mapping"))
    if not 0 <= payload["epoch"] < payload["epochs"]:
        raise _unreadable(path, ValueError(f"epoch {payload['epoch']} of {payload['epochs']}"))
    return payload


def _unreadable(path: Path, exc: BaseException) -> CheckpointError:
    text = str(exc).strip()
    reason = text.splitlines()[0][:120] if text else type(exc).__name__
    return CheckpointError(
        f"{path} is not a readable training checkpoint ({reason}); delete it to train from "
        "the start"
    )


def _cpu(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in state.items()}


def _copy(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in state.items()}


# ---------------------------------------------------------------- checkpoint directories


@contextlib.contextmanager
def epoch_checkpoints(directory: str | Path) -> Iterator[Path]:
    """Every ``train`` call in the body without a ``checkpoint`` of its own keeps its epoch
    checkpoint in ``directory`` (``train-<fingerprint hash>.pt``) and resumes from it."""
    path = Path(directory)
    token = _DIRECTORY.set(path)
    try:
        yield path
    finally:
        _DIRECTORY.reset(token)


def active_checkpoint_directory() -> Path | None:
    """The directory of the innermost ``epoch_checkpoints``, if any."""
    return _DIRECTORY.get()


def checkpoint_in(directory: Path, fingerprint: Mapping[str, str]) -> Path:
    """Where ``epoch_checkpoints(directory)`` keeps the checkpoint of the run ``fingerprint``."""
    return directory / f"train-{fingerprint_key(fingerprint)}.pt"


def checkpoint_epoch(path: str | Path) -> int | None:
    """The last finished epoch a checkpoint holds (``None`` if there is no file)."""
    path = Path(path)
    return read_checkpoint(path)["epoch"] if path.exists() else None


__all__ = [
    "CheckpointError",
    "TrainingProgress",
    "TrainingRun",
    "active_checkpoint_directory",
    "checkpoint_epoch",
    "checkpoint_in",
    "epoch_checkpoints",
    "fingerprint_key",
    "load_checkpoint",
    "read_checkpoint",
    "run_fingerprint",
    "save_checkpoint",
    "task_fingerprint",
]
