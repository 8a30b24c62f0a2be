"""Llama family (Llama 1–3, Mistral, Qwen2): pre-norm blocks, RMSNorm, SwiGLU MLP, RoPE.

Rules: RMSNorm → identity rule; ``act_fn`` (SiLU) → identity rule; ``act(gate) ⊙ up`` → uniform
rule (both factors); attention → the method's attention rule via the registry hook.
"""

from __future__ import annotations

from harness_xai.lrp.adapters import Adapter, register_adapter
from harness_xai.lrp.rules.norm import rms_norm_identity


def _norm_rule(module, x, value):
    return rms_norm_identity(x, module.weight, module.variance_epsilon, value)


ADAPTER = register_adapter(Adapter(
    family="llama",
    model_types=("llama", "mistral", "qwen2"),
    blocks=lambda model: model.model.layers,
    norms=lambda model: [m for m in model.modules() if type(m).__name__.endswith("RMSNorm")],
    norm_rule=_norm_rule,
    activations=lambda model: [(b.mlp.act_fn, b.mlp.up_proj) for b in model.model.layers],
))
