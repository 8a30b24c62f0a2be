"""Per-case token-relevance metrics: normalisation, segment relevance, concentration, position.

Notation: R = ``case.token_relevance`` (n,), positive = toward the wrong answer; "special" tokens
are those whose segment label is ``special`` (BOS / prefix token, template markup); the other
tokens are the *content* tokens C (all tokens when the case has no segment labels).

1. Normalisation (the paper's): ``scale = max_{i∈C} |R_i|``; r_i = R_i / scale. Special tokens
   are left out of the scale because the attention sink can dwarf every other token.
2. Segment relevance: ``relevance.total = Σ_{i∈C} r_i`` (the paper's Fig. 5 totals); per segment
   label s: ``segment.s.total = Σ_{i∈s} r_i``, ``segment.s.share = Σ_{i∈s}|R_i| / Σ_i |R_i|`` (all
   tokens, so the special share is visible), ``segment.s.n_tokens``.
3. Concentration of p_i = |R_i| / Σ_{j∈C} |R_j| over the content tokens (m = |C|):
   ``entropy = −Σ p ln p / ln m`` (0: one token holds everything, 1: uniform; 0 when m = 1);
   ``gini`` = Gini coefficient of |R| (0 uniform … 1 − 1/m one-hot);
   ``top1``, ``top5``, ``top10pct`` = mass of the k largest p with k = 1, 5, ⌈m/10⌉.
4. Position profile: ``position.dk`` (k = 0…9) = Σ p_i over content tokens at relative position
   ⌊10·i/n⌋ = k (n = all tokens; deciles sum to 1); ``position.centroid`` = Σ p_i · i/(n−1).
5. Sink share: ``sink.share = |R_0| / Σ_i |R_i|`` — position 0 is the attention sink whether or
   not it is a BOS token.
6. ``relevance.conservation = Σ_i R_i / Δℓ`` (1 for exactly conservative rules such as CP-LRP on
   bias-free models; AttnLRP is not conservative).
A metric that does not apply (no content relevance, Δℓ = 0, …) is left out, never NaN.
"""

from __future__ import annotations

import math

import numpy as np

SPECIAL = "special"
TOP_K = (1, 5)
DECILES = 10


def content_mask(n: int, segments: list[str]) -> np.ndarray:
    """(n,) bool: True for content (non-special) tokens; all True without segment labels."""
    if len(segments) != n:
        return np.ones(n, dtype=bool)
    return np.array([s != SPECIAL for s in segments], dtype=bool)


def scale(relevance: np.ndarray, content: np.ndarray) -> float:
    """Step 1: the normaliser max |R| over content tokens (0.0 if there are none)."""
    values = np.abs(relevance[content])  # (m,)
    return float(values.max()) if values.size else 0.0


def segment_relevance(relevance: np.ndarray, segments: list[str]) -> dict[str, float]:
    """Steps 1–2: ``norm.scale``, ``relevance.total`` and per-segment totals / shares / counts."""
    rel = np.asarray(relevance, dtype=np.float64)  # (n,)
    n = rel.size
    content = content_mask(n, segments)
    out: dict[str, float] = {}
    s = scale(rel, content)
    abs_total = float(np.abs(rel).sum())
    if s > 0:
        out["norm.scale"] = s
        out["relevance.total"] = float(rel[content].sum() / s)
    labels = segments if len(segments) == n else []
    for label in dict.fromkeys(labels):
        mask = np.array([x == label for x in labels], dtype=bool)  # (n,)
        out[f"segment.{label}.n_tokens"] = float(mask.sum())
        if s > 0:
            out[f"segment.{label}.total"] = float(rel[mask].sum() / s)
        if abs_total > 0:
            out[f"segment.{label}.share"] = float(np.abs(rel[mask]).sum() / abs_total)
    return out


def gini(values: np.ndarray) -> float:
    """Gini coefficient of non-negative ``values`` (m,): Σ_i (2i − m − 1) x_(i) / (m Σ x) with
    x sorted ascending, i = 1…m; 0 for a uniform vector, 1 − 1/m for a one-hot one."""
    x = np.sort(np.asarray(values, dtype=np.float64))
    m, total = x.size, x.sum()
    if m == 0 or total <= 0:
        return float("nan")
    i = np.arange(1, m + 1)
    return float(((2 * i - m - 1) * x).sum() / (m * total))


def concentration(relevance: np.ndarray, segments: list[str]) -> dict[str, float]:
    """Step 3 (module docstring)."""
    rel = np.abs(np.asarray(relevance, dtype=np.float64))
    p = rel[content_mask(rel.size, segments)]  # (m,)
    total = p.sum()
    if p.size == 0 or total <= 0:
        return {}
    p = p / total
    m = p.size
    nz = p[p > 0]
    entropy = float(-(nz * np.log(nz)).sum() / math.log(m)) if m > 1 else 0.0
    ordered = np.sort(p)[::-1]
    out = {"concentration.entropy": entropy, "concentration.gini": gini(p)}
    for k in TOP_K:
        out[f"concentration.top{k}"] = float(ordered[:k].sum())
    out["concentration.top10pct"] = float(ordered[: max(1, math.ceil(m / 10))].sum())
    return out


def position_profile(relevance: np.ndarray, segments: list[str]) -> dict[str, float]:
    """Steps 4–5: relevance mass by relative-position decile, its centroid, and the sink share."""
    rel = np.abs(np.asarray(relevance, dtype=np.float64))  # (n,)
    n = rel.size
    out: dict[str, float] = {}
    if n == 0:
        return out
    if rel.sum() > 0:
        out["sink.share"] = float(rel[0] / rel.sum())
    mass = np.where(content_mask(n, segments), rel, 0.0)  # (n,)
    total = mass.sum()
    if total <= 0:
        return out
    mass = mass / total
    decile = np.minimum((DECILES * np.arange(n)) // n, DECILES - 1)  # (n,)
    profile = np.bincount(decile, weights=mass, minlength=DECILES)  # (10,)
    out.update({f"position.d{k}": float(v) for k, v in enumerate(profile)})
    rel_pos = np.arange(n) / (n - 1) if n > 1 else np.zeros(1)
    out["position.centroid"] = float((mass * rel_pos).sum())
    return out


def conservation(relevance: np.ndarray, delta: float | None) -> dict[str, float]:
    """Step 6: Σ R / Δℓ."""
    if delta is None or not math.isfinite(delta) or delta == 0:
        return {}
    return {"relevance.conservation": float(np.asarray(relevance, dtype=np.float64).sum() / delta)}
