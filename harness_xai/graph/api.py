"""``graph(model, tokenizer, input_ids, target_id, foil_id, method, prune)``: the public entry point.

Algorithm:
1. Validate the inputs exactly like ``harness_xai.attribute`` (same ids, tokens, method, family).
2. ``fast``: the engine's one forward and one backward with the graph's per-block capture
   (``lrp.engine.explain(…, trace=True)``, checkpointed by default: only each block's input is
   kept; the run's ``--xai-graph`` gets the same capture from the pass that attributes the
   case). ``reference`` runs the definition inside ``with lrp(model, method)``
   (``reference.reference_edges``).
3. Streamed block by block (``Trace.layers()``): re-run one block from its kept input, build its
   ``LayerTrace``, compute its edges in chunks sized from the free memory (``budget``), prune,
   keep the edges, free the block. Peak memory: the kept inputs and output gradients, one
   block's working set and the kept edges. Unpruned: each block's dense (n, n) matrix
   (``fast.dense``). Pruned: only the target rows that pass the node threshold, chunk by chunk
   into a ``prune.Collector`` — no dense n×n is held; then ancestors of the output node.
   Reference: dense matrices, pruned afterwards by ``prune.prune_dense`` if asked.
4. Metrics (``Graph.metrics``, per block lists indexed by transition t−1 → t):
   ``layer_mass`` Σ|A| of the computed rows (all rows unpruned; rows passing the node threshold
   when pruned); ``cross_position_fraction`` the off-diagonal share of it (what attention moved
   between positions); ``mass_selected`` kept share after the mass/top-k/budget step (before
   ancestors, relative to the mass left after top-k); ``mass_kept(_per_layer)`` final kept share
   of ``layer_mass``; ``n_edges``, ``edges_per_layer``, ``n_nodes`` (nodes touched by a kept edge,
   plus the output node); ``formation_layer``: the shallowest node layer from which on (at it
   and every layer above) the output position holds at least half of the layer's Σ|R| — the
   depth by which the evidence behind Δℓ has been gathered into the answer position (0: the
   token itself already carries it; L: only the last block gathers it); ``seconds``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from harness_xai.errors import UserError
from harness_xai.graph import fast
from harness_xai.graph.prune import (Collector, Edges, Prune, ancestors, as_prune, n_entries,
                                     prune_dense, target_nodes)
from harness_xai.graph.reference import reference_edges
from harness_xai.lrp.adapters import adapter_for
from harness_xai.lrp.blocktrace import Trace
from harness_xai.lrp.engine import explain
from harness_xai.lrp.inputs import contrast_inputs
from harness_xai.lrp.methods import Method, get_method
from harness_xai.lrp.patch import lrp
from harness_xai.records import GraphRecord, TokenTarget


@dataclass
class Graph:
    """Cross-layer attribution graph of ``logit[target] − logit[foil]`` at the last position."""

    nodes: torch.Tensor  # (n_node_layers, n_tokens) node relevance; row 0 = embeddings
    #: one per transition (node layer l−1 → l): dense (n, n) [target j, source i] when unpruned,
    #: ``Edges`` (target, source, weight) when pruned
    edges: list[torch.Tensor | Edges]
    node_layers: list[str]  # ("emb", "1", …, "L")
    delta: float
    method: str
    input_ids: torch.Tensor  # (n_tokens,)
    target_id: int
    foil_id: int
    params: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)

    @property
    def pruned(self) -> bool:
        return bool(self.edges) and isinstance(self.edges[0], Edges)

    def sparse(self) -> list[Edges]:
        """Edges in COO form (a dense graph: every nonzero entry)."""
        if self.pruned:
            return list(self.edges)
        out = []
        for matrix in self.edges:
            tgt, src = torch.nonzero(matrix, as_tuple=True)
            out.append(Edges(tgt, src, matrix[tgt, src].float()))
        return out

    def kept_nodes(self) -> torch.Tensor:
        """(n_node_layers, n_tokens) bool: every node of a dense graph; for a pruned one the
        endpoints of kept edges and the output node."""
        if not self.pruned:
            return torch.ones_like(self.nodes, dtype=torch.bool)
        return _touched(self.edges, self.nodes.shape)

    def to_record(self) -> GraphRecord:
        """The graph as a ``records.GraphRecord`` (COO edges in node-layer coordinates); nodes
        outside a pruned graph get relevance 0 (the store keeps the non-zero ones)."""
        parts = self.sparse()
        layer_ids = [np.full(p.target.numel(), t, dtype=np.int32) for t, p in enumerate(parts, 1)]
        cat = (lambda xs, dtype: np.concatenate(xs).astype(dtype) if xs else np.zeros(0, dtype))
        target_layer = cat(layer_ids, np.int32)
        return GraphRecord(
            node_layers=list(self.node_layers),
            node_relevance=torch.where(self.kept_nodes(), self.nodes, 0.0).numpy().astype(np.float32),
            source_layer=target_layer - 1 if target_layer.size else target_layer,
            source_position=cat([p.source.numpy() for p in parts], np.int32),
            target_layer=target_layer,
            target_position=cat([p.target.numpy() for p in parts], np.int32),
            weight=cat([p.weight.numpy() for p in parts], np.float32),
            params=dict(self.params), metrics=dict(self.metrics))


def graph(model: nn.Module, tokenizer, input_ids, target_id, foil_id, method: str = "attnlrp",
          prune=None, *, impl: str = "fast", batch: int = 8,
          chunk_elements: int | None = None, checkpoint: bool = True) -> Graph:
    """Attribution graph between adjacent residual states (embeddings → block 1 → … → block L).

    ``prune``: None (dense matrices), True (paper defaults) or ``Prune`` / dict of its fields
    (``node_threshold``, ``mass``, ``top_k``, ``max_edges``, ``max_nodes``, ``ancestors``).
    ``impl="reference"`` computes the same edges by the definition (slow, ``batch`` target rows
    per pass). ``chunk_elements`` bounds the fast path's per-chunk temporaries (default: from
    free memory, ``graph.budget``); ``checkpoint=False`` keeps the engine's whole forward for
    its backward (one forward less, far more memory).
    """
    spec = get_method(method)
    if getattr(spec, "integrate", False):
        raise UserError(f"graphs need a one-backward method (attnlrp, cp-lrp, grad-x-input), "
                        f"not {spec.name!r}.")
    if impl not in ("fast", "reference"):
        raise UserError(f"graph impl={impl!r} is not one of: fast, reference.")
    pruning = as_prune(prune)
    adapter = adapter_for(model)
    ids, target, foil = contrast_inputs(model, tokenizer, input_ids, target_id, foil_id)
    started = time.perf_counter()
    if impl == "fast":
        objective = TokenTarget(tuple(ids[0].tolist()), target, foil)
        traced = explain(model, [objective], spec, states=False, trace=True,
                         checkpoint=checkpoint)[0].trace
        return graph_from_trace(traced, spec, pruning, objective, chunk_elements, started)
    metrics: dict = {}
    with torch.inference_mode(False), torch.enable_grad(), lrp(model, spec):
        nodes, dense, delta = reference_edges(model, adapter, ids, target, foil, batch=batch)
    edges: list = dense if pruning is None else prune_dense(nodes, dense, pruning)
    _dense_metrics(metrics, dense, nodes, pruning, edges)
    return _finish(nodes, edges, delta, spec, "reference", pruning, metrics, started,
                   TokenTarget(tuple(ids[0].tolist()), target, foil))


def graph_from_trace(traced: Trace, method: str | Method, prune, objective: TokenTarget,
                     chunk_elements: int | None = None, started: float | None = None) -> Graph:
    """Steps 3–4 of the fast path on the engine's per-block capture of ``objective`` (streams
    the capture: each block's kept tensors are released as its edges are done)."""
    spec = get_method(method)
    pruning = as_prune(prune)
    started = time.perf_counter() if started is None else started
    metrics: dict = {}
    nodes = traced.nodes
    with torch.no_grad():
        if pruning is None:
            edges: list = []
            for layer in traced.layers():
                edges.append(fast.dense(layer, chunk_elements))
                del layer  # one block's LayerTrace alive at a time
            _dense_metrics(metrics, edges, nodes, None, edges)
        else:
            edges = _pruned(traced, pruning, chunk_elements, metrics)
    return _finish(nodes, edges, traced.delta, spec, "fast", pruning, metrics, started, objective)


