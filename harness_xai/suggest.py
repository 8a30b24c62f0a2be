""""Did you mean …" answers for registries (methods, model families)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def unknown_name_message(kind: str, name: str, known: Iterable[str], hint: str = "") -> str:
    """One line: ``unknown {kind} 'x': did you mean 'y'? supported: a, b, c``."""
    known = sorted(known)
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.5)
    guess = f" did you mean '{close[0]}'?" if close else ""
    tail = f" {hint}" if hint else ""
    return f"unsupported {kind} '{name}':{guess} supported: {', '.join(known)}.{tail}"
