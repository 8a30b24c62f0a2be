"""Layer profile: at which depth the evidence behind Δℓ is gathered into the answer position.

``layer_relevance`` L has shape (n_layers + 1, n): row 0 the embeddings, row l the output of
block l; the explained logit difference is read at the last position n − 1.

1. ``layer.lK.last_share = |L[K, n−1]| / Σ_i |L[K, i]|`` for every row K: the share of row K's
   relevance that already sits at the answer position (row n_layers is ~1: only the last
   position reaches the logits).
2. ``layer.formation`` = the shallowest row K such that row K and every row above it have
   last_share ≥ ½ — the same rule as ``graph.formation_layer`` on the graph's node relevance
   (0: the last token itself already carries it, n_layers: only the last block gathers it);
   ``layer.formation_rel = formation / n_layers`` compares models of different depth.
3. Without ``layer_relevance``, a graph's ``metrics["formation_layer"]`` (node-layer index, the
   same rule on the pruned graph's nodes) gives ``layer.formation`` (and ``formation_rel`` over
   its number of node layers − 1).
"""

from __future__ import annotations

import numpy as np

HALF = 0.5


def last_shares(layer_relevance: np.ndarray) -> np.ndarray:
    """Step 1: (n_layers + 1,) share of each row's Σ|R| held by the last position."""
    size = np.abs(np.asarray(layer_relevance, dtype=np.float64))  # (L + 1, n)
    totals = size.sum(axis=1)  # (L + 1,)
    return np.divide(size[:, -1], totals, out=np.zeros_like(totals), where=totals > 0)


def formation(shares: np.ndarray) -> int:
    """Step 2: shallowest row from which on every row has last_share ≥ ½."""
    layer = len(shares) - 1
    while layer > 0 and shares[layer - 1] >= HALF:
        layer -= 1
    return int(layer)


def layer_profile(layer_relevance: np.ndarray | None, graph_metrics: dict | None = None,
                  graph_layers: int | None = None) -> dict[str, float]:
    """Steps 1–3 (module docstring)."""
    out: dict[str, float] = {}
    if layer_relevance is not None and np.ndim(layer_relevance) == 2 \
            and np.shape(layer_relevance)[1] > 0:
        shares = last_shares(layer_relevance)
        out.update({f"layer.l{k}.last_share": float(v) for k, v in enumerate(shares)})
        f = formation(shares)
        out["layer.formation"] = float(f)
        if len(shares) > 1:
            out["layer.formation_rel"] = f / (len(shares) - 1)
        return out
    value = (graph_metrics or {}).get("formation_layer")
    if value is not None:
        out["layer.formation"] = float(value)
        if graph_layers and graph_layers > 1:
            out["layer.formation_rel"] = float(value) / (graph_layers - 1)
    return out
