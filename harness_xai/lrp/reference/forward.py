"""Float64 forward pass of a ``ModelSpec`` that keeps every intermediate the relevance rules need.

Algorithm (one sequence of n tokens, no batch, no cache):
1. ``h₀ = E[ids] · embed_scale`` (+ learned positions ``P[0..n)`` for GPT-2).
2. Each block: ``a = post_attn(Attn(pre_attn(h)))``; ``m = post_mlp(MLP(pre_mlp(·)))`` on ``h``
   (parallel residual: ``h' = h + a + m``) or on ``mid = h + a`` (sequential: ``h' = mid + m``).
   Absent norms are skipped.
3. Attention, per query head ``h`` with key/value head ``g = h // (H / H_kv)``:
   q, k, v projections → q/k norm (whole projection or per head) → RoPE ``M_p x`` on the first
   ``rot`` dims → ``dots = q·k`` → ``s = scaling · dots`` → soft-cap ``c·tanh(s/c)`` →
   softmax over the allowed keys ``j ≤ i`` (and ``i − j < window``) → ``O = A V`` → concatenated
   heads → output projection.
4. ``logits = head(final_norm(h_L))`` at every position, then the final soft-cap if any.
Norms: RMSNorm ``w ⊙ x / sqrt(mean(x²) + eps)``;
LayerNorm ``w ⊙ (x − x̄) / sqrt(var + eps) + b``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from harness_xai.lrp.reference.rules import rope_matrices
from harness_xai.lrp.reference.spec import MLP, Attention, Block, Linear, ModelSpec, MoE, Norm

Tensor = torch.Tensor


@dataclass
class NormTape:
    x: Tensor  # (…, d) input
    centred: Tensor  # x − mean(x) (LayerNorm) or x (RMSNorm)
    scaled: Tensor  # w ⊙ centred / σ (before the bias)
    y: Tensor  # output


@dataclass
class AttnTape:
    x: Tensor  # (n, d) attention input
    q_lin: Tensor  # (n, H·hd) projections
    k_lin: Tensor  # (n, H_kv·hd)
    v_lin: Tensor  # (n, H_kv·hd)
    q_pre: Tensor  # (n, H, hd) after q-norm, before RoPE
    k_pre: Tensor  # (n, H_kv, hd)
    q: Tensor  # (n, H, hd) after RoPE
    k: Tensor  # (n, H_kv, hd)
    rope: Tensor | None  # (n, hd, hd) RoPE matrices
    dots: Tensor  # (H, n, n) q·k (masked entries 0)
    scores: Tensor  # (H, n, n) softmax input (scaled, capped; masked entries 0)
    allowed: Tensor  # (n, n) bool
    probs: Tensor  # (H, n, n)
    heads: Tensor  # (H, n, hd) head outputs O = A V
    out: Tensor  # (n, d) output projection


@dataclass
class MLPTape:
    x: Tensor  # (n, d)
    up: Tensor  # (n, ff) up projection (plain MLP: the activation's input)
    up_in: Tensor | None  # gpt-oss: clamp(up), before the + 1 (the product's factor is up_in + 1)
    gate: Tensor | None  # (n, ff) gate projection (gated MLP)
    act: Tensor  # (n, ff) activation output
    hidden: Tensor  # (n, ff) input of the down projection
    out: Tensor  # (n, d)


@dataclass
class MoETape:
    x: Tensor  # (n, d)
    weights: Tensor  # (n, E) router weights of the selected experts, 0 elsewhere
    experts: list[MLPTape]  # every expert run on every position (its output unweighted)
    contributions: list[Tensor]  # (n, d) per expert: w_e · E_e(x)
    out: Tensor  # (n, d) Σ_e contributions


@dataclass
class BlockTape:
    h: Tensor  # (n, d) block input
    attn_in: NormTape | None
    attn: AttnTape
    attn_post: NormTape | None
    a: Tensor  # (n, d) attention branch as added to the residual
    mid: Tensor | None  # (n, d) h + a (sequential blocks)
    mlp_in: NormTape | None
    mlp: MLPTape | MoETape
    mlp_post: NormTape | None
    m: Tensor  # (n, d) MLP branch as added to the residual
    out: Tensor  # (n, d)


@dataclass
class ForwardPass:
    spec: ModelSpec
    tokens: Tensor  # (n, d) token embeddings (scaled)
    positions: Tensor | None  # (n, d) learned position embeddings
    h0: Tensor  # (n, d) first residual state
    blocks: list[BlockTape]
    final: NormTape
    raw_logits: Tensor  # (n, vocab) before the final soft-cap
    logits: Tensor  # (n, vocab)


def linear(x: Tensor, lin: Linear) -> Tensor:
    z = x @ lin.weight.T
    return z if lin.bias is None else z + lin.bias


def norm(x: Tensor, spec: Norm) -> NormTape:
    centred = x - x.mean(-1, keepdim=True) if spec.kind == "layer" else x
    inv = torch.rsqrt(centred.pow(2).mean(-1, keepdim=True) + spec.eps)
    scaled = centred * inv * spec.weight if spec.weight is not None else centred * inv
    y = scaled + spec.bias if spec.bias is not None else scaled
    return NormTape(x, centred, scaled, y)


def _maybe_norm(x: Tensor, spec: Norm | None) -> tuple[Tensor, NormTape | None]:
    if spec is None:
        return x, None
    tape = norm(x, spec)
    return tape.y, tape


def allowed_keys(n: int, window: int | None) -> Tensor:
    """(n, n) bool: query ``i`` sees key ``j`` iff ``j ≤ i`` and ``i − j < window``."""
    i, j = torch.arange(n)[:, None], torch.arange(n)[None]
    ok = j <= i
    return ok & (i - j < window) if window is not None else ok


def attention(x: Tensor, spec: Attention) -> AttnTape:
    n, hd, n_heads, n_kv = x.shape[0], spec.head_dim, spec.n_heads, spec.n_kv_heads
    q_lin, k_lin, v_lin = linear(x, spec.q), linear(x, spec.k), linear(x, spec.v)
    q_in, k_in = q_lin, k_lin
    if spec.q_norm is not None and not spec.qk_norm_per_head:  # OLMo 2: whole projection
        q_in, k_in = norm(q_lin, spec.q_norm).y, norm(k_lin, spec.k_norm).y
    q_pre, k_pre = q_in.view(n, n_heads, hd), k_in.view(n, n_kv, hd)
    if spec.q_norm is not None and spec.qk_norm_per_head:  # Qwen3, Gemma 3: per head
        q_pre, k_pre = norm(q_pre, spec.q_norm).y, norm(k_pre, spec.k_norm).y
    rope = None
    q, k = q_pre, k_pre
    if spec.inv_freq is not None:
        angles = torch.arange(n, dtype=torch.float64)[:, None] * spec.inv_freq[None]  # (n, rot/2)
        angles = torch.cat([angles, angles], -1)  # (n, rot)
        rope = rope_matrices(angles.cos() * spec.rope_scale, angles.sin() * spec.rope_scale, hd)
        q = torch.einsum("nde,nhe->nhd", rope, q_pre)
        k = torch.einsum("nde,nhe->nhd", rope, k_pre)
    v = v_lin.view(n, n_kv, hd)
    group = n_heads // n_kv
    kh = k.repeat_interleave(group, 1).transpose(0, 1)  # (H, n, hd)
    vh = v.repeat_interleave(group, 1).transpose(0, 1)  # (H, n, hd)
    allowed = allowed_keys(n, spec.window)
    dots = torch.where(allowed, q.transpose(0, 1) @ kh.transpose(1, 2), 0.0)  # (H, n, n)
    scores = spec.scaling * dots
    if spec.softcap is not None:
        scores = spec.softcap * torch.tanh(scores / spec.softcap)
    logits = scores.masked_fill(~allowed, float("-inf"))
    if spec.sinks is not None:  # gpt-oss: one more logit per row, dropped after the softmax
        sink = spec.sinks[:, None, None].expand(n_heads, n, 1)
        probs = torch.softmax(torch.cat([logits, sink], -1), -1)[..., :-1]
    else:
        probs = torch.softmax(logits, -1)
    heads = probs @ vh  # (H, n, hd)
    out = linear(heads.transpose(0, 1).reshape(n, n_heads * hd), spec.o)
    return AttnTape(x, q_lin, k_lin, v_lin, q_pre, k_pre, q, k, rope, dots, scores, allowed, probs,
                    heads, out)


def mlp(x: Tensor, spec: MLP) -> MLPTape:
    up = linear(x, spec.up)
    if spec.gate is None:
        act = spec.act(up)
        return MLPTape(x, up, None, None, act, act, linear(act, spec.down))
    gate = linear(x, spec.gate)
    if spec.limit is None:
        act = spec.act(gate)
        return MLPTape(x, up, None, gate, act, act * up, linear(act * up, spec.down))
    up_in = up.clamp(-spec.limit, spec.limit)
    act = spec.act(gate.clamp(max=spec.limit))
    hidden = act * (up_in + 1.0)
    return MLPTape(x, up, up_in, gate, act, hidden, linear(hidden, spec.down))


def moe(x: Tensor, spec: MoE) -> MoETape:
    """Route every position: ``w`` = softmax(router logits), keep the top-k (renormalised)."""
    logits = linear(x, spec.router)  # (n, E)
    if spec.softmax_of_top:  # gpt-oss: top-k logits, softmax over them
        top, index = torch.topk(logits, spec.top_k, -1)
        top = torch.softmax(top, -1)
    else:
        top, index = torch.topk(torch.softmax(logits, -1), spec.top_k, -1)
        if spec.normalize:
            top = top / top.sum(-1, keepdim=True)
    weights = torch.zeros_like(logits).scatter(-1, index, top)
    tapes = [mlp(x, expert) for expert in spec.experts]
    contributions = [weights[:, e, None] * t.out for e, t in enumerate(tapes)]
    return MoETape(x, weights, tapes, contributions, sum(contributions))


def block(h: Tensor, spec: Block) -> BlockTape:
    x, attn_in = _maybe_norm(h, spec.pre_attn)
    att = attention(x, spec.attn)
    a, attn_post = _maybe_norm(att.out, spec.post_attn)
    mid = None if spec.parallel else h + a
    x, mlp_in = _maybe_norm(h if spec.parallel else mid, spec.pre_mlp)
    feed = moe(x, spec.mlp) if isinstance(spec.mlp, MoE) else mlp(x, spec.mlp)
    m, mlp_post = _maybe_norm(feed.out, spec.post_mlp)
    out = h + a + m if spec.parallel else mid + m
    return BlockTape(h, attn_in, att, attn_post, a, mid, mlp_in, feed, mlp_post, m, out)


@torch.no_grad()
def run(spec: ModelSpec, ids: Tensor) -> ForwardPass:
    """The forward pass on ``ids`` (n,) with every intermediate kept."""
    n = ids.shape[0]
    tokens = spec.embed[ids] * spec.embed_scale  # (n, d)
    positions = spec.positions[:n] if spec.positions is not None else None
    h = tokens + positions if positions is not None else tokens
    h0, tapes = h, []
    for block_spec in spec.blocks:
        tapes.append(block(h, block_spec))
        h = tapes[-1].out
    final = norm(h, spec.final_norm)
    raw = linear(final.y, spec.head)  # (n, vocab)
    cap = spec.logit_softcap
    logits = cap * torch.tanh(raw / cap) if cap is not None else raw
    return ForwardPass(spec, tokens, positions, h0, tapes, final, raw, logits)
