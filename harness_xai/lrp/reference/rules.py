"""The LRP rules of AttnLRP / CP-LRP written as explicit relevance messages (no autograd).

Every rule takes the relevance ``R_out`` of an operation's output (same shape as the output) and
the forward values it needs, and returns the relevance of its input(s). A rule that spreads
relevance over a sum first forms the *messages* ``R_{i←j}`` (one per term ``i`` of output ``j``),
then sums them over ``j``:

1. ε-rule, ε → 0 (linear maps, residual sums, RoPE, the LayerNorm centering):
   ``R_{i←j} = x_i W_ji · R_j / z_j`` with ``z_j = Σ_i x_i W_ji + b_j``; the bias term keeps
   ``b_j R_j / z_j`` (it absorbs relevance). Division by ``z_j = 0`` yields a zero message
   (the only place a stabiliser is used).
2. Identity rule (RMSNorm and LayerNorm with ``1/σ`` held constant, elementwise activations,
   tanh soft-caps, constant scalings): ``R_in = R_out``.
3. Uniform rule on a product of two inputs: each factor receives the fraction ``share`` of the
   product's relevance (``½`` each for AttnLRP); on a bilinear *sum* (a matmul) the share is
   distributed over the terms by the ε-rule.
4. Softmax (the rule that equals grad × input through the softmax, Achtibat et al. 2024):
   ``R_s[i,j] = s_ij · (R_a[i,j] − a_ij Σ_k R_a[i,k])``.

All arrays are float64; messages are materialised, so the memory is that of the largest message
tensor (positions × outputs × inputs): meant for small models.
"""

from __future__ import annotations

import torch

Tensor = torch.Tensor


def ratio(r: Tensor, z: Tensor) -> Tensor:
    """``R / z`` elementwise, 0 where ``z == 0`` (a message from a zero output is zero)."""
    nonzero = z != 0
    return torch.where(nonzero, r / torch.where(nonzero, z, torch.ones_like(z)), torch.zeros_like(r))


def linear_eps(x: Tensor, weight: Tensor, z: Tensor, r_out: Tensor,
               chunk: int = 64) -> tuple[Tensor, Tensor]:
    """ε-rule for ``z = W x + b`` at every position.

    ``R_x[n,i] = Σ_j x[n,i] · W[j,i] · R_z[n,j] / z[n,j]``; the bias absorbs
    ``Σ_j b_j R_z[n,j] / z[n,j]``, returned as ``Σ R_z − Σ R_x`` per position.
    Shapes: ``x`` (n, in), ``weight`` (out, in), ``z``/``r_out`` (n, out) → ((n, in), (n,)).
    """
    q = ratio(r_out, z)  # (n, out)
    r_in = torch.empty_like(x)
    for s in range(0, x.shape[0], chunk):  # messages (chunk, out, in)
        messages = x[s:s + chunk, None, :] * weight[None] * q[s:s + chunk, :, None]
        r_in[s:s + chunk] = messages.sum(1)
    return r_in, r_out.sum(-1) - r_in.sum(-1)


def sum_split(terms: list[Tensor], total: Tensor, r_total: Tensor) -> list[Tensor]:
    """ε-rule for an elementwise sum ``z = Σ_k a_k`` (residual connections, embeddings + positions):
    ``R_{a_k} = a_k · R_z / z`` (proportional split)."""
    q = ratio(r_total, total)
    return [a * q for a in terms]


def identity(r_out: Tensor) -> Tensor:
    """Identity rule ``R_in = R_out``: RMSNorm ``w ⊙ x / σ`` with ``σ`` constant (a diagonal linear
    map, so the ε-rule returns ``R_out`` unchanged), elementwise activations ``f(x)``, tanh
    soft-caps ``c · tanh(s / c)`` and multiplication by a constant (attention scaling)."""
    return r_out


def layer_norm_identity(x: Tensor, centred: Tensor, scaled: Tensor, y: Tensor,
                        r_out: Tensor) -> tuple[Tensor, Tensor]:
    """LayerNorm ``y = u + b``, ``u = (w / σ) ⊙ c``, ``c = C x``, ``C = I − 𝟙𝟙ᵀ/d``, σ constant.

    1. Bias (ε-rule on the sum): ``R_u = u ⊙ R_y / y``; ``b`` keeps ``b ⊙ R_y / y``.
    2. Diagonal map ``w / σ``: ``R_c = R_u``.
    3. Centering (ε-rule): ``R_x[i] = Σ_k x_i C_ki R_c[k] / c_k``.
    Shapes: all (n, d) → ((n, d), absorbed (n,)).
    """
    r_u = sum_split([scaled], y, r_out)[0]
    r_c = identity(r_u)
    d = x.shape[-1]
    centering = torch.eye(d, dtype=x.dtype) - 1.0 / d  # C[k, i]
    messages = x[:, None, :] * centering[None] * ratio(r_c, centred)[:, :, None]  # (n, k, i)
    r_in = messages.sum(1)
    return r_in, r_out.sum(-1) - r_in.sum(-1)


