"""Checkpoint revision names of public training series → (stage, step, tokens seen).

Recognised forms (case-insensitive, the whole name):

    [stage<S>-][ingredient<I>-]step[-]<N>[-tokens<T>[K|M|B|T]]

which covers Pythia ``step143000``, OLMo ``stage1-step1000-tokens5B`` and
``stage2-ingredient1-step11931-tokens100B``, OLMoE ``step1200000-tokens5033B`` and SmolLM3
``stage1-step-40000``. ``tokens`` is a count (``5B`` → 5e9). Any other name (``main``, a commit
hash, ``v1.0``) is kept as an unknown revision: ``known`` is False, it has no stage/step, and
``order`` keeps such names in the order they were given, after the known ones, with a note.

Order of a series: by ``(stage, ingredient, step)`` (a missing stage or ingredient counts as 0),
so a later stage follows every step of an earlier one (OLMo's stage 2 restarts its step count).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

_NAME = re.compile(r"(?:stage(?P<stage>\d+)-)?(?:ingredient(?P<ingredient>\d+)-)?"
                   r"step-?(?P<step>\d+)"
                   r"(?:-tokens(?P<tokens>\d+(?:\.\d+)?)(?P<unit>[kmbt])?)?", re.IGNORECASE)
_UNITS = {None: 1.0, "k": 1e3, "m": 1e6, "b": 1e9, "t": 1e12}


@dataclass(frozen=True)
class Checkpoint:
    """One revision name, parsed."""

    name: str
    stage: int | None = None
    ingredient: int | None = None
    step: int | None = None
    tokens: float | None = None  # tokens seen, a count
    known: bool = False

    @property
    def sort_key(self) -> tuple[int, int, int]:
        return (self.stage or 0, self.ingredient or 0, self.step or 0)

    def describe(self) -> str:
        """Short label: ``stage 2 · step 11931 · 100B tokens`` (the name itself when unknown)."""
        if not self.known:
            return self.name
        parts = [f"stage {self.stage}"] if self.stage is not None else []
        if self.ingredient is not None:
            parts.append(f"ingredient {self.ingredient}")
        parts.append(f"step {self.step}")
        if self.tokens is not None:
            parts.append(f"{format_tokens(self.tokens)} tokens")
        return " · ".join(parts)


def parse_revision(name: str | None) -> Checkpoint:
    """The parsed revision ``name`` (unknown forms: ``known=False``, nothing else set)."""
    name = "" if name is None else str(name)
    match = _NAME.fullmatch(name.strip())
    if not match:
        return Checkpoint(name=name)
    g = match.groupdict()
    tokens = None
    if g["tokens"] is not None:
        tokens = float(g["tokens"]) * _UNITS[(g["unit"] or "").lower() or None]
    return Checkpoint(name=name, stage=_int(g["stage"]), ingredient=_int(g["ingredient"]),
                      step=int(g["step"]), tokens=tokens, known=True)


def order(names: Iterable[str]) -> tuple[list[Checkpoint], str | None]:
    """Checkpoints sorted by (stage, ingredient, step); unknown names after them in the order
    given, with a note naming them (None when every name was understood)."""
    parsed = [parse_revision(n) for n in names]
    known = sorted((c for c in parsed if c.known), key=lambda c: c.sort_key)
    unknown = [c for c in parsed if not c.known]
    note = None
    if unknown:
        note = (f"revision names not understood as training checkpoints "
                f"({', '.join(repr(c.name) for c in unknown)}): kept in the order given")
    return known + unknown, note


def format_tokens(count: float) -> str:
    """``5e9`` → ``5B``, ``5.033e12`` → ``5.03T``."""
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if count >= scale:
            return f"{count / scale:.3g}{unit}"
    return f"{count:.3g}"


def _int(value: str | None) -> int | None:
    return None if value is None else int(value)
