"""Identity rule for tanh soft-caps ``f(s) = c · tanh(s / c)`` (Gemma 2 attention and final logits).

The cap is an elementwise activation, so it gets the identity rule: ``R_s = R_f(s)``, i.e.
``∂̃f/∂s = f(s)/s`` instead of ``1 − tanh²(s/c)``. Because ``s ↦ s/c`` and ``· c`` are linear, the
same ratio results from putting the identity rule on the ``tanh`` alone: ``tanh(u)/u`` with ``u = s/c``.

1. Attention logits: the cap runs inside the family's eager kernel. ``IdentityTanh()`` is a
   ``TorchFunctionMode`` entered only around that one kernel call; it gives every ``torch.tanh``
   there the identity rule (forward value bit-exact), leaving the kernel's code unchanged.
2. Final logits: ``capped_logits(z, c)`` recomputes the model's own ``tanh(z / c) · c`` (same ops,
   same order, so bit-exact) with the identity-rule gradient; the patch applies it to the LM head's
   output while the config's cap is switched off for the duration of the block.
"""

from __future__ import annotations

import torch
from torch.overrides import TorchFunctionMode

from harness_xai.lrp.rules.activation import identity_activation

_TANH = (torch.tanh, torch.Tensor.tanh, torch.nn.functional.tanh)


class IdentityTanh(TorchFunctionMode):
    """Within the block, ``tanh(u)`` keeps its value and gets the gradient ``tanh(u)/u``."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _TANH and len(args) == 1 and not kwargs:
            with torch.no_grad():
                value = func(args[0])
            return identity_activation(args[0], value)
        return func(*args, **kwargs)


def capped_logits(logits: torch.Tensor, cap: float) -> torch.Tensor:
    """``tanh(logits / cap) · cap`` with the identity-rule gradient ``f(z)/z``."""
    with torch.no_grad():
        value = torch.tanh(logits / cap) * cap
    return identity_activation(logits, value)