def product_uniform(r_out: Tensor, share: float = 0.5) -> tuple[Tensor, Tensor]:
    """Uniform rule on ``y = a ⊙ b``: ``R_a = share · R_y``, ``R_b = (1 − share) · R_y``
    (``share = 0``: ``a`` held constant, CP-LRP's gate — signal-take-all)."""
    return share * r_out, (1.0 - share) * r_out


def matmul_uniform(a: Tensor, b: Tensor, out: Tensor, r_out: Tensor, share_a: float,
                   share_b: float) -> tuple[Tensor, Tensor]:
    """Uniform rule on a bilinear sum ``out[i,k] = Σ_j a[i,j] b[j,k]`` (batched over heads).

    Messages ``m[i,j,k] = a[i,j] b[j,k] · R_out[i,k] / out[i,k]``; then
    ``R_a[i,j] = share_a · Σ_k m[i,j,k]`` and ``R_b[j,k] = share_b · Σ_i m[i,j,k]``
    (AttnLRP: ``½, ½``; with one factor constant: ``0, 1``).
    Shapes: ``a`` (H, I, J), ``b`` (H, J, K), ``out``/``r_out`` (H, I, K).
    """
    messages = a[..., :, :, None] * b[..., None, :, :] * ratio(r_out, out)[..., :, None, :]
    return share_a * messages.sum(-1), share_b * messages.sum(-3)


def softmax_rule(s: Tensor, a: Tensor, r_a: Tensor, allowed: Tensor) -> Tensor:
    """Softmax ``a_ij = exp(s_ij) / Σ_k exp(s_ik)`` over the allowed keys of row ``i``:
    ``R_s[i,j] = s_ij · (R_a[i,j] − a_ij · Σ_k R_a[i,k])`` for allowed ``j``, 0 for masked ones.

    This equals ``s ⊙ ∂(Σ_k a_ik R_a[i,k]/a_ik)/∂s``, i.e. grad × input with the incoming
    gradient ``R_a / a``. Shapes: (H, n, n); ``allowed`` (n, n) bool.
    """
    row = r_a.sum(-1, keepdim=True)  # (H, n, 1)
    return torch.where(allowed, s * (r_a - a * row), torch.zeros_like(s))


def rope_matrices(cos: Tensor, sin: Tensor, head_dim: int) -> Tensor:
    """Per position ``p`` the matrix ``M_p`` with ``rope(x)_p = M_p x``: on the first ``rot`` dims
    ``M = diag(cos) + diag(sin) · P`` (``P`` = rotate_half: ``(−x₂, x₁)``), identity on the rest.
    Shapes: ``cos``/``sin`` (n, rot) → (n, head_dim, head_dim)."""
    n, rot = cos.shape
    half = rot // 2
    rotate = torch.zeros(rot, rot, dtype=cos.dtype)  # rotate_half(x) = rotate @ x
    rotate[torch.arange(half), torch.arange(half) + half] = -1.0
    rotate[torch.arange(half) + half, torch.arange(half)] = 1.0
    m = torch.eye(head_dim, dtype=cos.dtype).repeat(n, 1, 1)
    m[:, :rot, :rot] = torch.diag_embed(cos) + sin[:, :, None] * rotate[None]
    return m


def rope_eps(x: Tensor, matrices: Tensor, y: Tensor, r_out: Tensor) -> Tensor:
    """ε-rule for RoPE ``y[p,h] = M_p x[p,h]``: ``R_x[p,h,e] = Σ_d x[p,h,e] M_p[d,e] R_y[p,h,d] /
    y[p,h,d]`` (rotation mixes pairs of dims; conservative since there is no bias).
    Shapes: ``x``/``y``/``r_out`` (n, H, hd), ``matrices`` (n, hd, hd)."""
    messages = x[:, :, None, :] * matrices[:, None] * ratio(r_out, y)[..., None]  # (n, H, d, e)
    return messages.sum(-2)
