"""Explicit backward relevance propagation through a ``ForwardPass`` (AttnLRP and CP-LRP).

Algorithm:
1. Output: ``Δℓ = y_t − y_f`` of the logits ``y`` the model outputs at the last position (capped
   if the family caps them); ``R_y = y ⊙ (e_t − e_f)`` (the one-hot difference is ``∂Δℓ/∂y``,
   so ``Σ R_y = Δℓ``). The final soft-cap passes it unchanged (identity rule), the LM head by
   the ε-rule, the final norm by its rule.
2. Each block from the last to the first, given ``R`` of its output:
   a. Residual sums by the ε-rule: ``R_h = h ⊙ R / h'``, ``R_a = a ⊙ R / h'``, ``R_m = m ⊙ R / h'``
      (sequential: first ``h' = mid + m``, later ``mid = h + a``; the MLP branch's relevance
      reaching ``mid`` is added to ``mid``'s skip share before the split).
   b. MLP: post-norm → down projection (ε) → product ``act ⊙ up`` (uniform, ½ each; CP-LRP:
      gate constant, all to ``up``) or nothing (plain MLP) → activation (identity) → up/gate
      projections (ε) → pre-norm. Routed experts (MoE): ε-rule on ``y = Σ_e w_e E_e`` with the
      router weights constant, then each expert's MLP as above (gpt-oss: the ``+ 1`` of its
      ``clamp(up) + 1`` factor absorbs by the ε-rule, the clamps get the identity rule).
   c. Attention: post-norm → output projection (ε) → per head ``O = A V`` (uniform rule on the
      bilinear sum: ½ to ``A``, ½ to ``V``; CP-LRP: all to ``V``, ``A`` constant) → GQA copies of
      ``V`` summed → v projection (ε). AttnLRP only, the score path: softmax rule →
      soft-cap and scaling (identity) → ``q·k`` (uniform: ½ to q, ½ to k) → RoPE (ε) → q/k norm
      (identity) → q/k projections (ε). Every input's relevance is the sum of its messages.
3. Embeddings: GPT-2's ``h₀ = tokens + positions`` split by the ε-rule (positions absorb).
Relevance that leaves the graph (biases, LayerNorm biases, learned positions, the softmax
deficit of AttnLRP) is booked in ``ledger`` so that ``Σ R_tokens + Σ ledger = Δℓ`` up to rounding.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from harness_xai.lrp.reference import rules
from harness_xai.lrp.reference.forward import (AttnTape, BlockTape, ForwardPass, MLPTape, MoETape,
                                               NormTape)
from harness_xai.lrp.reference.spec import MLP, Attention, Block, Linear, MoE, Norm

Tensor = torch.Tensor

#: fraction of a bilinear product's relevance going to the attention weights, to the values and
#: to q (k gets the rest), and of a gated MLP's ``act(gate) ⊙ up`` going to the gate factor (``up``
#: gets the rest); CP-LRP's attention weights are constant, so its score path never runs, and
#: its gate is constant too (signal-take-all), so the gate projection gets nothing
SHARES = {"attnlrp": dict(probs=0.5, values=0.5, qk=0.5, gate=0.5),
          "cp-lrp": dict(probs=0.0, values=1.0, qk=0.5, gate=0.0),
          "cp-lrp-uniform": dict(probs=0.0, values=1.0, qk=0.5, gate=0.5)}


@dataclass
class Ledger:
    """Relevance absorbed outside the token embeddings, by source (sums over everything)."""

    totals: dict[str, float] = field(default_factory=dict)

    def add(self, kind: str, amount: Tensor | float) -> None:
        self.totals[kind] = self.totals.get(kind, 0.0) + float(torch.as_tensor(amount).sum())

    def total(self) -> float:
        return sum(self.totals.values())


@dataclass
class Relevances:
    """Per-position relevance (summed over the hidden dimension) of the internal states."""

    layers: list[Tensor]  # n_layers + 1 rows (n,): embeddings, then each block's output
    mid: list[Tensor | None]  # per block (n,): h + a (None: parallel residual)
    attn: list[Tensor]  # per block (n,): attention branch as added to the residual
    mlp: list[Tensor]  # per block (n,): MLP branch as added to the residual
    heads: list[Tensor]  # per block (H, n): each head's output (input of the output projection)
    ledger: Ledger
    experts: list[Tensor | None] = field(default_factory=list)  # per block (E, n); None: dense


def _linear(x: Tensor, lin: Linear, z: Tensor, r: Tensor, ledger: Ledger) -> Tensor:
    r_in, absorbed = rules.linear_eps(x, lin.weight, z, r)
    if lin.bias is not None:
        ledger.add("bias", absorbed)
    return r_in


def _norm(tape: NormTape | None, spec: Norm | None, r: Tensor, ledger: Ledger) -> Tensor:
    if tape is None:
        return r
    if spec.kind == "rms":
        return rules.identity(r)
    r_in, absorbed = rules.layer_norm_identity(tape.x, tape.centred, tape.scaled, tape.y, r)
    if spec.bias is not None:
        ledger.add("bias", absorbed)
    return r_in


def _mlp(tape: MLPTape, spec: MLP, r_out: Tensor, method: str, ledger: Ledger) -> Tensor:
    r_hidden = _linear(tape.hidden, spec.down, tape.out, r_out, ledger)
    if spec.gate is None:  # plain: hidden = act(up)
        r_up = rules.identity(r_hidden)
        return _linear(tape.x, spec.up, tape.up, r_up, ledger)
    # hidden = act(gate) ⊙ up: uniform (½, ½) or, gate constant, (0, 1)
    r_act, r_up = rules.product_uniform(r_hidden, SHARES[method]["gate"])
    if tape.up_in is not None:  # gpt-oss: factor clamp(up) + 1 — the 1 absorbs (ε-rule)
        r_up, r_one = rules.sum_split([tape.up_in, torch.ones_like(tape.up_in)],
                                      tape.up_in + 1.0, r_up)
        ledger.add("bias", r_one)
        r_up = rules.identity(r_up)  # the clamp: identity rule
    r_gate = rules.identity(r_act)  # activation (and gpt-oss's clamp): identity rule
    return (_linear(tape.x, spec.gate, tape.gate, r_gate, ledger)
            + _linear(tape.x, spec.up, tape.up, r_up, ledger))


def _moe(tape: MoETape, spec: MoE, r_out: Tensor, method: str,
         ledger: Ledger) -> tuple[Tensor, Tensor]:
    """Routed experts, selection and router weights constant: ε-rule on ``y = Σ_e c_e``
    (``R_{c_e} = c_e ⊙ R_y / y``), then ``c_e = w_e · E_e(x)`` with ``w_e`` a constant passes
    ``R_{c_e}`` to the expert's output unchanged, and the expert's MLP rules follow.
    Returns the input's relevance (n, d) and each expert's (E, n)."""
    r_c = rules.sum_split(tape.contributions, tape.out, r_out)
    r_x = sum(_mlp(t, s, r, method, ledger) for t, s, r in zip(tape.experts, spec.experts, r_c))
    return r_x, torch.stack([r.sum(-1) for r in r_c])


def _fold_groups(r: Tensor, n_kv: int) -> Tensor:
    """Relevance of GQA copies (H, n, hd) summed back onto the shared heads (n, H_kv, hd)."""
    n_heads, n, hd = r.shape
    return r.view(n_kv, n_heads // n_kv, n, hd).sum(1).transpose(0, 1)


def _attention(tape: AttnTape, spec: Attention, r_out: Tensor, method: str,
               ledger: Ledger) -> tuple[Tensor, Tensor]:
    """Relevance of the attention input (n, d) and of each head's output (H, n)."""
    shares = SHARES[method]
    n, n_heads, n_kv, hd = tape.x.shape[0], spec.n_heads, spec.n_kv_heads, spec.head_dim
    group = n_heads // n_kv
    heads_flat = tape.heads.transpose(0, 1).reshape(n, n_heads * hd)
    r_heads = _linear(heads_flat, spec.o, tape.out, r_out, ledger).view(n, n_heads, hd)
    head_relevance = r_heads.sum(-1).T  # (H, n)

    v = tape.v_lin.view(n, n_kv, hd).repeat_interleave(group, 1).transpose(0, 1)  # (H, n, hd)
    r_probs, r_v = rules.matmul_uniform(tape.probs, v, tape.heads, r_heads.transpose(0, 1),
                                        shares["probs"], shares["values"])
    r_x = _linear(tape.x, spec.v, tape.v_lin, _fold_groups(r_v, n_kv).reshape(n, -1), ledger)
    if shares["probs"] == 0.0:  # CP-LRP: attention weights constant, the score path gets nothing
        return r_x, head_relevance

    r_scores = rules.softmax_rule(tape.scores, tape.probs, r_probs, tape.allowed)
    ledger.add("softmax", r_probs.sum() - r_scores.sum())
    r_dots = rules.identity(r_scores)  # soft-cap (identity rule) and scaling (constant factor)
    k = tape.k.repeat_interleave(group, 1).transpose(0, 1)  # (H, n, hd)
    half = shares["qk"]
    r_q, r_kt = rules.matmul_uniform(tape.q.transpose(0, 1), k.transpose(1, 2), tape.dots, r_dots,
                                     half, 1.0 - half)
    r_q, r_k = r_q.transpose(0, 1), _fold_groups(r_kt.transpose(1, 2), n_kv)  # (n, H(_kv), hd)
    if tape.rope is not None:
        r_q = rules.rope_eps(tape.q_pre, tape.rope, tape.q, r_q)
        r_k = rules.rope_eps(tape.k_pre, tape.rope, tape.k, r_k)
    r_q, r_k = rules.identity(r_q), rules.identity(r_k)  # q/k norms (either scope)
    r_x = r_x + _linear(tape.x, spec.q, tape.q_lin, r_q.reshape(n, -1), ledger)
    r_x = r_x + _linear(tape.x, spec.k, tape.k_lin, r_k.reshape(n, -1), ledger)
    return r_x, head_relevance


