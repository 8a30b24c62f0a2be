"""gpt-oss: pre-norm blocks (RMSNorm), attention with biases, learned per-head attention sinks
and sliding-window layers, and a routed mixture of experts with biases in every layer.

Router: ``w = softmax(top-k(W_r x + b_r))`` (softmax over the selected logits). Expert ``e``
(weights stored transposed, gate/up interleaved): ``[g; u] = W_gu[e]ᵀ x + b_gu[e]``,
``g' = min(g, L)``, ``u' = clamp(u, −L, L)``, ``E_e(x) = W_d[e]ᵀ ((u' + 1) ⊙ g'·σ(α g')) + b_d[e]``.

Rules: RMSNorm → identity rule; attention → the method's rule on q/k/v: the sink is a learned
constant logit in the softmax's normaliser (``a_ij = exp s_ij / (Σ_k exp s_ik + exp sink)``), so
with the softmax's true gradient the sink takes its share of the softmax relevance like the
AttnLRP softmax rule's deficit, and CP-LRP (weights constant) is unchanged by it. Routed experts
(``harness_xai.lrp.rules.moe``): selection and router weights constant, relevance through the
selected experts' outputs in proportion to ``w_e · E_e(x)``. Inside an expert: the clamps and
``g·σ(α g)`` are elementwise activations → identity rule ``f(x)/x``; ``u' + 1`` is a bias (ε-rule:
the 1 absorbs relevance); ``(u' + 1) ⊙ glu`` → the method's product rule (CP-LRP: ``glu``
constant, the value branch ``u'`` takes all); biases absorb relevance. Not conservative (biases).
"""

from __future__ import annotations

import torch

from harness_xai.lrp.adapters import Adapter, register_adapter
from harness_xai.lrp.rules.moe import gated_product
from harness_xai.lrp.rules.norm import rms_norm_identity


def _norm_rule(module, x, value):
    return rms_norm_identity(x, module.weight, module.variance_epsilon, value)


def _expert_fn(mode: str):
    from harness_xai.lrp.rules.activation import identity_activation

    def act(value_fn):  # an elementwise map under the mode's rule (identity unless plain)
        def apply(x):
            if mode == "plain":
                return value_fn(x)
            with torch.no_grad():
                value = value_fn(x)
            return identity_activation(x, value)
        return apply

    def run(experts, e, x):
        gate_up = x @ experts.gate_up_proj[e] + experts.gate_up_proj_bias[e]
        gate, up = gate_up[..., ::2], gate_up[..., 1::2]
        limit, alpha = experts.limit, experts.alpha
        gate = act(lambda t: t.clamp(min=None, max=limit))(gate)
        up = act(lambda t: t.clamp(min=-limit, max=limit))(up)
        hidden = gated_product(lambda g: g * torch.sigmoid(g * alpha), gate, up + 1, mode)
        return hidden @ experts.down_proj[e] + experts.down_proj_bias[e]
    return run


ADAPTER = register_adapter(Adapter(
    family="gpt_oss",
    model_types=("gpt_oss",),
    blocks=lambda model: model.model.layers,
    norms=lambda model: [m for m in model.modules() if type(m).__name__ == "GptOssRMSNorm"],
    norm_rule=_norm_rule,
    activations=lambda model: [],
    experts=lambda block: block.mlp.experts,
    expert_fn=_expert_fn,
))
