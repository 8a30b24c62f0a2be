"""Name → object registries (model families, attribution methods, contrast kinds), like lm-eval's.

Built-ins register through the same ``register`` call a user's code would, when their registry
module is imported — so they are in place before any user registration, and a user cannot be
shadowed by a built-in loaded later. A taken name is refused unless ``overwrite=True``; an unknown
name answers with one line: "did you mean … / supported: …".
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Iterator
from typing import Generic, TypeVar

from harness_xai.errors import UserError

T = TypeVar("T")


def unknown_name_message(kind: str, name: str, known: Iterable[str], hint: str = "") -> str:
    """One line: ``unsupported {kind} 'x': did you mean 'y'? supported: a, b, c``."""
    known = sorted(known)
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.5)
    guess = f" did you mean '{close[0]}'?" if close else ""
    tail = f" {hint}" if hint else ""
    return f"unsupported {kind} '{name}':{guess} supported: {', '.join(known)}.{tail}"


class Registry(Generic[T]):
    """A mapping that refuses taken names (``overwrite=True`` replaces) and answers unknown ones
    with a "did you mean" line; ``hint`` says where to add one."""

    def __init__(self, kind: str, hint: str = ""):
        self.kind, self.hint = kind, hint
        self._items: dict[str, T] = {}

    def register(self, name: str, item: T, *, overwrite: bool = False) -> T:
        if not isinstance(name, str) or not name:
            raise UserError(f"a {self.kind} needs a non-empty name, got {name!r}.")
        if name in self._items and not overwrite and self._items[name] is not item:
            raise UserError(f"{self.kind} '{name}' is already registered; pass overwrite=True "
                            "to replace it.")
        self._items[name] = item
        return item

    def get(self, name) -> T:
        try:
            return self._items[name]
        except (KeyError, TypeError):
            raise UserError(unknown_name_message(self.kind, str(name), self._items,
                                                 self.hint)) from None

    def unregister(self, name: str) -> None:
        self._items.pop(name, None)

    def __getitem__(self, name: str) -> T:
        return self._items[name]

    def __contains__(self, name) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def keys(self):
        return self._items.keys()

    def values(self):
        return self._items.values()

    def items(self):
        return self._items.items()