def _block(tape: BlockTape, spec: Block, r_out: Tensor, method: str, ledger: Ledger):
    """Relevance of the block input (n, d) and the block's states."""
    if spec.parallel:
        r_skip, r_a, r_m = rules.sum_split([tape.h, tape.a, tape.m], tape.out, r_out)
    else:
        r_mid_skip, r_m = rules.sum_split([tape.mid, tape.m], tape.out, r_out)
    r_mlp_out = _norm(tape.mlp_post, spec.post_mlp, r_m, ledger)
    r_experts = None
    if isinstance(spec.mlp, MoE):
        r_mlp, r_experts = _moe(tape.mlp, spec.mlp, r_mlp_out, method, ledger)
    else:
        r_mlp = _mlp(tape.mlp, spec.mlp, r_mlp_out, method, ledger)
    r_mlp_in = _norm(tape.mlp_in, spec.pre_mlp, r_mlp, ledger)
    r_mid = None
    if not spec.parallel:
        r_mid = r_mid_skip + r_mlp_in
        r_skip, r_a = rules.sum_split([tape.h, tape.a], tape.mid, r_mid)
    r_attn_out = _norm(tape.attn_post, spec.post_attn, r_a, ledger)
    r_x, heads = _attention(tape.attn, spec.attn, r_attn_out, method, ledger)
    r_h = r_skip + _norm(tape.attn_in, spec.pre_attn, r_x, ledger)
    if spec.parallel:
        r_h = r_h + r_mlp_in
    states = (None if r_mid is None else r_mid.sum(-1), r_a.sum(-1), r_m.sum(-1), heads, r_experts)
    return r_h, states


