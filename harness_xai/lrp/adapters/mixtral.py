"""Mixtral: the Llama/Mistral block (pre-norm RMSNorm, grouped-query attention, optional
sliding window) whose MLP is a routed mixture of SwiGLU experts,
``y_t = Σ_{e ∈ top-k(x_t)} w_e(x_t) · E_e(x_t)``, ``w = renormalised softmax(router(x_t))``
over the top-k.

Rules: RMSNorm → identity rule; attention → the method's rule on q/k/v. Experts
(``harness_xai.lrp.rules.moe``): top-k selection and router weights ``w`` constant, so relevance
flows only through the selected experts' outputs, in proportion to ``w_e · E_e(x_t)`` (ε-rule on
the sum), ``Σ_e R(w_e E_e) = R(y)``; inside each expert SiLU → identity rule and
``silu(gate) ⊙ up`` → the method's product rule (CP-LRP: gate constant). The router gets no
relevance: it only selects and weighs (see the rule module for why this, and not LXT's uniform
rule on ``w · E``).
"""

from __future__ import annotations

from harness_xai.lrp.adapters import Adapter, register_adapter
from harness_xai.lrp.rules.moe import swiglu_expert
from harness_xai.lrp.rules.norm import rms_norm_identity


def _norm_rule(module, x, value):
    return rms_norm_identity(x, module.weight, module.variance_epsilon, value)


ADAPTER = register_adapter(Adapter(
    family="mixtral",
    model_types=("mixtral",),
    blocks=lambda model: model.model.layers,
    norms=lambda model: [m for m in model.modules() if type(m).__name__ == "MixtralRMSNorm"],
    norm_rule=_norm_rule,
    activations=lambda model: [],  # every MLP is routed: the expert rule covers it
    experts=lambda block: block.mlp.experts,
    expert_fn=swiglu_expert,
))
