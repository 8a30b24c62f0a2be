"""Attribution methods: one registry, one name each (``--xai-method``, ``attribute(method=…)``).

A method says which rules the scoped patch installs:
- ``attnlrp``: identity rule on norms and activations, uniform rule on gated products and on both
  attention matmuls (Achtibat et al., ICML 2024).
- ``cp-lrp``: CP-LRP as published (Ali et al. 2022; LXT's ``cp_LRP`` maps): attention weights
  are constants (q, k detached) and so is the gate of a gated MLP,
  ``y = act(stop_grad(gate_proj(x))) ⊙ up_proj(x)`` (signal-take-all: the value branch ``up``
  carries all of ``y``'s relevance, the gate branch none, no halving); norms keep the identity
  rule. Exactly conservative on bias-free models: Σ_i R(i) = Δℓ.
- ``cp-lrp-uniform``: the variant harness-xai shipped as ``cp-lrp`` before: attention weights
  constant as in CP-LRP, but gated MLPs keep AttnLRP's rules (identity rule on ``act``, uniform
  rule on ``act(gate) ⊙ up``: half of the relevance through the gate branch). Also exactly
  conservative on bias-free models; it differs from ``cp-lrp`` only on gated-MLP families
  (Llama, Mistral, Qwen, Gemma, OLMo, Phi-3, SmolLM3, Granite), where it gave the best evidence
  recovery on the zoo (bench/README.md).
- ``grad-x-input``: the plain gradient, no rule changed (baseline).
- ``integrated-gradients``: plain gradients averaged along the straight path from a baseline
  to the input embeddings (trapezoid rule over ``steps`` intervals, the path points run as a
  batch, ``batch_size`` rows per pass); Σ relevance ≈ Δℓ(input) − Δℓ(baseline) (completeness),
  with an error that shrinks like 1/steps². Internal states get the same path integral
  (conductance). Costs about ``steps + 1`` forward+backward rows instead of one. Baseline
  ``mean-embedding`` (default): every position gets the mean of all token embeddings;
  ``zero``: all-zero embeddings — a singular point of RMSNorm/LayerNorm (``x/√(mean x² + ε)``
  has gradient ~1/√ε there), so the integrand spikes next to it: measured relative
  completeness error at 64 steps 20 (Llama), 4e5 (Qwen3, q/k norms), 6e12 (Gemma 2) on tiny
  random models, against ≤1.4e-2 with the mean embedding. Δℓ(baseline) is recorded in the
  result's params (``baseline_delta``).

Per-call options (``attribute(…, steps=64)``) override the method's ``params`` named in its
``options``; the result records the merged params.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from harness_xai.errors import UserError
from harness_xai.lrp.rules.attention import ATTNLRP, CP_LRP, QKVScales
from harness_xai.registry import Registry


@dataclass(frozen=True)
class Method:
    name: str
    description: str
    attention: QKVScales | None  # None: attention keeps its true gradient
    layer_rules: bool  # identity rule on norms/activations, a product rule on gated products
    params: dict = field(default_factory=dict)
    integrate: bool = False  # integrated gradients along a path (params: steps, batch_size)
    options: tuple[str, ...] = ()  # params a caller may override per call
    choices: dict = field(default_factory=dict)  # option → allowed values (str options)
    #: rule on a gated product ``act(gate) ⊙ up``: "uniform" (½ to each factor, identity rule on
    #: ``act``) or "constant" (``act(gate)`` a constant: all relevance to ``up``)
    gate: str = "uniform"

    def configure(self, options: dict) -> dict:
        """``params`` with per-call ``options`` applied; unknown names or types → UserError."""
        merged = dict(self.params)
        for key, value in options.items():
            if key not in self.options:
                allowed = ", ".join(self.options) or "none"
                raise UserError(f"method {self.name!r} has no option {key!r} (options: {allowed}).")
            default = self.params[key]
            if isinstance(default, int) and (isinstance(value, bool) or not isinstance(value, int)):
                raise UserError(f"option {key}={value!r} of method {self.name!r} must be an "
                                "integer.")
            if key in self.choices and value not in self.choices[key]:
                raise UserError(f"option {key}={value!r} of method {self.name!r} must be one of "
                                f"{', '.join(self.choices[key])}.")
            merged[key] = value
        if self.integrate and (merged["steps"] < 1 or merged["batch_size"] < 2):
            raise UserError(f"integrated-gradients needs steps >= 1 and batch_size >= 2, got "
                            f"steps={merged['steps']}, batch_size={merged['batch_size']}.")
        return merged


METHODS: Registry[Method] = Registry("attribution method", "Pass one of them to --xai-method.")


def register_method(method: Method, *, overwrite: bool = False) -> Method:
    """Register ``method`` under its name (a taken name is refused unless ``overwrite=True``)."""
    return METHODS.register(method.name, method, overwrite=overwrite)


register_method(Method("attnlrp", "AttnLRP rules as modified gradients", ATTNLRP, True,
                       {"qk_grad_scale": ATTNLRP.q, "v_grad_scale": ATTNLRP.v, "epsilon": 0.0}))
register_method(Method("cp-lrp", "LRP with attention weights and MLP gates held constant",
                       CP_LRP, True, {"qk_grad_scale": CP_LRP.q, "v_grad_scale": CP_LRP.v,
                                      "epsilon": 0.0, "gate": "constant"}, gate="constant"))
register_method(Method("cp-lrp-uniform", "CP-LRP attention, AttnLRP's uniform rule on MLP gates",
                       CP_LRP, True, {"qk_grad_scale": CP_LRP.q, "v_grad_scale": CP_LRP.v,
                                      "epsilon": 0.0, "gate": "uniform"}))
register_method(Method("grad-x-input", "plain gradient times input", None, False, {}))
register_method(Method("integrated-gradients", "plain gradients integrated from a baseline",
                       None, False, {"steps": 32, "batch_size": 17, "baseline": "mean-embedding",
                                     "quadrature": "trapezoid"}, integrate=True,
                       options=("steps", "batch_size", "baseline"),
                       choices={"baseline": ("mean-embedding", "zero")}))


def get_method(name: str | Method) -> Method:
    """The registered method ``name`` (a ``Method`` passes through); unknown names get a
    one-line "did you mean" error."""
    return name if isinstance(name, Method) else METHODS.get(name)
