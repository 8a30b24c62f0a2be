"""OLMo 3: the OLMo 2 block (post-norms ``h + norm(attn(h))``, RMSNorm ``q_norm``/``k_norm`` over
the whole q/k projections, SwiGLU MLP) with sliding-window attention in three of every four
layers (``config.layer_types``) and one RoPE table per layer type.

Rules: every RMSNorm → identity rule ``∂̃y/∂x = diag(w / rms(x))``; SiLU → identity rule
``f(x)/x``; ``silu(gate) ⊙ up`` → the method's product rule; attention → the method's rule on
q/k/v through the registry hook, which receives each layer's own window and mask unchanged (the
window only masks keys, so no rule changes with it).
"""

from __future__ import annotations

from harness_xai.lrp.adapters import Adapter, register_adapter
from harness_xai.lrp.rules.norm import rms_norm_identity


def _norm_rule(module, x, value):
    return rms_norm_identity(x, module.weight, module.variance_epsilon, value)


ADAPTER = register_adapter(Adapter(
    family="olmo3",
    model_types=("olmo3",),
    blocks=lambda model: model.model.layers,
    norms=lambda model: [m for m in model.modules() if type(m).__name__ == "Olmo3RMSNorm"],
    norm_rule=_norm_rule,
    activations=lambda model: [(b.mlp.act_fn, b.mlp.up_proj) for b in model.model.layers],
    mid_input=lambda block: block.mlp,
    attn_output=lambda block: block.post_attention_layernorm,
    mlp_output=lambda block: block.post_feedforward_layernorm,
))