def _finish(nodes, edges, delta, spec, impl, pruning, metrics, started, objective) -> Graph:
    L, n = nodes.shape[0] - 1, nodes.shape[1]
    _common_metrics(metrics, nodes, edges, pruning)
    metrics["seconds"] = round(time.perf_counter() - started, 4)
    params = {"method": spec.name, **dict(getattr(spec, "params", {})), "impl": impl,
              "prune": None if pruning is None else pruning.as_dict(),
              "output_node": [L, n - 1]}
    return Graph(nodes=nodes, edges=edges, node_layers=["emb", *map(str, range(1, L + 1))],
                 delta=delta, method=spec.name,
                 input_ids=torch.as_tensor(objective.input_ids, dtype=torch.long),
                 target_id=objective.target, foil_id=objective.foil, params=params,
                 metrics=metrics)


def _pruned(tr, spec: Prune, chunk_elements, metrics) -> list[Edges]:
    selected, mass_all, mass_sel, cross = [], [], [], []
    for t, layer in enumerate(tr.layers(), start=1):
        targets = target_nodes(tr.nodes[t], spec)
        collector = Collector(spec, n_entries(targets, spec))
        if targets.numel():
            step = fast.chunk_size(layer, int(targets[-1]) + 1, chunk_elements)
            for start in range(0, targets.numel(), step):
                rows = targets[start:start + step]
                last = start + step >= targets.numel()  # re-check the attention once per block
                collector.add(rows, fast.rows(layer, rows, check=last).cpu())
        edges = collector.finish()
        selected.append(edges)
        mass_all.append(collector.mass_all)
        mass_sel.append(float(edges.weight.abs().double().sum()) / collector.mass
                        if collector.mass else 1.0)
        cross.append(collector.mass_cross / collector.mass_all if collector.mass_all else 0.0)
        del layer  # one block's LayerTrace alive at a time
    metrics["layer_mass"] = mass_all
    metrics["mass_selected"] = mass_sel
    metrics["cross_position_fraction"] = cross
    n = tr.nodes.shape[1]
    return ancestors(selected, n - 1) if spec.ancestors else selected


