"""A case's attribution graph as the JSON that circuit-tracer writes and Neuronpedia's graph
viewer reads (``metadata`` / ``qParams`` / ``nodes`` / ``links``; Neuronpedia's
``graph-schema.json``).

``harness-xai export --format graph-json --db URL --out DIR [--case ID]`` writes
``case-<id>.graph.json`` for every case with a stored graph (or the one given). Mapping:

1. ``metadata`` — ``slug`` ``harness-xai-case-<id>``, ``scan`` the model's short name,
   ``prompt_tokens`` the attributed input tokens exactly as stored, ``prompt`` their
   concatenation; ``info`` names the generator and the explained quantity; the graph's pruning
   parameters go under ``pruning_settings``.
2. ``nodes`` — our nodes are residual-stream states, one per (node layer, position): node layer
   0 (embeddings) becomes circuit-tracer's embedding layer ``E`` (``E_<token id>_<pos>``), node
   layer k ≥ 1 becomes layer ``k-1`` with ``feature_type`` ``residual stream`` and feature index =
   position (``<k-1>_<pos>_<pos>``); ``clerp`` names the state and its relevance; ``influence``
   is |relevance| / max |relevance| (an edge's end the store keeps no node row for — pruned,
   relevance 0 — is added with relevance 0). One ``logit`` node (layer ``n_layers + 1``, target logit)
   stands for Δℓ = logit[wrong] − logit[gold].
3. ``links`` — every stored edge (source → target, its weight), plus one link from each node
   of the top node layer to the logit node weighted by that node's relevance (the share of Δℓ
   it carries).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from harness_xai import __version__


def _node_id(layer: int, pos: int, token_ids: dict[int, int]) -> str:
    return f"E_{token_ids.get(pos, 0)}_{pos}" if layer == 0 else f"{layer - 1}_{pos}_{pos}"


def graph_json(conn: sa.Connection, case_id: int) -> dict[str, Any]:
    """The circuit-tracer / Neuronpedia graph JSON of one case (module docstring)."""
    case = conn.execute(sa.text(
        "SELECT c.id, c.task, c.doc_id, c.delta, c.wrong_token, c.gold_token, c.wrong_token_id, "
        "r.model_name, r.pretrained, g.node_layers, g.params, g.mass_kept FROM cases AS c "
        "JOIN runs AS r ON r.id = c.run_id JOIN graphs AS g ON g.case_id = c.id "
        "WHERE c.id = :c"), {"c": case_id}).mappings().one()
    tokens = conn.execute(sa.text("SELECT position, token_id, token FROM token_relevance "
                                  "WHERE case_id = :c ORDER BY position"), {"c": case_id}).all()
    nodes = conn.execute(sa.text("SELECT layer, position, relevance FROM graph_nodes "
                                 "WHERE case_id = :c ORDER BY layer, position"), {"c": case_id}).all()
    edges = conn.execute(sa.text(
        "SELECT source_layer, source_position, target_layer, target_position, weight "
        "FROM graph_edges WHERE case_id = :c ORDER BY source_layer, source_position, "
        "target_layer, target_position"), {"c": case_id}).all()
    layer_names = json.loads(case["node_layers"] or "[]")
    params = json.loads(case["params"] or "{}")
    token_ids = {int(p): int(t) for p, t, _ in tokens}
    text_of = {int(p): tok or "" for p, _, tok in tokens}
    r_max = max((abs(r) for _, _, r in nodes if r is not None), default=0.0) or 1.0
    stored = {(int(l), int(p)) for l, p, _ in nodes}
    ends = {(int(e[0]), int(e[1])) for e in edges} | {(int(e[2]), int(e[3])) for e in edges}
    nodes = list(nodes) + [(l, p, 0.0) for l, p in sorted(ends - stored)]  # pruned: R stored as 0
    out_nodes = []
    for layer, pos, rel in nodes:
        layer, pos, rel = int(layer), int(pos), float(rel or 0.0)
        name = layer_names[layer] if layer < len(layer_names) else str(layer)
        out_nodes.append({
            "node_id": _node_id(layer, pos, token_ids),
            "feature": token_ids.get(pos, 0) if layer == 0 else pos,
            "layer": "E" if layer == 0 else str(layer - 1),
            "ctx_idx": pos,
            "feature_type": "embedding" if layer == 0 else "residual stream",
            "jsNodeId": f"E_{token_ids.get(pos, 0)}-{pos}" if layer == 0 else f"{layer - 1}_{pos}-0",
            "clerp": f"{name} @ {pos} {json.dumps(text_of.get(pos, ''), ensure_ascii=False)}: "
                     f"R {rel:+.4g}",
            "influence": abs(rel) / r_max,
            "activation": rel,
        })
    n_layers = max(len(layer_names) - 1, 0)
    last = max((int(p) for _, p, _ in tokens), default=0)
    logit_id = f"{n_layers + 1}_{int(case['wrong_token_id'] or 0)}_{last}"
    out_nodes.append({
        "node_id": logit_id, "feature": int(case["wrong_token_id"] or 0), "layer": str(n_layers + 1),
        "ctx_idx": last, "feature_type": "logit", "jsNodeId": f"L_{int(case['wrong_token_id'] or 0)}-{last}",
        "is_target_logit": True, "token_prob": 0.0, "influence": 1.0,
        "clerp": f"Δℓ = logit[{case['wrong_token']!r}] − logit[{case['gold_token']!r}] = "
                 f"{float(case['delta'] or 0.0):+.4g}"})
    links = [{"source": _node_id(int(sl), int(sp), token_ids),
              "target": _node_id(int(tl), int(tp), token_ids), "weight": float(w or 0.0)}
             for sl, sp, tl, tp, w in edges]
    top = max((int(l) for l, _, _ in nodes), default=0)
    links += [{"source": _node_id(top, int(p), token_ids), "target": logit_id,
               "weight": float(r or 0.0)} for l, p, r in nodes if int(l) == top]
    return {
        "metadata": {
            "slug": f"harness-xai-case-{int(case['id'])}",
            "scan": str(case["model_name"] or case["pretrained"] or "model"),
            "prompt_tokens": [text_of[p] for p in sorted(text_of)],
            "prompt": "".join(text_of[p] for p in sorted(text_of)),
            "info": {"description": f"{case['task']} doc {case['doc_id']}: contrastive AttnLRP "
                                    "graph over residual-stream states (no transcoder features)",
                     "generator": {"name": "harness-xai", "version": __version__}},
            "pruning_settings": {k: v for k, v in params.items()
                                 if isinstance(v, (int, float)) and not isinstance(v, bool)},
        },
        "qParams": {"pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": "",
                    "sg_pos": ""},
        "nodes": out_nodes,
        "links": links,
    }


def export_graphs(conn: sa.Connection, out: Path, case_id: int | None = None) -> int:
    """Write ``case-<id>.graph.json`` for every case with a graph (or ``case_id``); the count."""
    ids = [int(r[0]) for r in conn.execute(sa.text("SELECT case_id FROM graphs ORDER BY case_id"))]
    if case_id is not None:
        from harness_xai.errors import UserError

        if case_id not in ids:
            raise UserError(f"--case {case_id}: no attribution graph stored for that case; "
                            "list them with `harness-xai sql \"SELECT case_id FROM graphs\"`")
        ids = [case_id]
    out.mkdir(parents=True, exist_ok=True)
    for cid in ids:
        path = out / f"case-{cid}.graph.json"
        tmp = out / f".{path.name}.part-{os.getpid()}"
        tmp.write_text(json.dumps(graph_json(conn, cid), ensure_ascii=False) + "\n", encoding="utf-8")
        tmp.replace(path)
    return len(ids)
