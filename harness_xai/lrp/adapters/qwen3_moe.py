"""Qwen3-MoE: the Qwen3 block (pre-norm RMSNorm, per-head ``q_norm``/``k_norm``) whose MLP is a
routed mixture of SwiGLU experts ``y_t = Σ_{e ∈ top-k(x_t)} w_e(x_t) · E_e(x_t)`` (``w``: softmax
over all experts, top-k, renormalised if ``norm_topk_prob``), except the layers listed in
``mlp_only_layers`` / off the ``decoder_sparse_step`` grid, which keep a dense SwiGLU MLP.

Rules: RMSNorm (block, final, q/k norms) → identity rule; attention → the method's rule on
q/k/v; dense MLPs → identity rule on SiLU, the method's product rule. Routed experts
(``harness_xai.lrp.rules.moe``): selection and router weights ``w`` constant, relevance through
the selected experts' outputs in proportion to ``w_e · E_e(x_t)``, ``Σ_e R(w_e E_e) = R(y)``;
inside each expert the dense MLP's rules. LXT's qwen3_moe map instead gives ``w · E`` the
uniform rule (half of each expert's relevance to the router logits); here the router gets none.
"""

from __future__ import annotations

from harness_xai.lrp.adapters import Adapter, register_adapter
from harness_xai.lrp.rules.moe import swiglu_expert
from harness_xai.lrp.rules.norm import rms_norm_identity


def _norm_rule(module, x, value):
    return rms_norm_identity(x, module.weight, module.variance_epsilon, value)


def _experts(block):
    return getattr(block.mlp, "experts", None)


ADAPTER = register_adapter(Adapter(
    family="qwen3_moe",
    model_types=("qwen3_moe",),
    blocks=lambda model: model.model.layers,
    norms=lambda model: [m for m in model.modules() if type(m).__name__ == "Qwen3MoeRMSNorm"],
    norm_rule=_norm_rule,
    activations=lambda model: [(b.mlp.act_fn, b.mlp.up_proj) for b in model.model.layers
                               if _experts(b) is None],
    experts=_experts,
    expert_fn=swiglu_expert,
))
