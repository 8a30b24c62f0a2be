"""Identity rule for normalisation layers (LayerNorm, RMSNorm, q_norm/k_norm).

The normaliser ``1/σ(x)`` is treated as a constant, so the layer is linear in ``x`` and relevance
passes through it unchanged (for bias-free norms, Σ R_in = Σ R_out).
"""

from __future__ import annotations

import torch

from harness_xai.lrp.gradtricks import with_grad_of


def rms_norm_identity(x: torch.Tensor, weight: torch.Tensor, eps: float, value: torch.Tensor,
                      offset: float = 0.0) -> torch.Tensor:
    """RMSNorm ``y = (w + offset) ⊙ x / sqrt(mean(x²) + eps)`` with ``1/sqrt(·)`` a constant.

    Backward: ``∂̃y/∂x = diag((w + offset) / sqrt(mean(x²) + eps))``. ``value`` is the layer's
    own forward output, returned bit-exact.
    """
    xf = x.float()  # (…, d)
    inv_rms = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps).detach()  # (…, 1)
    surrogate = (weight.float() + offset) * (xf * inv_rms)
    return with_grad_of(value, surrogate.to(value.dtype))


def layer_norm_identity(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                        eps: float, value: torch.Tensor) -> torch.Tensor:
    """LayerNorm ``y = w ⊙ (x − mean(x)) / sqrt(var(x) + eps) + b`` with ``1/sqrt(·)`` a constant.

    Mean-centering and the elementwise weight stay linear; the bias absorbs relevance.
    """
    xf = x.float()  # (…, d)
    centred = xf - xf.mean(-1, keepdim=True)
    inv_std = torch.rsqrt(centred.pow(2).mean(-1, keepdim=True) + eps).detach()  # (…, 1)
    surrogate = centred * inv_std
    if weight is not None:
        surrogate = surrogate * weight.float()
    if bias is not None:
        surrogate = surrogate + bias.float()
    return with_grad_of(value, surrogate.to(value.dtype))
