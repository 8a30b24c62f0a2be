"""Scoped, reversible replacement of an attribute of an lm-eval object (a Task's or an HFLM's
method) for the duration of one run: the recorders in ``prompts`` and ``generations`` use it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def shadow(undo: list[Callable[[], None]], obj: Any, name: str, fn: Callable) -> None:
    """Set ``obj.name = fn`` on the instance and append to ``undo`` the call that puts back
    exactly what was there (the instance's own attribute, or none: the class's again)."""
    had = name in vars(obj)
    previous = vars(obj).get(name)
    setattr(obj, name, fn)

    def restore() -> None:
        if had:
            setattr(obj, name, previous)
        else:
            delattr(obj, name)

    undo.append(restore)
