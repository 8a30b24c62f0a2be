"""The graph's per-block capture, taken inside the engine's one forward and one backward.

The graph's edges between residual states ``h_{l-1}`` and ``h_l`` mix positions only inside
block ``l``'s attention. ``BlockTrace`` records, under the engine's rules (``with lrp(model, …)``),
as an option of the engine's pass (``harness_xai.lrp.engine.explain(…, trace=True)``):

1. A recording attention kernel ``xgraph_<base>`` (registered like the engine's own wrapper, and
   wrapping whatever kernel is active — the engine's rule wrapper included) keeps each block's
   query, key and value exactly as the kernel receives them (after RoPE and q/k norms; keys and
   values per kv-head, so GQA is native), the mask, ``scaling``, ``softcap`` and the kernel's
   output ``o`` (per head, before the output projection). Forward hooks keep each block's output.
2. Linear parts, by a double backward per block (no per-family code): ``w = J̃ᵀ u`` is the rule-
   modified vector–Jacobian product of (k, v) w.r.t. ``h_{l-1}`` built with ``create_graph``;
   it is linear in ``u``, so ``∂⟨w, h_{l-1}⟩/∂u = J̃ h_{l-1}`` = ``k̃``, ``ṽ``: the parts of k and
   v that are linear in the source state (biases, position embeddings removed; the norm's
   ``1/σ`` held at its forward value). Projections are position-local, so one pass covers all
   positions. For block 1 the source is the embedding leaf, so anything the model adds before
   the first block (GPT-2's ``wpe``, Gemma's scale) is handled by the same autograd graph.
3. The engine's one global backward of Δℓ also gives ``g_l = ∂̃Δℓ/∂h_l`` (node relevance ``R_l = Σ_d h_l ⊙ g_l``),
   ``γ = ∂̃Δℓ/∂o`` (what the graph calls ``∂̃⟨h_l[j], g_l[j]⟩/∂o[j]``: everything after attention
   is position-local) and ``G_k``, ``G_v`` (gradients at k and v, the rule's scales included).
4. ``local_l(j) = R_{l-1}(j) − ⟨k̃[j], G_k[j]⟩ − ⟨ṽ[j], G_v[j]⟩``: the part of the column sum that
   does not leave position j through a key or a value (residual, query, MLP paths).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import torch
from torch import nn

from harness_xai.lrp.adapters import Adapter
from harness_xai.lrp.methods import Method

_PREFIX = "xgraph_"


@dataclass
class AttnCall:
    """One attention kernel call, as the kernel saw it (graph attached)."""

    q: torch.Tensor  # (1, H, n, hd)
    k: torch.Tensor  # (1, KV, n, hd)
    v: torch.Tensor  # (1, KV, n, hd)
    mask: torch.Tensor | None  # (1|H, n, n_k) bool (True = attend) or additive float; None = causal
    scaling: float
    softcap: float | None
    out: torch.Tensor  # (1, n, H, hd) kernel output before the output projection
    sinks: torch.Tensor | None = None  # (H,) gpt-oss attention sinks (``s_aux``): extra logits


@dataclass
class LayerTrace:
    """What the fast rows of block ``l`` need (fp32, batch dimension dropped)."""

    q: torch.Tensor  # (H, n, hd) queries
    k: torch.Tensor  # (KV, n, hd) keys
    v: torch.Tensor  # (KV, n, hd) values
    v_lin: torch.Tensor  # (KV, n, hd) c_v · ṽ
    k_lin: torch.Tensor | None  # (KV, n, hd) c_k · scaling · k̃; None when keys carry no gradient
    gamma: torch.Tensor  # (H, n, hd) ∂̃Δℓ/∂o
    gamma_o: torch.Tensor  # (H, n) ⟨γ_h[j], o_h[j]⟩ = Σ_i P_h[j,i] ⟨γ_h[j], v_h[i]⟩
    out: torch.Tensor  # (H, n, hd) kernel output (to check the recomputed attention)
    local: torch.Tensor  # (n,) position-local part of the diagonal
    mask: torch.Tensor | None
    scaling: float
    softcap: float | None
    identity_cap: bool  # soft-cap gets the identity rule (else its true derivative)
    tolerance: float = 2e-3  # relative error allowed when re-checking the kernel's output
    sinks: torch.Tensor | None = None  # (H,) a constant logit per head in every softmax row


@dataclass
class Trace:
    nodes: torch.Tensor  # (L + 1, n) node relevance, row 0 = embeddings
    layers: list[LayerTrace]  # (L,)
    delta: float


_ACTIVE: ContextVar[_Recorder | None] = ContextVar("xgraph_recorder", default=None)


class _Recorder:
    def __init__(self, blocks: list[nn.Module]):
        self.owner = {id(m): layer for layer, block in enumerate(blocks) for m in block.modules()}
        self.calls: dict[int, AttnCall] = {}

    def attention(self, module, query, key, value, mask, kwargs, out) -> None:
        layer = self.owner.get(id(module))
        if layer is None:
            return
        if layer in self.calls:
            raise RuntimeError(f"graph: block {layer + 1} calls attention twice; not supported")
        scaling = kwargs.get("scaling")
        if scaling is None:  # SDPA's default, which every kernel shares
            scaling = query.shape[-1] ** -0.5
        self.calls[layer] = AttnCall(query, key, value, None if mask is None else mask[0],
                                     float(scaling), kwargs.get("softcap"), out,
                                     kwargs.get("s_aux"))


def _register(name: str, base: str) -> None:
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, AttentionInterface

    if name in ALL_ATTENTION_FUNCTIONS:
        return

    def attention(module, query, key, value, attention_mask, *args, **kwargs):
        if base == "eager":  # each family defines its own eager kernel next to its attention
            kernel = sys.modules[type(module).__module__].eager_attention_forward
        else:
            kernel = ALL_ATTENTION_FUNCTIONS[base]
        result = kernel(module, query, key, value, attention_mask, *args, **kwargs)
        recorder = _ACTIVE.get()
        if recorder is not None:
            recorder.attention(module, query, key, value, attention_mask, kwargs, result[0])
        return result

    AttentionInterface.register(name, attention)
    masks = ALL_MASK_ATTENTION_FUNCTIONS._global_mapping
    if base in masks:
        AttentionMaskInterface.register(name, masks[base])


@contextmanager
def recording(model: nn.Module, blocks: list[nn.Module]) -> Iterator[_Recorder]:
    """Route attention through the recording kernel for the duration of the block."""
    config = model.config
    base = config._attn_implementation or "eager"
    name = _PREFIX + base
    _register(name, base)
    recorder = _Recorder(blocks)
    token = _ACTIVE.set(recorder)
    config._attn_implementation = name
    try:
        yield recorder
    finally:
        config._attn_implementation = base
        _ACTIVE.reset(token)


class BlockTrace:
    """Steps 1–4 around the engine's pass of one contrast (batch of one row).

    ``with BlockTrace(model, adapter, spec) as bt:`` wraps the forward (block outputs kept,
    attention routed through the recording kernel); then ``bt.backward_inputs()`` computes the
    linear parts (step 2) and names the tensors whose gradients the engine's one backward must
    also return; ``bt.finish(grads, delta)`` turns those gradients into the ``Trace``.
    """

    def __init__(self, model: nn.Module, adapter: Adapter, spec: Method):
        self.model, self.spec = model, spec
        self.blocks = list(adapter.blocks(model))
        self.states: list[torch.Tensor] = []  # (L,) block outputs, each (1, n, d)
        self.calls: list[AttnCall] = []
        self._lin: list = []
        self._stack = None

    def __enter__(self) -> BlockTrace:
        from contextlib import ExitStack

        def keep(module, inputs, output) -> None:
            self.states.append(output[0] if isinstance(output, (tuple, list)) else output)

        self._stack = ExitStack()
        for block in self.blocks:
            self._stack.callback(block.register_forward_hook(keep).remove)
        self._recorder = self._stack.enter_context(recording(self.model, self.blocks))
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()
        if exc[0] is None and (len(self.states) != len(self.blocks)
                               or len(self._recorder.calls) != len(self.blocks)):
            raise RuntimeError("graph: the model did not run each decoder block's attention once")
        self.calls = [self._recorder.calls[layer] for layer in range(len(self._recorder.calls))]

    def backward_inputs(self, embeddings: torch.Tensor) -> list[torch.Tensor]:
        """Step 2, then the tensors whose gradients step 3 needs: block outputs, kernel outputs,
        keys, values (in that order; ``finish`` reads them back in the same order)."""
        scales = self.spec.attention
        need_k = (1.0 if scales is None else scales.k) != 0
        sources = [embeddings, *self.states[:-1]]
        self._lin = [_linear_parts(src, call, need_k) for src, call in zip(sources, self.calls)]
        return [*self.states, *(c.out for c in self.calls), *(c.k for c in self.calls),
                *(c.v for c in self.calls)]

    def finish(self, embeddings: torch.Tensor, grads: list, delta: float) -> Trace:
        """Step 4 from ``grads`` = [∂/∂embeddings, *the gradients of ``backward_inputs``]."""
        inputs = [embeddings, *self.backward_inputs_list()]
        grads = [torch.zeros_like(x) if g is None else g for x, g in zip(inputs, grads)]
        states = [embeddings, *self.states]
        n_l = len(self.calls)
        g_states, g_out = grads[:n_l + 1], grads[n_l + 1:2 * n_l + 1]
        g_k, g_v = grads[2 * n_l + 1:3 * n_l + 1], grads[3 * n_l + 1:]
        scales = self.spec.attention
        c_v = 1.0 if scales is None else scales.v
        c_k = 1.0 if scales is None else scales.k
        nodes = torch.stack([(h.detach().float() * g.float()).sum(-1)[0]
                             for h, g in zip(states, g_states)])  # (L + 1, n)
        layers = []
        for l, call in enumerate(self.calls):
            v_lin, k_lin = self._lin[l]
            local = nodes[l] - (v_lin * g_v[l].float()).sum((0, 1, 3))
            if k_lin is not None:
                local = local - (k_lin * g_k[l].float()).sum((0, 1, 3))
            # a target whose g_t row is zero has an all-zero row by definition (not rounding noise)
            local = local * (g_states[l + 1][0] != 0).any(-1)
            out = call.out.detach().float()[0].transpose(0, 1)  # (H, n, hd)
            gamma = g_out[l].float()[0].transpose(0, 1)  # (H, n, hd)
            layers.append(LayerTrace(
                q=call.q.detach().float()[0], k=call.k.detach().float()[0],
                v=call.v.detach().float()[0], v_lin=c_v * v_lin[0],
                k_lin=None if k_lin is None else (c_k * call.scaling) * k_lin[0],
                gamma=gamma, gamma_o=(gamma * out).sum(-1), out=out, local=local,
                mask=None if call.mask is None else call.mask.detach(), scaling=call.scaling,
                softcap=call.softcap,
                identity_cap=scales is not None and (scales.q != 0 or scales.k != 0),
                tolerance=2e-3 if call.out.dtype in (torch.float32, torch.float64) else 5e-2,
                sinks=None if call.sinks is None else call.sinks.detach().float()))
        self._lin = []
        return Trace(nodes=nodes.cpu(), layers=layers, delta=float(delta))

    def backward_inputs_list(self) -> list[torch.Tensor]:
        return [*self.states, *(c.out for c in self.calls), *(c.k for c in self.calls),
                *(c.v for c in self.calls)]


def _linear_parts(source: torch.Tensor, call: AttnCall, need_k: bool):
    """(ṽ, k̃) = J̃ · source for the value and key projections (k̃ None unless ``need_k``)."""
    outs = [call.v, call.k] if need_k else [call.v]
    probes = [torch.zeros_like(t, requires_grad=True) for t in outs]
    (w,) = torch.autograd.grad(outs, source, probes, create_graph=True, retain_graph=True)
    parts = torch.autograd.grad(w, probes, grad_outputs=source.detach(), allow_unused=True)
    parts = [torch.zeros_like(p, dtype=torch.float32) if g is None else g.detach().float()
             for p, g in zip(probes, parts)]
    return parts[0], (parts[1] if need_k else None)
