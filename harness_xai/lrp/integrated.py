"""Integrated gradients of Δℓ from a baseline embedding, batched over the path.

Algorithm (``steps`` = m intervals, ``batch_size`` = B rows per pass):
1. Path points ``e_k = b + α_k · (e − b)`` with ``α_k = k/m``, k = 0..m (``e`` the input
   embeddings, (1, n, d); ``b`` the baseline, every position alike: the mean of all token
   embeddings (``mean-embedding``, computed through the embedding module in vocabulary chunks,
   so scaled embeddings stay scaled) or zeros (``zero``). Position embeddings a model adds
   inside, e.g. GPT-2's ``wpe``, stay as they are.
2. Passes over chunks of consecutive points ``[k₀ … k₁]`` (at most B points); neighbouring chunks
   share their boundary point, so every interval (k−1, k) lies in exactly one chunk. One batched
   forward + plain backward per chunk gives Δℓ(e_k) and g_k = ∂Δℓ/∂e_k for each of its points
   (rows are independent, so the gradient of the chunk's sum is each row's own).
3. Token relevance ``R = Σ_hidden Σ_k (e_k − e_{k−1}) ⊙ (g_k + g_{k−1})/2`` (trapezoid rule), so
   ``Σ_i R_i ≈ Δℓ(e) − Δℓ(0)`` with an O(1/m²) error for a smooth Δℓ. Internal states get the
   same rule on their own path ``h(α_k)`` (conductance; the capture's ``trapezoid_pair``), so each
   block output's relevance also sums to ≈ Δℓ(e) − Δℓ(0).
Cost: m + ⌈m/(B − 1)⌉ path rows forward and backward (vs. one row for LRP); memory × B.
The passes are the engine's own (``engine.explain`` runs them over ``Path.chunks()``).
"""

from __future__ import annotations

import torch
from torch import nn

from harness_xai.lrp.states import trapezoid_pair


class Path:
    """Steps 1–3 for one input: ``chunks()`` yields the path points of each pass as a leaf
    (b, n, d) that requires grad; ``add(points, grad, deltas)`` takes the pass's gradient and
    Δℓ per point (the engine's pass computes them)."""

    def __init__(self, model: nn.Module, embeddings: torch.Tensor, params: dict):
        self.embeddings = embeddings  # (1, n, d)
        self.steps, self.batch = int(params["steps"]), int(params["batch_size"])
        self.alphas = torch.linspace(0.0, 1.0, self.steps + 1, dtype=torch.float64)  # (m + 1,)
        self.tokens = torch.zeros(embeddings.shape[1], dtype=torch.float32)  # (n,)
        self.deltas = torch.zeros(self.steps + 1, dtype=torch.float32)  # (m + 1,)
        self.base = baseline(model, embeddings, params["baseline"])  # (1, n, d)
        self._start = 0

    def chunks(self):
        start = 0
        while start < self.steps:
            stop = min(start + self.batch - 1, self.steps)  # chunk = points start..stop
            a = self.alphas[start:stop + 1].to(self.embeddings.device, self.embeddings.dtype)
            self._start = start
            yield (self.base + a[:, None, None] * (self.embeddings - self.base)) \
                .detach().requires_grad_(True)  # (b, n, d)
            start = stop  # neighbouring chunks share their boundary point

    def add(self, points: torch.Tensor, grad: torch.Tensor, deltas) -> None:
        self.tokens += trapezoid_pair(points.detach(), grad).sum((0, 2)).cpu()
        self.deltas[self._start:self._start + len(deltas)] = torch.tensor(deltas)

    @property
    def end_delta(self) -> float:
        return float(self.deltas[-1])

    @property
    def start_delta(self) -> float:
        return float(self.deltas[0])


@torch.no_grad()
def baseline(model: nn.Module, embeddings: torch.Tensor, kind: str,
             chunk: int = 4096) -> torch.Tensor:
    """The baseline embeddings (1, n, d): zeros, or the mean over the vocabulary of the
    embedding module's output (so e.g. Gemma's √d scaling applies)."""
    if kind == "zero":
        return torch.zeros_like(embeddings)
    module = model.get_input_embeddings()
    vocab = module.weight.shape[0]
    total = torch.zeros(embeddings.shape[-1], dtype=torch.float64, device=embeddings.device)
    for first in range(0, vocab, chunk):
        ids = torch.arange(first, min(first + chunk, vocab), device=embeddings.device)
        total += module(ids[None])[0].double().sum(0)
    return (total / vocab).to(embeddings.dtype).expand_as(embeddings)
