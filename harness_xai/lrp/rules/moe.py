"""Mixture-of-experts blocks: relevance through the selected experts, weighted by the router.

A routed block computes, per token ``t`` with selected experts ``S(t) = top-k(router(x_t))``,

    y_t = Σ_{e ∈ S(t)} w_e(x_t) · E_e(x_t)

Rule (all LRP methods): the selection ``S`` and the router weights ``w`` are constants, so the
block is a sum of the selected experts' weighted outputs ``c_e(t) = w_e(x_t) · E_e(x_t)`` and
relevance splits over them by the ε-rule on the sum, ``R_{c_e}(t) = Σ_d c_e(t)_d · R(y_t)_d /
y_t,d`` — i.e. in proportion to ``w_e · E_e``; multiplying by the constant ``w_e`` passes it on
unchanged to the expert, whose MLP gets the method's rules (identity rule on the activation,
product rule on ``act(gate) ⊙ up``). No relevance reaches the router logits or the top-k.
Why constant router weights: (1) the top-k selection is discrete (no gradient, no relevance,
as in every LRP treatment of MoE); (2) ``w`` is a gate on the expert's output — the role of the
gate in a gated MLP, which CP-LRP also holds constant; sending a share of ``y`` through ``w``
(LXT's uniform rule on ``w · E``) would put half of the block's relevance on a softmax over
router logits, where it belongs to no expert; with ``w`` constant the block is conservative
(bias-free experts: ``Σ_t Σ_e R_{c_e}(t) = Σ_t R(y_t)``) and per-expert relevance partitions the
block's exactly: ``Σ_e R_{c_e}(t) = R(y_t)``.
As a modified gradient: ``w`` is detached. Methods without layer rules (grad-x-input,
integrated gradients) keep the model's own gradient, router included.

``routed_experts`` re-implements the experts' dropless loop (same operations, same order: the
value is bit-exact) with the expert function of the family, and hands each ``c_e`` to the
active ``ExpertRecorder`` (relevance per expert: ``harness_xai.lrp.capture``).
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar

import torch
from torch import nn

#: ``note(experts_module, expert, token_index, contribution, n_rows)`` while a capture records
EXPERT_RECORDER: ContextVar[Callable | None] = ContextVar("xai_expert_recorder", default=None)

ExpertFn = Callable[[nn.Module, int, torch.Tensor], torch.Tensor]


def routed_experts(experts: nn.Module, expert_fn: ExpertFn, hidden: torch.Tensor,
                   index: torch.Tensor, weights: torch.Tensor, constant_weights: bool):
    """``Σ_{e ∈ S(t)} w_e · E_e(x_t)``: hidden (T, d), index/weights (T, k) → (T, d)."""
    n_experts = experts.num_experts
    out = torch.zeros_like(hidden)
    w = weights.detach() if constant_weights else weights
    note = EXPERT_RECORDER.get()
    with torch.no_grad():
        hit = torch.unique(index).tolist()  # ascending, like the model's own loop
    for e in hit:
        if e >= n_experts:  # the model's masking index
            continue
        pos, tok = torch.where((index == e).T)  # (k, T) order: the model's
        c = expert_fn(experts, e, hidden[tok]) * w[tok, pos, None]
        if note is not None:
            note(experts, e, tok, c, hidden.shape[0])
        out.index_add_(0, tok, c.to(out.dtype))
    return out


def gated_product(act: Callable, gate: torch.Tensor, up: torch.Tensor, mode: str) -> torch.Tensor:
    """``act(gate) ⊙ up`` under ``mode``: "plain" (true gradient), "uniform" (identity rule on
    ``act``, ½ to each factor) or "constant" (``act(gate)`` constant: CP-LRP's gate)."""
    if mode == "plain":
        return act(gate) * up
    from harness_xai.lrp.rules.activation import identity_activation
    from harness_xai.lrp.rules.product import uniform_factor

    with torch.no_grad():
        value = act(gate)
    if mode == "constant":
        return value * up
    return uniform_factor(identity_activation(gate, value)) * uniform_factor(up)


def swiglu_expert(mode: str) -> ExpertFn:
    """Expert ``E_e(x) = W_down[e] (act(gate) ⊙ up)``, ``[gate; up] = W_gate_up[e] x`` (weights
    stored (E, 2·I, d) and (E, d, I): Mixtral, Qwen3-MoE, OLMoE)."""
    def run(experts: nn.Module, e: int, x: torch.Tensor) -> torch.Tensor:
        gate, up = nn.functional.linear(x, experts.gate_up_proj[e]).chunk(2, dim=-1)
        return nn.functional.linear(gated_product(experts.act_fn, gate, up, mode),
                                    experts.down_proj[e])
    return run
