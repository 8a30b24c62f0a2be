"""Pruning of attribution graphs: which target nodes, which edges, which ancestors.

Per transition ``t−1 → t`` (the paper's order, with two optional budgets):
1. Target nodes: rows ``j`` with ``|R_t(j)| ≥ node_threshold · max_j |R_t(j)|`` (relative to the
   layer's largest node, so the threshold does not depend on the scale of Δℓ), at most
   ``max_nodes`` of them (largest ``|R|``). Only these rows are ever computed.
2. Optional ``top_k``: each target keeps its ``k`` largest ``|A|`` sources.
3. Cumulative mass ``p`` (``mass``): keep the largest ``|A|`` of the layer until their sum
   reaches ``p`` of the layer's mass (all entries left after 1–2); zeros are never kept.
4. Optional ``max_edges``: at most that many edges per transition (the largest).
5. Ancestors (``ancestors=True``): keep only edges on a path to the output node (last position,
   last block), found top-down.

Chunked selection (``Collector``) never holds a dense n×n: per chunk it adds the chunk's mass and
keeps a candidate entry only if it can still be selected. A sorted entry ``a`` is selected iff the
entries from it downwards carry more than ``(1−p)·M``; they carry at most ``a·N`` (``N`` entries in
all), so ``a·N ≤ (1−p)·M_sofar`` (``M_sofar ≤ M``) rules ``a`` out for good. With ``max_edges`` the
candidates are also capped at the largest ``max_edges`` (what step 4 keeps of any superset).
``prune_dense`` is the same selection written plainly on dense matrices (the test oracle).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import NamedTuple

import torch

from harness_xai.errors import UserError


class Edges(NamedTuple):
    """Sparse edges of one transition (COO): ``weight[e]`` flows source → target."""

    target: torch.Tensor  # (n_edges,) int64 target position (block t)
    source: torch.Tensor  # (n_edges,) int64 source position (state t−1)
    weight: torch.Tensor  # (n_edges,) float32 A[target, source]


@dataclass(frozen=True)
class Prune:
    """Pruning options (defaults: the paper's 0.01 node threshold and 85 % mass)."""

    node_threshold: float = 0.01
    mass: float | None = 0.85
    top_k: int | None = None
    max_edges: int | None = None
    max_nodes: int | None = None
    ancestors: bool = True

    def __post_init__(self):
        if not 0 <= self.node_threshold <= 1:
            raise UserError(f"graph node_threshold={self.node_threshold} must be in [0, 1].")
        if self.mass is not None and not 0 < self.mass <= 1:
            raise UserError(f"graph mass={self.mass} must be in (0, 1] (e.g. 0.85).")
        for name in ("top_k", "max_edges", "max_nodes"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or value < 1):
                raise UserError(f"graph {name}={value!r} must be a positive integer or None.")

    def as_dict(self) -> dict:
        return asdict(self)


def as_prune(prune) -> Prune | None:
    """``None`` | ``True`` (defaults) | ``Prune`` | dict of ``Prune`` fields → ``Prune`` or None."""
    if prune is None or prune is False:
        return None
    if prune is True:
        return Prune()
    if isinstance(prune, Prune):
        return prune
    if isinstance(prune, dict):
        unknown = set(prune) - set(Prune.__dataclass_fields__)
        if unknown:
            raise UserError(f"unknown graph pruning option(s) {sorted(unknown)}; known: "
                            f"{', '.join(Prune.__dataclass_fields__)}.")
        return Prune(**prune)
    raise UserError(f"prune must be None, True, a dict or harness_xai.graph.Prune, got {prune!r}.")


def target_nodes(relevance: torch.Tensor, spec: Prune) -> torch.Tensor:
    """Sorted positions (int64) of the target nodes kept for one layer (step 1)."""
    size = relevance.abs()
    top = size.max()
    keep = (size > 0) & (size >= spec.node_threshold * top)
    idx = torch.nonzero(keep).flatten()
    if spec.max_nodes is not None and idx.numel() > spec.max_nodes:
        idx = idx[size[idx].topk(spec.max_nodes).indices]
    return idx.sort().values


def n_entries(targets: torch.Tensor, spec: Prune) -> int:
    """Entries left after step 2 for causal rows ``targets`` (an upper bound on nonzeros)."""
    lengths = targets + 1
    if spec.top_k is not None:
        lengths = lengths.clamp(max=spec.top_k)
    return int(lengths.sum())


class Collector:
    """Steps 2–4 for one transition, fed chunk by chunk with rows of A."""

    def __init__(self, spec: Prune, n_total: int):
        self.spec, self.n_total = spec, n_total
        self.mass_all = 0.0  # Σ|A| of every computed entry
        self.mass_cross = 0.0  # Σ|A| off the diagonal
        self.mass = 0.0  # Σ|A| after top-k (the layer's mass of step 3)
        self.parts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self.size = 0
        self.limit = 1 << 20

    def add(self, targets: torch.Tensor, block: torch.Tensor) -> None:
        """``block`` (c, e): rows ``targets`` of A over sources ``0..e−1``."""
        c, e = block.shape
        size = block.abs()
        diag = size[torch.arange(c), targets].sum().item()
        total = size.sum().item()
        self.mass_all += total
        self.mass_cross += total - diag
        if self.spec.top_k is not None and self.spec.top_k < e:
            vals, src = size.topk(self.spec.top_k, dim=1)  # (c, k)
            tgt = targets[:, None].expand_as(src)
            weight = block.gather(1, src)
            self.mass += vals.sum().item()
        else:
            tgt, src = targets[:, None].expand(c, e), torch.arange(e)[None].expand(c, e)
            weight, vals = block, size
            self.mass += total
        keep = vals > self._floor()
        self._push(tgt[keep], src[keep], weight[keep])

    def _floor(self) -> float:
        if self.spec.mass is None:
            return 0.0
        return (1 - self.spec.mass) * self.mass / max(1, self.n_total)

    def _push(self, tgt, src, weight) -> None:
        self.parts.append((tgt.cpu(), src.cpu(), weight.cpu()))
        self.size += weight.numel()
        cap = self.spec.max_edges
        if self.size > (2 * cap if cap is not None else self.limit):
            self._compact()

    def _compact(self) -> None:
        tgt, src, weight = (torch.cat(x) for x in zip(*self.parts))
        keep = weight.abs() > self._floor()
        tgt, src, weight = tgt[keep], src[keep], weight[keep]
        cap = self.spec.max_edges
        if cap is not None and weight.numel() > cap:
            top = weight.abs().topk(cap).indices
            tgt, src, weight = tgt[top], src[top], weight[top]
        self.parts, self.size = [(tgt, src, weight)], weight.numel()
        if cap is None:
            self.limit = max(self.limit, 2 * self.size)

    def finish(self) -> Edges:
        if not self.parts:
            empty = torch.zeros(0, dtype=torch.int64)
            return Edges(empty, empty.clone(), torch.zeros(0))
        tgt, src, weight = (torch.cat(x) for x in zip(*self.parts))
        self.parts = []
        return select(tgt, src, weight, self.mass, self.spec)


def select(tgt, src, weight, mass: float, spec: Prune) -> Edges:
    """Steps 3–4 on candidate entries (a superset of what they keep); ``mass`` = the layer's M."""
    order = weight.abs().argsort(descending=True)
    tgt, src, weight = tgt[order], src[order], weight[order]
    nonzero = int((weight != 0).sum())
    tgt, src, weight = tgt[:nonzero], src[:nonzero], weight[:nonzero]
    if spec.mass is not None and nonzero:
        cumulative = weight.abs().double().cumsum(0)
        cut = int(torch.searchsorted(cumulative, torch.tensor([spec.mass * mass],
                                                              dtype=torch.float64)))
        tgt, src, weight = tgt[:cut + 1], src[:cut + 1], weight[:cut + 1]
    if spec.max_edges is not None:
        tgt, src, weight = tgt[:spec.max_edges], src[:spec.max_edges], weight[:spec.max_edges]
    return Edges(tgt.long(), src.long(), weight.float())


def ancestors(edges: list[Edges], output: int) -> list[Edges]:
    """Keep the edges on a path to node ``output`` of the last layer (step 5), top-down."""
    frontier = torch.tensor([output])
    kept: list[Edges] = []
    for layer in reversed(edges):
        keep = torch.isin(layer.target, frontier)
        kept.append(Edges(layer.target[keep], layer.source[keep], layer.weight[keep]))
        frontier = torch.unique(layer.source[keep])
    return kept[::-1]


def prune_dense(nodes: torch.Tensor, dense: list[torch.Tensor], spec: Prune) -> list[Edges]:
    """Steps 1–5 on dense matrices, written plainly (the oracle of ``Collector``)."""
    out = []
    for t, matrix in enumerate(dense, start=1):
        rows = target_nodes(nodes[t], spec)
        block = matrix[rows]  # (r, n)
        if spec.top_k is not None and spec.top_k < block.shape[1]:
            src = block.abs().topk(spec.top_k, dim=1).indices
        else:
            src = torch.arange(block.shape[1])[None].expand_as(block)
        tgt = rows[:, None].expand_as(src)
        weight = block.gather(1, src)
        mass = float(weight.abs().double().sum())
        out.append(select(tgt.flatten(), src.flatten(), weight.flatten(), mass, spec))
    return ancestors(out, nodes.shape[1] - 1) if spec.ancestors else out
