"""OLMoE: pre-norm blocks (RMSNorm), RMSNorm ``q_norm``/``k_norm`` over the whole q/k projections,
and a routed mixture of SwiGLU experts ``y_t = Σ_{e ∈ top-k(x_t)} w_e(x_t) · E_e(x_t)`` in every
layer (``w``: softmax over all experts, top-k, renormalised if ``norm_topk_prob``).

Rules: RMSNorm (incl. q/k norms, ``rms`` over the full projection) → identity rule; attention →
the method's rule on q/k/v. Routed experts (``harness_xai.lrp.rules.moe``): selection and router
weights constant, relevance through the selected experts' outputs in proportion to
``w_e · E_e(x_t)``; inside each expert SiLU → identity rule, ``silu(gate) ⊙ up`` → the method's
product rule. ``clip_qkv`` (clamping q, k, v in place) is refused: a clamp is not one of the
rules here, and the checkpoints published for OLMoE do not set it.
"""

from __future__ import annotations

from harness_xai.errors import UserError
from harness_xai.lrp.adapters import Adapter, register_adapter
from harness_xai.lrp.rules.moe import swiglu_expert
from harness_xai.lrp.rules.norm import rms_norm_identity


def _norm_rule(module, x, value):
    return rms_norm_identity(x, module.weight, module.variance_epsilon, value)


def _check(model):
    if getattr(model.config, "clip_qkv", None) is not None:
        raise UserError(f"OLMoE with clip_qkv={model.config.clip_qkv} clamps q/k/v, which the LRP "
                        "rules do not cover; use a checkpoint with clip_qkv=None.")


ADAPTER = register_adapter(Adapter(
    family="olmoe",
    model_types=("olmoe",),
    blocks=lambda model: model.model.layers,
    norms=lambda model: [m for m in model.modules() if type(m).__name__ == "OlmoeRMSNorm"],
    norm_rule=_norm_rule,
    activations=lambda model: [],
    check=_check,
    experts=lambda block: block.mlp.experts,
    expert_fn=swiglu_expert,
))
