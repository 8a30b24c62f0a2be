"""SmolLM3: the Llama block (pre-norm RMSNorm, SwiGLU MLP, grouped-query attention) where every
``no_rope_layer_interval``-th layer has no rotary embedding (NoPE: ``attn.use_rope`` is False),
optionally with sliding-window layers.

Rules: RMSNorm → identity rule ``diag(w / rms(x))``; SiLU → identity rule ``f(x)/x``;
``silu(gate) ⊙ up`` → the method's product rule; attention → the method's rule on q/k/v (RoPE
is linear, so a layer without it needs no other rule).
"""

from __future__ import annotations

from harness_xai.lrp.adapters import Adapter, register_adapter
from harness_xai.lrp.rules.norm import rms_norm_identity


def _norm_rule(module, x, value):
    return rms_norm_identity(x, module.weight, module.variance_epsilon, value)


ADAPTER = register_adapter(Adapter(
    family="smollm3",
    model_types=("smollm3",),
    blocks=lambda model: model.model.layers,
    norms=lambda model: [m for m in model.modules() if type(m).__name__ == "SmolLM3RMSNorm"],
    norm_rule=_norm_rule,
    activations=lambda model: [(b.mlp.act_fn, b.mlp.up_proj) for b in model.model.layers],
))