def propagate(fwd: ForwardPass, target: int, foil: int, method: str) -> tuple[Relevances, float, Tensor]:
    """Relevances of every state, ``Δℓ`` and the token-embedding relevance (n, d)."""
    if method not in SHARES:
        raise ValueError(f"reference LRP implements {sorted(SHARES)}, not {method!r}")
    spec, ledger = fwd.spec, Ledger()
    logits = fwd.logits[-1]  # (vocab,)
    select = torch.zeros_like(logits)
    select[target] += 1.0
    select[foil] -= 1.0
    delta = float(logits @ select)
    r_raw = rules.identity(logits * select)  # final soft-cap: identity rule
    final = fwd.final
    r_final = torch.zeros_like(final.y)  # (n, d): only the last position is explained
    r_final[-1:] = _linear(final.y[-1:], spec.head, fwd.raw_logits[-1:], r_raw[None], ledger)
    r = _norm(final, spec.final_norm, r_final, ledger)

    layers, mid, attn, mlp, heads, experts = [r.sum(-1)], [], [], [], [], []
    for tape, block_spec in zip(reversed(fwd.blocks), reversed(spec.blocks)):
        r, (r_mid, r_a, r_m, r_heads, r_experts) = _block(tape, block_spec, r, method, ledger)
        experts.append(r_experts)
        layers.append(r.sum(-1))
        mid.append(r_mid)
        attn.append(r_a)
        mlp.append(r_m)
        heads.append(r_heads)
    if fwd.positions is not None:  # GPT-2: learned positions absorb relevance like a bias
        r, r_pos = rules.sum_split([fwd.tokens, fwd.positions], fwd.h0, r)
        ledger.add("positions", r_pos)
        layers[-1] = r.sum(-1)
    rel = Relevances(layers=layers[::-1], mid=mid[::-1], attn=attn[::-1], mlp=mlp[::-1],
                     heads=heads[::-1], ledger=ledger, experts=experts[::-1])
    return rel, delta, r
