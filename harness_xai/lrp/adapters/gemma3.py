"""Gemma 3 loaded as the multimodal ``Gemma3ForConditionalGeneration`` (Gemma 3 ≥ 4B): a SigLIP
vision tower and projector in front of the Gemma 3 text model
(``model.model.language_model``), with the LM head on the wrapper.

What is explained: the language model on text input, exactly as lm-eval's ``hf`` model calls it
(``input_ids`` only: no ``pixel_values``, no ``token_type_ids``, so the vision tower never runs
and the mask is the text model's causal / sliding-window mask). The wrapper applies no final
logit soft-cap (unlike ``Gemma3ForCausalLM``), so Δℓ is on the raw logits.

Rules (as for ``gemma3_text``, on the language model's modules only): RMSNorm
``(1 + w) ⊙ x / rms(x)`` (block sandwich norms, ``q_norm``/``k_norm``, final norm) → identity
rule; GELU-tanh → identity rule; ``gelu(gate) ⊙ up`` → the method's product rule; attention →
the method's rule on q/k/v. Embeddings are scaled by ``√d`` inside the embedding module.
A case whose input holds image tokens is not attributed: the text-only call never fills them.
"""

from __future__ import annotations

from harness_xai.lrp.adapters import Adapter, register_adapter
from harness_xai.lrp.rules.norm import rms_norm_identity


def _language_model(model):
    return model.model.language_model


def _norm_rule(module, x, value):
    return rms_norm_identity(x, module.weight, module.eps, value, offset=1.0)


ADAPTER = register_adapter(Adapter(
    family="gemma3",
    model_types=("gemma3",),
    blocks=lambda model: _language_model(model).layers,
    norms=lambda model: [m for m in _language_model(model).modules()
                         if type(m).__name__ == "Gemma3RMSNorm"],
    norm_rule=_norm_rule,
    activations=lambda model: [(b.mlp.act_fn, b.mlp.up_proj)
                               for b in _language_model(model).layers],
    mid_input=lambda block: block.pre_feedforward_layernorm,
    attn_output=lambda block: block.post_attention_layernorm,
    mlp_output=lambda block: block.post_feedforward_layernorm,
))
