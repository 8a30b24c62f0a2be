"""Uniform rule for elementwise products of two inputs (SwiGLU / GeGLU ``act(gate) ⊙ up``).

For ``y = a ⊙ b`` the relevance is split evenly: ``R_a = R_b = R_y / 2``. As a modified gradient
each factor's gradient is halved: ``∂̃y/∂a = b / 2``, ``∂̃y/∂b = a / 2``. Applied by halving the
gradient of each factor before the product, so the model's own ``a * b`` stays untouched.
"""

from __future__ import annotations

import torch

from harness_xai.lrp.gradtricks import scale_grad

HALF = 0.5


def uniform_factor(t: torch.Tensor) -> torch.Tensor:
    """One factor of a two-input product: value ``t``, gradient ``½ ∂/∂t``."""
    return scale_grad(t, HALF)
