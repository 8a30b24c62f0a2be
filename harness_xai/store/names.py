"""A short, readable model name for ``runs.model_name``.

``runs.pretrained`` holds what lm-eval was given: a hub id (``EleutherAI/pythia-160m``) or a
local path (``/home/me/zoo/llama-s``, ``zoo/llama-m/step200``). Tables and legends need a name
that tells models apart at a glance:

- a hub id (``org/name``: one slash, no leading ``/ . ~``, not an existing local directory) is
  kept whole;
- a local path gives its directory name; a checkpoint directory (``step200``,
  ``checkpoint-1000``, ``global_step500``, ``main``) gives its parent's name, since the
  checkpoint is stored on its own (``runs.step``, ``runs.revision``);
- anything else (a bare name) is kept as is.

Migration 0006 freezes a copy of this rule for its backfill of older rows.
"""

from __future__ import annotations

import os
import re

_CHECKPOINT_DIR = re.compile(r"^(step[-_]?\d+|checkpoint[-_]\d+|global[-_]?step[-_]?\d+|main)$",
                             re.IGNORECASE)


def short_model_name(pretrained: str | None) -> str | None:
    """The display name of a model given as a hub id or a local path (module docstring)."""
    if pretrained is None:
        return None
    name = str(pretrained).strip()
    if not name:
        return None
    parts = [p for p in re.split(r"[\\/]+", name) if p]
    if not parts:
        return name
    local = (name.startswith(("/", ".", "~", "\\")) or len(parts) != 2
             or bool(re.match(r"^[A-Za-z]:", name)) or os.path.isdir(name))
    if not local:
        return "/".join(parts)  # hub id
    while len(parts) > 1 and _CHECKPOINT_DIR.match(parts[-1]):
        parts.pop()
    return parts[-1]
