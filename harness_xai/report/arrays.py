"""Bulk loading of the per-case arrays of one run, for the failure pages.

One page per failure used to cost seven small queries; a report of 10k failures spent most of its
time in round trips. Here every table is read once per run, ordered by case, and split in numpy:

1. ``_fetch`` runs one bound SELECT (``run_id`` only) and returns its columns as numpy arrays —
   through DuckDB's native ``fetchnumpy`` when the store is DuckDB, else through SQLAlchemy rows.
2. ``_groups`` splits the case-sorted columns at case boundaries (``np.flatnonzero`` of the
   changes), giving each case a slice.
3. ``run_arrays`` assembles, per attributed case, the token rows and the dense matrices:
   ``layers`` (n_layers + 1, n_positions), each state kind (n_blocks, n_positions), ``heads``
   (n_blocks, n_heads) summed over positions, the deletion curve, and the graph's nodes/edges.
Missing cells of a matrix are NaN. Only the run's own rows are read (every SELECT joins ``cases``
on ``run_id``), so memory is one run at a time. ``store_relevance`` reads every case's token
relevance at once (the same doc across runs).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sqlalchemy import Connection, text


@dataclass
class CaseArrays:
    """The arrays of one attributed case (``positions`` index the columns of every matrix)."""

    positions: np.ndarray  # (n,) token positions, ascending
    token_ids: list[int]
    tokens: list[str | None]
    relevance: np.ndarray  # (n,)
    segments: list[str | None]
    segment_index: list[int | None]
    evidence: list[int | None]
    layers: np.ndarray | None = None  # (n_layers + 1, n) — row 0 the embeddings
    layer_ids: list[int] = field(default_factory=list)
    states: dict[str, tuple[list[int], np.ndarray]] = field(default_factory=dict)  # kind → (blocks, (n_blocks, n))
    heads: tuple[list[int], list[int], np.ndarray] | None = None  # (blocks, heads, (n_blocks, n_heads))
    faithfulness: dict[str, list] | None = None
    graph: dict[str, Any] | None = None


def _fetch(conn: Connection, sql: str, run_id: int | None = None) -> dict[str, np.ndarray]:
    """Step 1: the columns of ``sql`` (with a ``:run_id`` parameter when ``run_id`` is given) as
    numpy arrays."""
    params = [] if run_id is None else [int(run_id)]
    if conn.dialect.name == "duckdb":
        raw = conn.connection.driver_connection
        return raw.execute(sql.replace(":run_id", "?"), params).fetchnumpy()
    result = conn.execute(text(sql), {} if run_id is None else {"run_id": int(run_id)})
    names = list(result.keys())
    rows = result.fetchall()
    return {n: np.array([r[i] for r in rows], dtype=object) for i, n in enumerate(names)}


def _floats(values: np.ndarray) -> np.ndarray:
    """Column → float64 with NULL → NaN (DuckDB gives masked arrays, other drivers objects)."""
    if isinstance(values, np.ma.MaskedArray):
        return values.astype(np.float64).filled(np.nan)
    return np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)


def _ints(values: np.ndarray) -> np.ndarray:
    if isinstance(values, np.ma.MaskedArray):
        return values.filled(-1).astype(np.int64)
    return np.array([-1 if v is None else int(v) for v in values], dtype=np.int64)


def _objects(values: np.ndarray) -> list:
    if isinstance(values, np.ma.MaskedArray):
        mask = np.ma.getmaskarray(values)
        data = values.data.tolist()
        return [None if m else v for v, m in zip(data, mask)]
    return [None if v is None else v for v in values.tolist()]


def _groups(case_ids: np.ndarray) -> dict[int, slice]:
    """Step 2: case id → slice of the rows (``case_ids`` sorted)."""
    if case_ids.size == 0:
        return {}
    starts = np.flatnonzero(np.r_[True, case_ids[1:] != case_ids[:-1]])  # (n_cases,)
    ends = np.r_[starts[1:], case_ids.size]
    return {int(case_ids[s]): slice(int(s), int(e)) for s, e in zip(starts, ends)}


def _dense(rows: np.ndarray, cols: np.ndarray, values: np.ndarray,
           col_ids: np.ndarray) -> tuple[list[int], np.ndarray]:
    """(row ids, matrix (n_rows, len(col_ids))) from cell triples; NaN where absent."""
    row_ids = np.unique(rows)
    out = np.full((row_ids.size, col_ids.size), np.nan)  # (n_rows, n_cols)
    ri = np.searchsorted(row_ids, rows)
    ci = np.searchsorted(col_ids, cols)
    ok = (ci < col_ids.size) & (col_ids[np.minimum(ci, col_ids.size - 1)] == cols)
    out[ri[ok], ci[ok]] = values[ok]
    return [int(r) for r in row_ids], out


_RUN = "JOIN cases AS c ON c.id = t.case_id WHERE c.run_id = :run_id AND c.status = 'attributed'"


def run_arrays(conn: Connection, run_id: int) -> dict[int, CaseArrays]:
    """Step 3: case id → CaseArrays for every attributed case of ``run_id``."""
    tok = _fetch(conn, "SELECT t.case_id, t.position, t.token_id, t.token, t.relevance, t.segment, "
                       f"t.segment_index, t.evidence FROM token_relevance AS t {_RUN} "
                       "ORDER BY t.case_id, t.position", run_id)
    ids = _ints(tok["case_id"])
    pos, rel = _ints(tok["position"]), _floats(tok["relevance"])
    token_ids, texts = _ints(tok["token_id"]), _objects(tok["token"])
    segs, seg_idx, evid = _objects(tok["segment"]), _ints(tok["segment_index"]), _ints(tok["evidence"])
    out: dict[int, CaseArrays] = {}
    for cid, s in _groups(ids).items():
        out[cid] = CaseArrays(
            positions=pos[s], token_ids=token_ids[s].tolist(), tokens=texts[s], relevance=rel[s],
            segments=segs[s], segment_index=[None if v < 0 else int(v) for v in seg_idx[s]],
            evidence=[None if v < 0 else int(v) for v in evid[s]])

    lay = _fetch(conn, "SELECT t.case_id, t.layer, t.position, t.relevance FROM layer_relevance "
                       f"AS t {_RUN} ORDER BY t.case_id, t.layer, t.position", run_id)
    ids = _ints(lay["case_id"])
    layer, lpos, lrel = _ints(lay["layer"]), _ints(lay["position"]), _floats(lay["relevance"])
    for cid, s in _groups(ids).items():
        if cid in out:
            case = out[cid]
            case.layer_ids, case.layers = _dense(layer[s], lpos[s], lrel[s], case.positions)

    st = _fetch(conn, "SELECT t.case_id, t.kind, t.layer, t.position, t.relevance FROM "
                      f"state_relevance AS t {_RUN} ORDER BY t.case_id, t.kind, t.layer, t.position",
                run_id)
    ids, kinds = _ints(st["case_id"]), np.array(_objects(st["kind"]), dtype=object)
    slayer, spos, srel = _ints(st["layer"]), _ints(st["position"]), _floats(st["relevance"])
    for cid, s in _groups(ids).items():
        if cid not in out:
            continue
        for kind in dict.fromkeys(kinds[s].tolist()):
            m = kinds[s] == kind
            out[cid].states[kind] = _dense(slayer[s][m], spos[s][m], srel[s][m],
                                           out[cid].positions)

    hd = _fetch(conn, "SELECT t.case_id, t.layer, t.head, SUM(t.relevance) AS relevance FROM "
                      f"head_relevance AS t {_RUN} GROUP BY t.case_id, t.layer, t.head "
                      "ORDER BY t.case_id, t.layer, t.head", run_id)
    ids = _ints(hd["case_id"])
    hl, hh, hr = _ints(hd["layer"]), _ints(hd["head"]), _floats(hd["relevance"])
    for cid, s in _groups(ids).items():
        if cid in out:
            heads = np.unique(hh[s])
            blocks, m = _dense(hl[s], hh[s], hr[s], heads)
            out[cid].heads = (blocks, [int(h) for h in heads], m)

    _attach_faithfulness(conn, run_id, out)
    _attach_graphs(conn, run_id, out)
    return out


def store_relevance(conn: Connection) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """case id → (token ids (n,), relevance (n,)) of every case of the store, in position order:
    views into two store-wide arrays (16 bytes per token), for the doc histories."""
    cols = _fetch(conn, "SELECT case_id, token_id, relevance FROM token_relevance "
                        "ORDER BY case_id, position")
    ids, tids, rel = _ints(cols["case_id"]), _ints(cols["token_id"]), _floats(cols["relevance"])
    return {cid: (tids[s], rel[s]) for cid, s in _groups(ids).items()}


def _attach_faithfulness(conn: Connection, run_id: int, out: dict[int, CaseArrays]) -> None:
    fa = _fetch(conn, "SELECT t.case_id, t.fraction, t.n_removed, t.delta_relevance, "
                      f"t.delta_random FROM faithfulness AS t {_RUN} ORDER BY t.case_id, t.step",
                run_id)
    ids = _ints(fa["case_id"])
    frac, nrem = _floats(fa["fraction"]), _ints(fa["n_removed"])
    drel, dran = _floats(fa["delta_relevance"]), _floats(fa["delta_random"])
    for cid, s in _groups(ids).items():
        if cid in out:
            out[cid].faithfulness = {
                "fractions": frac[s].tolist(), "n_removed": nrem[s].tolist(),
                "relevance": [None if np.isnan(v) else float(v) for v in drel[s]],
                "random": [None if np.isnan(v) else float(v) for v in dran[s]]}


def _attach_graphs(conn: Connection, run_id: int, out: dict[int, CaseArrays]) -> None:
    heads = _fetch(conn, "SELECT t.case_id, t.node_layers, t.n_edges, t.mass_kept, "
                         f"t.formation_layer FROM graphs AS t {_RUN} ORDER BY t.case_id", run_id)
    ids = _ints(heads["case_id"])
    if ids.size == 0:
        return
    layers_json, n_edges = _objects(heads["node_layers"]), _ints(heads["n_edges"])
    mass, formation = _floats(heads["mass_kept"]), _ints(heads["formation_layer"])
    nodes = _fetch(conn, "SELECT t.case_id, t.layer, t.position, t.relevance FROM graph_nodes "
                         f"AS t {_RUN} ORDER BY t.case_id, t.layer, t.position", run_id)
    edges = _fetch(conn, "SELECT t.case_id, t.source_layer, t.source_position, t.target_layer, "
                         f"t.target_position, t.weight FROM graph_edges AS t {_RUN} "
                         "ORDER BY t.case_id, t.source_layer, t.source_position, t.target_layer, "
                         "t.target_position", run_id)
    node_groups, edge_groups = _groups(_ints(nodes["case_id"])), _groups(_ints(edges["case_id"]))
    n_cols = [_ints(nodes[k]) for k in ("layer", "position")] + [_floats(nodes["relevance"])]
    e_cols = [_ints(edges[k]) for k in ("source_layer", "source_position", "target_layer",
                                        "target_position")] + [_floats(edges["weight"])]
    for i, cid in enumerate(ids.tolist()):
        if cid not in out:
            continue
        ns, es = node_groups.get(cid, slice(0, 0)), edge_groups.get(cid, slice(0, 0))
        out[cid].graph = {
            "node_layers": json.loads(layers_json[i] or "[]"),
            "n_edges": int(n_edges[i]) if n_edges[i] >= 0 else None,
            "mass_kept": None if np.isnan(mass[i]) else float(mass[i]),
            "formation_layer": None if formation[i] < 0 else int(formation[i]),
            "nodes": np.stack([c[ns] for c in n_cols], axis=1) if ns.stop > ns.start
            else np.zeros((0, 3)),  # (n_nodes, 3): layer, position, relevance
            "edges": np.stack([c[es] for c in e_cols], axis=1) if es.stop > es.start
            else np.zeros((0, 5)),  # (n_edges, 5): src layer, src pos, dst layer, dst pos, w
        }
