"""Phi-3: Llama-like pre-norm blocks with fused projections: ``qkv_proj`` and ``gate_up_proj``.

MLP: ``G = gate_up_proj(x)``; ``gate, up = G.chunk(2)``; ``y = down_proj(up ⊙ silu(gate))``.
Rules: RMSNorm → identity rule ``diag(w / rms(x))``; SiLU → identity rule ``f(x)/x``; the
product ``up ⊙ silu(gate)`` → uniform rule. Both factors come from chunks of the one Linear's
output, so the rule halves the gradient of all of ``G`` (a product factor) instead of the
activation's output: ``∂̃y/∂up = ½ silu(gate)``, ``∂̃y/∂gate = ½ up · silu(gate)/gate``. The fused
``qkv_proj`` is linear (plain gradient); q/k/v are rescaled after the split by the attention hook.
"""

from __future__ import annotations

from harness_xai.lrp.adapters import Adapter, register_adapter
from harness_xai.lrp.rules.norm import rms_norm_identity


def _norm_rule(module, x, value):
    return rms_norm_identity(x, module.weight, module.variance_epsilon, value)


ADAPTER = register_adapter(Adapter(
    family="phi3",
    model_types=("phi3",),
    blocks=lambda model: model.model.layers,
    norms=lambda model: [m for m in model.modules() if type(m).__name__ == "Phi3RMSNorm"],
    norm_rule=_norm_rule,
    activations=lambda model: [(b.mlp.activation_fn, None) for b in model.model.layers],
    product_factors=lambda model: [b.mlp.gate_up_proj for b in model.model.layers],
))
