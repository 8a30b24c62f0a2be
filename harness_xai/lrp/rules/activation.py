"""Identity rule for elementwise activations (SiLU, GELU, tanh soft-caps).

For ``y = f(x)`` the rule passes relevance straight through: ``R_x = R_y``. As a modified gradient:
``∂̃y/∂x = f(x)/x`` instead of ``f'(x)`` (so ``x · ∂̃y/∂x · g = y · g``); at ``x = 0`` the ratio is
set to 0, where ``x · ratio = 0`` either way.
"""

from __future__ import annotations

import torch

from harness_xai.lrp.gradtricks import with_grad_of


def identity_activation(x: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """``value = f(x)`` with gradient ``f(x)/x`` (guarded at 0)."""
    nonzero = x != 0
    ratio = torch.where(nonzero, value / torch.where(nonzero, x, torch.ones_like(x)),
                        torch.zeros_like(x)).detach()
    return with_grad_of(value, x * ratio)
