"""Slow, explicit reference implementation of AttnLRP and CP-LRP (DESIGN.md §1.2), for testing.

The efficient engine (``harness_xai.lrp``) computes relevance as ``x ⊙ ∂̃Δℓ/∂x`` with modified
gradients. This package computes the same quantities without any gradient: a float64
re-implementation of each family's forward pass, then relevance passed backwards layer by layer
as explicit messages written from the rule formulas (``rules.py``).

Algorithm:
1. ``read_model``: copy the HF model's weights to float64 and describe its structure (``spec.py``).
2. ``run``: the float64 forward pass on one sequence, keeping every intermediate (``forward.py``).
3. ``propagate``: relevance from ``R(logits) = y ⊙ (e_target − e_foil)`` at the last position down
   to the token embeddings, by the rules of the chosen method (``propagation.py``).
4. Package the per-position sums in the engine's conventions (``ReferenceAttribution``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from harness_xai.lrp.reference.forward import ForwardPass, run
from harness_xai.lrp.reference.propagation import SHARES, Ledger, propagate
from harness_xai.lrp.reference.spec import ModelSpec, read_model

__all__ = ["METHODS", "ForwardPass", "ModelSpec", "ReferenceAttribution", "read_model",
           "reference_attribute", "reference_forward", "run"]

METHODS = tuple(SHARES)


@dataclass
class ReferenceAttribution:
    """Float64 relevances in the conventions of ``harness_xai.lrp.Attribution``."""

    tokens: torch.Tensor  # (n,) relevance of the token embeddings
    layers: torch.Tensor  # (n_layers + 1, n): row 0 embeddings, row l output of block l
    #: kind → (n_layers, n), row l-1 = block l: "attn", "mlp" (branch outputs added to the
    #: residual) and "mid" (h + attn branch; only when every block is sequential)
    states: dict[str, torch.Tensor]
    heads: torch.Tensor  # (n_layers, n_heads, n): each head's output (input of the output projection)
    delta: float  # y[target] − y[foil] at the last position (y: the logits the model outputs)
    logits: torch.Tensor  # (n, vocab) float64 logits of the reference forward
    ledger: Ledger  # relevance absorbed by biases, positions, softmax (Σ tokens + total = delta)
    method: str
    #: MoE: (n_layers, n_experts, n) relevance of each expert's weighted output (dense layers 0);
    #: None for dense models
    experts: torch.Tensor | None = None


def reference_forward(model: nn.Module, input_ids) -> torch.Tensor:
    """Float64 logits (n, vocab) of ``model`` on one sequence, computed by the reference."""
    return run(read_model(model), _ids(input_ids)).logits


def reference_attribute(model: nn.Module, input_ids, target_id: int, foil_id: int,
                        method: str = "attnlrp") -> ReferenceAttribution:
    """Relevance of ``y[target_id] − y[foil_id]`` at the last position, by explicit messages."""
    fwd = run(read_model(model), _ids(input_ids))
    rel, delta, _ = propagate(fwd, int(target_id), int(foil_id), method)
    states = {"attn": torch.stack(rel.attn), "mlp": torch.stack(rel.mlp)}
    if all(m is not None for m in rel.mid):
        states["mid"] = torch.stack(rel.mid)
    layers = torch.stack(rel.layers)
    experts = None
    if any(e is not None for e in rel.experts):
        shape = next(e for e in rel.experts if e is not None).shape
        experts = torch.stack([torch.zeros(shape, dtype=torch.float64) if e is None else e
                               for e in rel.experts])
    return ReferenceAttribution(tokens=layers[0].clone(), layers=layers, states=states,
                                heads=torch.stack(rel.heads), delta=delta, logits=fwd.logits,
                                ledger=rel.ledger, method=method, experts=experts)


def _ids(input_ids) -> torch.Tensor:
    ids = torch.as_tensor(input_ids, dtype=torch.long).cpu()
    return ids.reshape(-1)
