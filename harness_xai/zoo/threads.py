"""Torch's thread count for the duration of a block (training a zoo model), the caller's count
restored after: a later in-process forward must not depend on whether a model was trained first
(fp32 reductions differ with the thread count; tests/conftest.py fails a test that leaks one)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """``torch.set_num_threads(n)`` inside the block; the previous count after it."""
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
