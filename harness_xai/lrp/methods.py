"""Attribution methods: one registry, one name each (``--xai-method``, ``attribute(method=…)``).

A method says which rules the scoped patch installs:
- ``attnlrp``: identity rule on norms and activations, uniform rule on gated products and on both
  attention matmuls (Achtibat et al., ICML 2024).
- ``cp-lrp``: as attnlrp, but attention weights are constants (q, k detached); exactly
  conservative on bias-free models: Σ_i R(i) = Δℓ.
- ``grad-x-input``: the plain gradient, no rule changed (baseline).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from harness_xai.errors import UserError
from harness_xai.lrp.rules.attention import ATTNLRP, CP_LRP, QKVScales
from harness_xai.suggest import unknown_name_message


@dataclass(frozen=True)
class Method:
    name: str
    description: str
    attention: QKVScales | None  # None: attention keeps its true gradient
    layer_rules: bool  # identity rule on norms/activations, uniform rule on gated products
    params: dict = field(default_factory=dict)


METHODS: dict[str, Method] = {}


def register_method(method: Method) -> Method:
    METHODS[method.name] = method
    return method


register_method(Method("attnlrp", "AttnLRP rules as modified gradients", ATTNLRP, True,
                       {"qk_grad_scale": ATTNLRP.q, "v_grad_scale": ATTNLRP.v, "epsilon": 0.0}))
register_method(Method("cp-lrp", "LRP with attention weights held constant", CP_LRP, True,
                       {"qk_grad_scale": CP_LRP.q, "v_grad_scale": CP_LRP.v, "epsilon": 0.0}))
register_method(Method("grad-x-input", "plain gradient times input", None, False, {}))


def get_method(name: str) -> Method:
    """The registered method ``name``; unknown names get a one-line "did you mean" error."""
    try:
        return METHODS[name]
    except KeyError:
        raise UserError(unknown_name_message("attribution method", name, METHODS,
                                             "Pass one of them to --xai-method.")) from None
