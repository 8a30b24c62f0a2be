"""Fast edges of one block: closed-form cross-position terms, computed in target-row chunks.

For target rows ``J`` (a chunk) and sources ``i < e = max(J) + 1`` (causal), per head ``h`` with
kv-head ``g(h)`` (GQA: query heads grouped over their shared kv-head, no copies):
1. Recompute the attention: ``raw = scaling · q_h[j]·k_g[i]``; soft-cap ``s = c·tanh(raw/c)``
   if any; add the recorded mask (none recorded = causal); ``P = softmax(s)`` in fp32 (with an
   attention sink — gpt-oss — its logit joins the normaliser; it has no value, so the paths
   below keep their form).
2. Value path: ``Σ_h P_h[j,i] ⟨γ_h[j], c_v ṽ_g[i]⟩`` (``γ`` = modified gradient at the kernel
   output, ``ṽ`` the part of v linear in the source state).
3. Key path (zero for CP-LRP): the true softmax gradient
   ``ds_h[j,i] = P_h[j,i] (⟨γ_h[j], v_g[i]⟩ − ⟨γ_h[j], o_h[j]⟩)``, times the soft-cap's rule
   factor ``ρ`` (identity rule ``s/raw``; true derivative ``1 − tanh²`` without rules), times
   ``⟨q_h[j], c_k·scaling·k̃_g[i]⟩``.
4. ``A[j, :] = value + key paths``, plus ``local(j)`` on the diagonal (the column identity, see
   ``capture``): exact for every entry, diagonal included.
5. Optionally (``check``) reproduce the kernel's output ``P·v`` for the chunk: a family whose
   mask or scaling the recomputation misread fails loudly instead of giving wrong edges.
Cost per block O(n²·hd·H) like attention itself; memory O(chunk · n · H), the chunk sized from
the device's free memory (``budget``).
"""

from __future__ import annotations

import torch

from harness_xai.graph.budget import chunk_elements
from harness_xai.lrp.blocktrace import LayerTrace


def chunk_size(trace: LayerTrace, n_sources: int, elements: int | None = None) -> int:
    """Target rows per chunk: one (H, rows, n_sources) temporary holds at most ``elements``
    (default: from the device's free memory, ``budget.chunk_elements``)."""
    heads = trace.q.shape[0]
    budget = chunk_elements(trace.q.device, elements)
    return max(1, min(trace.q.shape[1], budget // max(1, heads * n_sources)))


def rows(trace: LayerTrace, targets: torch.Tensor, check: bool = False) -> torch.Tensor:
    """Edges into ``targets`` (c,), sorted ascending: (c, e) with e = targets[-1] + 1."""
    heads = trace.q.shape[0]
    kv = trace.k.shape[0]
    group = heads // kv
    targets = targets.to(trace.q.device)
    c = targets.shape[0]
    e = int(targets[-1]) + 1

    def per_kv(x: torch.Tensor) -> torch.Tensor:  # (H, c, hd) → (KV, group·c, hd)
        return x.reshape(kv, group * c, x.shape[-1])

    def back(x: torch.Tensor) -> torch.Tensor:  # (KV, group·c, e) → (H, c, e)
        return x.reshape(heads, c, e)

    def times(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:  # ⟨a_h[j], b_g(h)[i]⟩ (H, c, e)
        return back(torch.bmm(per_kv(a), b[:, :e].transpose(1, 2)))

    q = trace.q[:, targets]  # (H, c, hd)
    gamma = trace.gamma[:, targets]  # (H, c, hd)

    scores = times(q * trace.scaling, trace.k)  # raw logits (H, c, e)
    rho = None
    if trace.softcap is not None:
        cap = trace.softcap
        tanh = torch.tanh(scores / cap)
        if trace.identity_cap:  # f(s)/s, guarded at 0 (limit 1)
            zero = scores == 0
            rho = torch.where(zero, 1.0, tanh * cap / torch.where(zero, 1.0, scores))
        else:
            rho = 1 - tanh * tanh
        scores = tanh.mul_(cap)
    _mask_(scores, trace.mask, targets)
    if trace.sinks is not None:  # a constant logit per head joins each row's normaliser
        sink = trace.sinks.to(scores.device)[:, None, None].expand(heads, c, 1)
        probs = torch.softmax(torch.cat([scores, sink], -1), dim=-1)[..., :-1]
    else:
        probs = torch.softmax(scores, dim=-1)  # (H, c, e)
    del scores

    if trace.k_lin is not None:  # P ⊙ (γ·ṽ + (γ·v − ⟨γ, o⟩) ⊙ ρ ⊙ (q·k̃))
        acc = times(gamma, trace.v).sub_(trace.gamma_o[:, targets, None])
        if rho is not None:
            acc.mul_(rho)
        acc.mul_(times(q, trace.k_lin))
        acc.view(kv, group * c, e).baddbmm_(per_kv(gamma), trace.v_lin[:, :e].transpose(1, 2))
    else:  # P ⊙ γ·ṽ
        acc = times(gamma, trace.v_lin)
    edges = acc.mul_(probs).sum(0)  # (c, e)
    del acc
    edges[torch.arange(c, device=edges.device), targets] += trace.local[targets]
    if check:
        _check_attention(trace, probs, trace.v[:, :e], targets, group)
    return edges


def _mask_(scores: torch.Tensor, mask: torch.Tensor | None, targets: torch.Tensor) -> None:
    """Apply the kernel's mask in place; none recorded = causal (only columns > targets[0] can
    be masked, so only that tail is touched)."""
    e = scores.shape[-1]
    if mask is None:
        first = int(targets[0]) + 1
        if first < e:
            hidden = torch.arange(first, e, device=scores.device)[None] > targets[:, None]
            scores[..., first:].masked_fill_(hidden, float("-inf"))
        return
    rows_mask = mask[:, targets, :e]  # (1|H, c, e)
    if rows_mask.dtype == torch.bool:
        scores.masked_fill_(~rows_mask, float("-inf"))
    else:
        scores.add_(rows_mask.float())


def _check_attention(trace: LayerTrace, probs: torch.Tensor, v: torch.Tensor,
                     targets: torch.Tensor, group: int) -> None:
    heads, c, e = probs.shape
    kv = v.shape[0]
    rebuilt = torch.bmm(probs.reshape(kv, group * c, e), v).reshape(heads, c, -1)
    recorded = trace.out[:, targets]
    err = (rebuilt - recorded).abs().max().item()
    if err > trace.tolerance * recorded.abs().max().item() + 1e-5:
        raise RuntimeError(f"graph: recomputed attention differs from the model's (max error "
                           f"{err:.3g}); this family's mask or scaling is not understood")


def dense(trace: LayerTrace, elements: int | None = None) -> torch.Tensor:
    """The whole (n, n) edge matrix [target j, source i] of one block (fp32, CPU)."""
    n = trace.q.shape[1]
    out = torch.zeros(n, n)
    step = chunk_size(trace, n, elements)
    starts = list(range(0, n, step))
    for start in starts:
        targets = torch.arange(start, min(n, start + step))
        out[targets, :int(targets[-1]) + 1] = rows(trace, targets, check=start == starts[-1]).cpu()
    return out
