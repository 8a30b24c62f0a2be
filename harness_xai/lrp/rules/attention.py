"""Attention rules: AttnLRP (uniform rule on both matmuls) and CP-LRP (attention weights constant).

Attention is ``O = softmax(Q Kᵀ · s + M) V``.
1. AttnLRP: the bilinear matmuls ``Q Kᵀ`` and ``A V`` each get the uniform rule (each factor's
   gradient halved); the softmax keeps its true gradient (grad × input through the softmax equals
   AttnLRP's softmax rule). Net effect: ``∂̃/∂Q = ¼ ∂/∂Q``, ``∂̃/∂K = ¼ ∂/∂K``, ``∂̃/∂V = ½ ∂/∂V``.
2. CP-LRP: ``A`` is a constant, so ``O`` is linear in ``V``: ``∂̃/∂Q = ∂̃/∂K = 0``, ``∂̃/∂V = ∂/∂V``.
Only the gradients of q, k, v are rescaled, so any attention kernel (SDPA, flash, eager) is used
unchanged for the forward and backward of the softmax and the matmuls.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from harness_xai.lrp.gradtricks import scale_grad


@dataclass(frozen=True)
class QKVScales:
    """Gradient scales applied to (query, key, value) before the attention kernel."""

    q: float
    k: float
    v: float

    def apply(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        return scale_grad(q, self.q), scale_grad(k, self.k), scale_grad(v, self.v)


ATTNLRP = QKVScales(q=0.25, k=0.25, v=0.5)
CP_LRP = QKVScales(q=0.0, k=0.0, v=1.0)
