"""Progress bars for the slow steps of post-training quantization (AdaRound, ``auto``)."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def progress(items: Iterable[T], desc: str, total: int | None = None) -> Iterable[T]:
    """``items`` with a progress bar on stderr, shown only when stderr is a terminal."""
    return tqdm(items, desc=desc, total=total, file=sys.stderr, disable=None, leave=False)
