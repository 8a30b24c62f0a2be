"""Qwen3: Llama layout plus per-head ``q_norm``/``k_norm`` RMSNorms before RoPE.

Rules: every RMSNorm (block norms, final norm, ``q_norm``, ``k_norm``) → identity rule
``∂̃y/∂x = diag(w / rms(x))`` (``rms`` constant); SiLU → identity rule ``f(x)/x``;
``silu(gate) ⊙ up`` → uniform rule (each factor's gradient ½); attention → the method's rule.
"""

from __future__ import annotations

from harness_xai.lrp.adapters import Adapter, register_adapter
from harness_xai.lrp.rules.norm import rms_norm_identity


def _norm_rule(module, x, value):
    return rms_norm_identity(x, module.weight, module.variance_epsilon, value)


ADAPTER = register_adapter(Adapter(
    family="qwen3",
    model_types=("qwen3",),
    blocks=lambda model: model.model.layers,
    # q_norm/k_norm are Qwen3RMSNorm over head_dim: the suffix match includes them
    norms=lambda model: [m for m in model.modules() if type(m).__name__.endswith("RMSNorm")],
    norm_rule=_norm_rule,
    activations=lambda model: [(b.mlp.act_fn, b.mlp.up_proj) for b in model.model.layers],
))
