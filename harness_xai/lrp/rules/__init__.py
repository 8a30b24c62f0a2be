"""LRP rules as modified gradients, one rule family per module (DESIGN.md §1.2).

Relevance of a tensor ``x`` is ``x ⊙ ∂̃Δℓ/∂x`` summed over the hidden dimension, where ``∂̃`` is the
gradient after these rules changed the backward pass of some operations (forward values unchanged).
Linear layers, residual additions, embeddings and RoPE keep the plain gradient (ε-rule, ε→0).
"""
