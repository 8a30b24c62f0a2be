"""GPT-NeoX (Pythia): parallel residual ``h + attn(ln1(h)) + mlp(ln2(h))`` (or sequential when
``use_parallel_residual`` is off), partial rotary, LayerNorm with bias, GELU MLP, biases
everywhere, fused ``query_key_value`` projection.

Rules: LayerNorm ``y = w ⊙ (x − mean x)/σ(x) + b`` → identity rule ``1/σ`` constant (centering
and ``w`` stay linear, ``b`` absorbs relevance); GELU → identity rule ``f(x)/x``; no gated
product; the fused projection and the residual sums are linear (plain gradient); attention →
the method's rule on q/k/v after the split (rotary on part of the head dim is linear).
"""

from __future__ import annotations

from torch import nn

from harness_xai.lrp.adapters import Adapter, register_adapter
from harness_xai.lrp.rules.norm import layer_norm_identity


def _norm_rule(module, x, value):
    return layer_norm_identity(x, module.weight, module.bias, module.eps, value)


ADAPTER = register_adapter(Adapter(
    family="gpt_neox",
    model_types=("gpt_neox",),
    blocks=lambda model: model.gpt_neox.layers,
    norms=lambda model: [m for m in model.modules() if isinstance(m, nn.LayerNorm)],
    norm_rule=_norm_rule,
    activations=lambda model: [(b.mlp.act, None) for b in model.gpt_neox.layers],
    # parallel residual: no state between attention and MLP (both read the block input)
    mid_input=lambda block: None if block.use_parallel_residual else block.post_attention_layernorm,
    attn_output=lambda block: block.attention,
    head_input=lambda block: block.attention.dense,
))
