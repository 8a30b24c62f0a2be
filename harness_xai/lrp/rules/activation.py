"""Identity rule for elementwise activations (SiLU, GELU, tanh soft-caps).

For ``y = f(x)`` the rule passes relevance straight through: ``R_x = R_y``. As a modified gradient:
``∂̃y/∂x = f(x)/x`` instead of ``f'(x)`` (so ``x · ∂̃y/∂x · g = y · g``); at ``x = 0`` the ratio is
set to 0, where ``x · ratio = 0`` either way.
"""

from __future__ import annotations

import torch

from harness_xai.lrp.gradtricks import with_grad_ratio


def identity_activation(x: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """``value = f(x)`` with gradient ``f(x)/x`` (guarded at 0)."""
    with torch.no_grad():
        ratio = torch.where(x != 0, value / x, 0.0)  # (…,) f(x)/x; the 0/0 lanes are replaced
    return with_grad_ratio(x, value, ratio)
