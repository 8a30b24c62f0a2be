"""Granite: the Llama block with four constant multipliers,
``h₀ = m_emb · E[ids]``, ``h' = h + m_res · attn(norm(h))`` (and the same for the MLP),
attention scores ``m_att · q·k`` (instead of ``1/√d``), ``logits = head(norm(h_L)) / s_logit``.

Rules: the multipliers are multiplications by constants — linear maps with no bias — so the
plain gradient is the ε-rule there and relevance passes them unchanged (``x · m · g = (m x) · g``):
no instance patch is needed and the patched forward is the model's own. RMSNorm → identity rule;
SiLU → identity rule; ``silu(gate) ⊙ up`` → the method's product rule; attention → the method's
rule on q/k/v (``m_att`` reaches the kernel as its ``scaling``). Token relevance is that of the
unscaled embeddings ``E[ids]`` (equal to that of ``m_emb · E[ids]``); the ``attn``/``mlp``
states are the branches before ``m_res`` (same relevance as after it).
"""

from __future__ import annotations

from harness_xai.lrp.adapters import Adapter, register_adapter
from harness_xai.lrp.rules.norm import rms_norm_identity


def _norm_rule(module, x, value):
    return rms_norm_identity(x, module.weight, module.variance_epsilon, value)


ADAPTER = register_adapter(Adapter(
    family="granite",
    model_types=("granite",),
    blocks=lambda model: model.model.layers,
    norms=lambda model: [m for m in model.modules() if type(m).__name__ == "GraniteRMSNorm"],
    norm_rule=_norm_rule,
    activations=lambda model: [(b.mlp.act_fn, b.mlp.up_proj) for b in model.model.layers],
))
