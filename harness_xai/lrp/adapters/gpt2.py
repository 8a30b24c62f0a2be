"""GPT-2: pre-norm blocks, learned absolute position embeddings, ``Conv1D`` projections (a
Linear with transposed weight), fused ``c_attn``, LayerNorm with bias, GELU-new MLP.

Rules: LayerNorm → identity rule (``1/σ`` constant; centering, ``w`` linear; ``b`` absorbs
relevance); GELU-new → identity rule ``f(x)/x``; no gated product; Conv1D, the fused ``c_attn``
split and the residual sums are linear (plain gradient); attention → the method's rule on q/k/v.
Token relevance is that of the token embeddings ``wte``; the position embeddings ``wpe`` added
inside the model absorb relevance like a bias.
"""

from __future__ import annotations

from torch import nn

from harness_xai.errors import UserError
from harness_xai.lrp.adapters import Adapter, register_adapter
from harness_xai.lrp.rules.norm import layer_norm_identity


def _norm_rule(module, x, value):
    return layer_norm_identity(x, module.weight, module.bias, module.eps, value)


def _check(model):
    # with eager attention this flag makes GPT-2 bypass the attention registry (own kernel)
    config = model.config
    if config.reorder_and_upcast_attn and config._attn_implementation == "eager":
        raise UserError("GPT-2 with reorder_and_upcast_attn=True and eager attention bypasses "
                        "the LRP attention hook; load it with attn_implementation='sdpa'.")


ADAPTER = register_adapter(Adapter(
    family="gpt2",
    model_types=("gpt2",),
    blocks=lambda model: model.transformer.h,
    norms=lambda model: [m for m in model.modules() if isinstance(m, nn.LayerNorm)],
    norm_rule=_norm_rule,
    activations=lambda model: [(b.mlp.act, None) for b in model.transformer.h],
    check=_check,
    mid_input=lambda block: block.ln_2,
    attn_output=lambda block: block.attn,
    head_input=lambda block: block.attn.c_proj,  # Conv1D; input = concatenated heads
))
