"""Two primitives that change a tensor's gradient while keeping its forward value bit-exact.

Every LRP rule in ``rules/`` is written with these, so patched forwards equal unpatched ones
exactly (``t - t.detach()`` is exactly zero, so the added term never changes the value).
"""

from __future__ import annotations

import torch


def scale_grad(t: torch.Tensor, s: float) -> torch.Tensor:
    """Value ``t``; gradient ``s · ∂/∂t`` (``s = 0`` detaches)."""
    if s == 1.0:
        return t
    if s == 0.0:
        return t.detach()
    return t.detach() + s * (t - t.detach())


def with_grad_of(value: torch.Tensor, surrogate: torch.Tensor) -> torch.Tensor:
    """Value of ``value`` (computed without a graph); gradient of ``surrogate``.

    ``surrogate`` must equal ``value`` up to rounding: it is the same function written so that
    autograd produces the rule's gradient (e.g. with a normaliser detached).
    """
    return value.detach() + (surrogate - surrogate.detach())
