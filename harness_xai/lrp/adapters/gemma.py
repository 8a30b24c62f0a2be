"""Gemma 2 and Gemma 3 (text): sandwich norms (pre- and post-norm around attention and MLP),
RMSNorm scaled by ``(1 + w)``, GeGLU MLP with GELU-tanh, tanh soft-caps; Gemma 3 adds
``q_norm``/``k_norm`` (per head) and mixes sliding-window and full attention layers.

Rules:
- RMSNorm ``y = (1 + w) ⊙ x / rms(x)`` → identity rule ``∂̃y/∂x = diag((1 + w) / rms(x))``.
- GELU-tanh → identity rule ``f(x)/x``; ``gelu(gate) ⊙ up`` → uniform rule (½ each).
- Attention-logit soft-cap ``c·tanh(s/c)`` (Gemma 2, eager kernel only: transformers refuses it
  with SDPA) → identity rule ``f(s)/s``, applied by the attention hook around the eager kernel.
- Final-logit soft-cap ``c·tanh(z/c)`` → identity rule. Δℓ is the difference of the *capped*
  logits the model outputs; since ``z · f(z)/z = f(z)``, CP-LRP still conserves that Δℓ.
- Embeddings are scaled by ``√d`` inside the embedding module, so relevance is on scaled vectors.
"""

from __future__ import annotations

from harness_xai.lrp.adapters import Adapter, register_adapter
from harness_xai.lrp.rules.norm import rms_norm_identity


def _norm_rule(module, x, value):
    return rms_norm_identity(x, module.weight, module.eps, value, offset=1.0)


ADAPTER = register_adapter(Adapter(
    family="gemma",
    model_types=("gemma2", "gemma3_text"),
    blocks=lambda model: model.model.layers,
    norms=lambda model: [m for m in model.modules() if type(m).__name__ in
                         ("Gemma2RMSNorm", "Gemma3RMSNorm")],
    norm_rule=_norm_rule,
    activations=lambda model: [(b.mlp.act_fn, b.mlp.up_proj) for b in model.model.layers],
    logit_softcap="final_logit_softcapping",
    # sandwich norms: the branches are the post-norm outputs, mid is the pre-FFN norm's input
    mid_input=lambda block: block.pre_feedforward_layernorm,
    attn_output=lambda block: block.post_attention_layernorm,
    mlp_output=lambda block: block.post_feedforward_layernorm,
))
