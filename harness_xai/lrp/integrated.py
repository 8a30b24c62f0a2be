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
"""

from __future__ import annotations

import torch
from torch import nn

from harness_xai.lrp.capture import StateCapture, trapezoid_pair


def integrated_gradients(model: nn.Module, capture: StateCapture, embeddings: torch.Tensor,
                         target: int, foil: int, params: dict) -> tuple[torch.Tensor, float, float]:
    """(token relevance (n,) fp32 on the CPU, Δℓ(input), Δℓ(baseline))."""
    from harness_xai.lrp.attribute import forward_backward

    steps, batch = int(params["steps"]), int(params["batch_size"])
    alphas = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64)  # (m + 1,)
    tokens = torch.zeros(embeddings.shape[1], dtype=torch.float32)  # (n,)
    deltas = torch.zeros(steps + 1, dtype=torch.float32)  # (m + 1,)
    base = baseline(model, embeddings, params["baseline"])  # (1, n, d)
    start = 0
    while start < steps:
        stop = min(start + batch - 1, steps)  # chunk = points start..stop (shares `start`)
        a = alphas[start:stop + 1].to(embeddings.device, embeddings.dtype)  # (b,) → (b, n, d)
        path = (base + a[:, None, None] * (embeddings - base)).detach().requires_grad_(True)
        chunk_deltas, grad = forward_backward(model, capture, path, target, foil)
        tokens += trapezoid_pair(path.detach(), grad).sum((0, 2)).cpu()
        deltas[start:stop + 1] = chunk_deltas
        start = stop
    return tokens, float(deltas[-1]), float(deltas[0])


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
