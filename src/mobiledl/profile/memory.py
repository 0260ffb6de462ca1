"""Peak activation memory of one inference, from tensor lifetimes over the ATen op order.

This is the tensor-lifetime analysis of MCUNet-style memory planning (Lin et al. 2020, as
surveyed by Cai et al. 2022): the memory an ahead-of-time planner needs when every
activation is freed right after its last reader.

- The ops of one forward pass are numbered ``0 .. n-1`` in execution order. They are the
  ops PyTorch runs: an unfused batch norm is an op with its own output, so a conv-BN pair
  costs more here than after folding BN into the conv.
- An *activation* is a storage produced by an op (keyed on its untyped storage, so views
  and in-place ops share one activation). It is born at the op that allocates it and dies
  at its last use as an op input. Model outputs live until the end; the model input is
  live from before op 0 until its last use.
- Parameters and buffers are weights, not activations, and so are tensors the model holds
  as plain attributes (constants it did not compute during this forward).
- Size: the storage's element count at ``bits`` bits per element for floating-point
  storages (so a float32 model at ``bits=8`` counts int8 activations); integer and bool
  storages (indices, masks) count at their real size.
- Extra outputs nothing reads (max-pool indices, batch-norm saved statistics) are PyTorch
  kernel artifacts an inference engine does not allocate; they are not counted.
- Memory at op ``i`` is the sum over activations live at ``i`` (its live inputs, its
  outputs, and everything born earlier that is still needed later). The peak is the
  maximum over ops, and over the moment before op 0 (only the input is live).

Example: a chain ``x -> conv1 -> a -> conv2 -> b`` peaks at ``max(x + a, a + b)``; in a
residual block the skip tensor stays live until the add that reads it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch.multiprocessing.reductions import StorageWeakRef

_WEIGHT = -1


@dataclass
class _Activation:
    nbytes: int
    birth: int
    death: int
    storage: StorageWeakRef
    secondary: bool = False  # not the first output of its op
    read: bool = False  # read by a later op or returned by the model


def _storage_key(tensor: torch.Tensor) -> tuple[str, int] | None:
    """Identity of a tensor's storage, or ``None`` for tensors without a real storage."""
    try:
        storage = tensor.untyped_storage()
    except (RuntimeError, NotImplementedError):
        return None
    if storage.nbytes() == 0:
        return None
    return (str(tensor.device), storage.data_ptr())


def activation_bytes(tensor: torch.Tensor, bits: int) -> int:
    """Bytes of ``tensor``'s whole storage with floating-point elements at ``bits`` bits."""
    nbytes = tensor.untyped_storage().nbytes()
    if not (tensor.is_floating_point() or tensor.is_complex()):
        return nbytes
    elements = nbytes // tensor.element_size()
    return math.ceil(elements * bits / 8)


class LifetimeTracker:
    """Records the birth and death of every activation, op by op."""

    def __init__(self, bits: int, weights: Iterable[torch.Tensor]) -> None:
        self.bits = bits
        self.step = -1
        self._activations: list[_Activation] = []
        self._by_storage: dict[tuple[str, int], int] = {}
        for weight in weights:
            key = _storage_key(weight)
            if key is not None:
                self._by_storage[key] = _WEIGHT

    def add_inputs(self, inputs: Iterable[torch.Tensor]) -> None:
        """The model inputs: live from before the first op."""
        for tensor in inputs:
            key = _storage_key(tensor)
            if key is not None and key not in self._by_storage:
                self._born(key, tensor, birth=-1)

    def on_op(self, inputs: Iterable[torch.Tensor], outputs: Iterable[torch.Tensor]) -> None:
        """One op ran: extend its inputs' lifetimes and register its new outputs."""
        self.step += 1
        input_keys = set()
        for tensor in inputs:
            key = _storage_key(tensor)
            if key is None:
                continue
            input_keys.add(key)
            self._touch(key)
        for position, tensor in enumerate(outputs):
            key = _storage_key(tensor)
            if key is None:
                continue
            if key in input_keys:  # a view or an in-place result: same activation
                self._touch(key, tensor)
            else:  # a fresh allocation (possibly at the address of a dead one)
                self._born(key, tensor, birth=self.step, secondary=position > 0)

    def add_outputs(self, outputs: Iterable[torch.Tensor]) -> None:
        """The model outputs: live until the end of the forward pass."""
        for tensor in outputs:
            key = _storage_key(tensor)
            index = self._by_storage.get(key) if key is not None else None
            if index is not None and index != _WEIGHT:
                self._activations[index].death = self.step
                self._activations[index].read = True

    def timeline(self) -> list[int]:
        """Live activation bytes before op 0 (index 0) and at each op (index ``i + 1``)."""
        delta = [0] * (self.step + 3)
        for act in self._activations:
            if act.secondary and not act.read:
                continue
            delta[act.birth + 1] += act.nbytes
            delta[max(act.death, act.birth) + 2] -= act.nbytes
        live, timeline = 0, []
        for change in delta[:-1]:
            live += change
            timeline.append(live)
        return timeline

    def _born(
        self, key: tuple[str, int], tensor: torch.Tensor, birth: int, secondary: bool = False
    ) -> None:
        self._by_storage[key] = len(self._activations)
        nbytes = activation_bytes(tensor, self.bits)
        storage = StorageWeakRef(tensor.untyped_storage())
        self._activations.append(_Activation(nbytes, birth, birth, storage, secondary))

    def _touch(self, key: tuple[str, int], tensor: torch.Tensor | None = None) -> None:
        """Use of a known storage at the current op; unknown storages are constants."""
        index = self._by_storage.setdefault(key, _WEIGHT)
        if index == _WEIGHT:
            return
        act = self._activations[index]
        if act.storage.expired():  # freed; a constant now sits at its address
            self._by_storage[key] = _WEIGHT
            return
        act.death = self.step
        act.read = act.read or self.step > act.birth
        if tensor is not None:  # an in-place resize may have grown the storage
            act.nbytes = max(act.nbytes, activation_bytes(tensor, self.bits))