def _dense_metrics(metrics, dense, nodes, pruning, edges) -> None:
    mass_all, cross, mass_sel = [], [], []
    for matrix in dense:
        size = matrix.abs().double()
        total = float(size.sum())
        mass_all.append(total)
        cross.append((total - float(size.diagonal().sum())) / total if total else 0.0)
    metrics["layer_mass"] = mass_all
    metrics["cross_position_fraction"] = cross
    if pruning is not None:  # selection before ancestors, recomputed for the record
        unpruned = prune_dense(nodes, dense, Prune(**{**pruning.as_dict(), "ancestors": False}))
        for t, (matrix, sel) in enumerate(zip(dense, unpruned), start=1):
            rows = target_nodes(nodes[t], pruning)
            block = matrix[rows].abs()
            if pruning.top_k is not None and pruning.top_k < block.shape[1]:
                block = block.topk(pruning.top_k, dim=1).values
            total = float(block.double().sum())
            mass_sel.append(float(sel.weight.abs().double().sum()) / total if total else 1.0)
        metrics["mass_selected"] = mass_sel


def _common_metrics(metrics, nodes, edges, pruning) -> None:
    n = nodes.shape[1]
    if edges and isinstance(edges[0], Edges):
        kept = [float(e.weight.abs().double().sum()) for e in edges]
        counts = [int(e.weight.numel()) for e in edges]
        metrics["n_nodes"] = int(_touched(edges, nodes.shape).sum())
    else:
        kept = list(metrics["layer_mass"])
        counts = [int((m != 0).sum()) for m in edges]
        metrics["n_nodes"] = int(nodes.numel())
    metrics["n_edges"] = sum(counts)
    metrics["edges_per_layer"] = counts
    total = sum(metrics["layer_mass"])
    metrics["mass_kept"] = sum(kept) / total if total else 1.0
    metrics["mass_kept_per_layer"] = [k / m if m else 1.0 for k, m in zip(kept, metrics["layer_mass"])]
    metrics["formation_layer"] = formation_layer(nodes)


def _touched(edges: list[Edges], shape) -> torch.Tensor:
    mask = torch.zeros(shape, dtype=torch.bool)
    mask[-1, -1] = True  # the output node
    for t, e in enumerate(edges, start=1):
        mask[t, e.target] = True
        mask[t - 1, e.source] = True
    return mask


def formation_layer(nodes: torch.Tensor) -> int:
    """Shallowest layer l such that for l and every layer above, the last position holds ≥ ½ of
    the layer's Σ|R| (see the module docstring)."""
    size = nodes.abs().double()
    share = size[:, -1] / size.sum(1).clamp_min(1e-300)  # (L + 1,)
    layer = nodes.shape[0] - 1
    while layer > 0 and share[layer - 1] >= 0.5:
        layer -= 1
    return int(layer)
