"""Evidence recovery: where the token(s) the answer needs land in the relevance order.

Inputs: R (n,) token relevance, E = ``case.evidence_positions`` (from the doc's
``evidence_span``, ``contrast.evidence``), candidates C = the content tokens (non-special, see
``relevance``) plus E. With a score s_i per token:

1. rank = 1 + #{j ∈ C \\ E : s_j ≥ max_{e∈E} s_e} — the rank of the best evidence token among
   the candidates, ties counted against the evidence (an all-zero relevance gives the worst rank).
2. Three orders: ``evidence.rank_abs`` with s = |R| (HEADLINE: the evidence is the most relevant
   token whichever way it pushes; in a failure it usually argues for the gold answer, i.e.
   negative R), ``evidence.rank_pos`` with s = R (toward the explained target: the wrong answer
   in a failure, the gold answer when a correct answer is explained against a foil) and
   ``evidence.rank_neg`` with s = −R (toward the foil / gold answer in a failure).
   ``evidence.top1`` = 1 if rank_abs = 1 else 0 (its mean over cases is the recovery rate).
3. Random baseline (a uniformly random order of the N = |C| candidates, m = |E| of them
   evidence): P(best evidence ranked first) = ``evidence.random_top1`` = m / N, expected rank
   ``evidence.random_rank`` = (N + 1) / (m + 1).
4. ``evidence.share`` = Σ_{e∈E} |R_e| / Σ_{i∈C} |R_i|; ``evidence.norm`` = R of the best-|R|
   evidence token divided by max_{i∈C} |R_i| (the paper's normalisation; sign kept);
   ``evidence.n`` = m, ``evidence.candidates`` = N.
5. Several evidence tokens (m > 1, e.g. every operand of a sum): ranks 1–3 only ask for the BEST
   of them. ``evidence.precision`` = share of evidence among the m candidates with the largest
   |R| (ties broken against the evidence) — 1 iff all m evidence tokens outrank every other
   candidate; equals ``evidence.top1`` when m = 1. Random baseline: its mean over uniformly random
   orders is ``evidence.random_precision`` = m / N (hypergeometric mean).
No metric for cases without evidence positions.
"""

from __future__ import annotations

import numpy as np

from harness_xai.analysis.relevance import content_mask


def best_rank(scores: np.ndarray, evidence: np.ndarray, candidates: np.ndarray) -> int:
    """Step 1: ``scores`` (n,), ``evidence`` / ``candidates`` (n,) bool masks."""
    best = scores[evidence].max()
    others = candidates & ~evidence
    return int(1 + np.count_nonzero(scores[others] >= best))


def top_m_precision(scores: np.ndarray, evidence: np.ndarray, candidates: np.ndarray) -> float:
    """Step 5: share of evidence among the m = |E| highest-scoring candidates, ties against E."""
    idx = np.flatnonzero(candidates)  # (N,)
    order = np.lexsort((evidence[idx], -scores[idx]))  # score descending, non-evidence first
    m = int(np.count_nonzero(evidence))
    return float(np.count_nonzero(evidence[idx[order[:m]]]) / m)


def evidence_recovery(relevance: np.ndarray, evidence_positions: list[int],
                      segments: list[str]) -> dict[str, float]:
    """Steps 1–5 (module docstring)."""
    rel = np.asarray(relevance, dtype=np.float64)  # (n,)
    n = rel.size
    positions = sorted({int(p) for p in evidence_positions if 0 <= int(p) < n})
    if not positions:
        return {}
    evidence = np.zeros(n, dtype=bool)
    evidence[positions] = True
    candidates = content_mask(n, segments) | evidence  # (n,)
    size = np.abs(rel)
    n_cand, m = int(candidates.sum()), len(positions)
    rank_abs = best_rank(size, evidence, candidates)
    out = {
        "evidence.n": float(m),
        "evidence.candidates": float(n_cand),
        "evidence.rank_abs": float(rank_abs),
        "evidence.rank_pos": float(best_rank(rel, evidence, candidates)),
        "evidence.rank_neg": float(best_rank(-rel, evidence, candidates)),
        "evidence.top1": 1.0 if rank_abs == 1 else 0.0,
        "evidence.random_top1": m / n_cand,
        "evidence.random_rank": (n_cand + 1) / (m + 1),
        "evidence.precision": top_m_precision(size, evidence, candidates),
        "evidence.random_precision": m / n_cand,
    }
    total = size[candidates].sum()
    if total > 0:
        out["evidence.share"] = float(size[evidence].sum() / total)
        top = positions[int(np.argmax(size[positions]))]
        out["evidence.norm"] = float(rel[top] / size[candidates].max())
    return out
