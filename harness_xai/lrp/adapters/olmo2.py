"""OLMo 2: norms *after* attention and MLP (``h + norm(attn(h))``), no pre-norms, RMSNorm
``q_norm``/``k_norm`` over the full q/k projections (all heads at once), SwiGLU MLP, RoPE.

Rules: every RMSNorm → identity rule ``∂̃y/∂x = diag(w / rms(x))`` (``rms`` constant, computed
over the full projection for ``q_norm``/``k_norm``, as the model does); SiLU → identity rule
``f(x)/x``; ``silu(gate) ⊙ up`` → uniform rule (½ each); attention → the method's rule.
"""

from __future__ import annotations

from harness_xai.lrp.adapters import Adapter, register_adapter
from harness_xai.lrp.rules.norm import rms_norm_identity


def _norm_rule(module, x, value):
    return rms_norm_identity(x, module.weight, module.variance_epsilon, value)


ADAPTER = register_adapter(Adapter(
    family="olmo2",
    model_types=("olmo2",),
    blocks=lambda model: model.model.layers,
    norms=lambda model: [m for m in model.modules() if type(m).__name__ == "Olmo2RMSNorm"],
    norm_rule=_norm_rule,
    activations=lambda model: [(b.mlp.act_fn, b.mlp.up_proj) for b in model.model.layers],
    # post-norms: the branches are the norm outputs; mid (no pre-norm) is the MLP's own input
    mid_input=lambda block: block.mlp,
    attn_output=lambda block: block.post_attention_layernorm,
    mlp_output=lambda block: block.post_feedforward_layernorm,
))
