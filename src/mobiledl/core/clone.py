"""``clone_module``: a deep copy of a model that shares nothing with the original.

``copy.deepcopy`` of a module with ``torch.nn.utils.parametrize`` parametrizations keeps the
class PyTorch injected for it (``ParametrizedConv2d``...), whose properties are the
parametrized tensors. Removing a parametrization from the copy deletes that property from
the shared class, which breaks the original (``'ParametrizedConv2d' object has no attribute
'weight'``). ``clone_module`` gives each parametrized module of the copy a class of its own.
"""

from __future__ import annotations

import copy
from typing import TypeVar

from torch import nn
from torch.nn.utils import parametrize

ModuleT = TypeVar("ModuleT", bound=nn.Module)

_CLASS_SLOTS = ("__dict__", "__weakref__")


def clone_module(model: ModuleT) -> ModuleT:
    """A deep copy of ``model`` whose parametrized modules have classes of their own."""
    clone = copy.deepcopy(model)
    for module in clone.modules():
        if parametrize.is_parametrized(module):
            shared = type(module)
            namespace = {k: v for k, v in vars(shared).items() if k not in _CLASS_SLOTS}
            module.__class__ = type(shared.__name__, shared.__bases__, namespace)
    return clone
