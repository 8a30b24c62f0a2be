"""The graph's per-block capture: kept by the engine's pass, rebuilt one block at a time.

The graph's edges between residual states ``h_{l-1}`` and ``h_l`` mix positions only inside
block ``l``'s attention. Streaming, so peak memory is one block's working set plus what a
checkpointed backward keeps (each block's input), never every block's attention at once:

1. In the engine's pass (``harness_xai.lrp.engine.explain(…, trace=True)``, checkpointed or not)
   ``BlockTrace`` keeps each block's call (its input ``h_{l-1}`` and the other arguments, e.g.
   rotary tables and masks, shared between blocks) and output, and the engine's one backward of
   Δℓ also returns ``g_l = ∂̃Δℓ/∂h_l`` at every block output: node relevance
   ``R_l = Σ_d h_l ⊙ g_l``. Nothing per head is kept.
2. ``Trace.layers()`` then rebuilds block ``l`` alone, under the same rules (``with lrp(model,
   method)``, no checkpointing): the block re-runs on a leaf copy of its kept input through a
   recording attention kernel ``xgraph_<base>`` (wrapping whatever kernel is active, the rule
   wrapper included) that keeps the query, key and value as the kernel receives them (after RoPE
   and q/k norms; keys and values per kv-head, so GQA is native), the mask, ``scaling``,
   ``softcap``, attention sinks and the kernel's output ``o``. Block 1 re-runs through the
   model's own code from the embedding leaf up to the block (stopped there, like the
   reference), so what the model adds before it (GPT-2's ``wpe``, Gemma's scale) is handled by
   autograd: the source of block 1 is the embedding itself.
3. Linear parts, by a double backward (no per-family code): ``w = J̃ᵀ u`` is the rule-modified
   vector–Jacobian product of (k, v) w.r.t. the source built with ``create_graph``; it is linear
   in ``u``, so ``∂⟨w, source⟩/∂u = J̃ source`` = ``k̃``, ``ṽ``: the parts of k and v linear in
   the source state (biases, position embeddings removed; the norm's ``1/σ`` held at its forward
   value). Projections are position-local, so one pass covers all positions.
4. One backward of ``⟨y, g_l⟩`` through the re-run block gives ``γ = ∂̃Δℓ/∂o`` (everything
   after attention is position-local and inside the block), ``G_k``, ``G_v``: the same numbers
   the global backward has there, since the block's output is the only way its k, v and o reach
   Δℓ.
5. ``local_l(j) = R_{l-1}(j) − ⟨k̃[j], G_k[j]⟩ − ⟨ṽ[j], G_v[j]⟩``: the part of the column sum
   that does not leave position j through a key or a value (residual, query, MLP paths).
Cost: the engine's pass plus, per block, one block forward, one block backward and the double
backward of the k/v projections — about one more forward and backward of the model.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

import torch
from torch import nn

from harness_xai.lrp.adapters import Adapter
from harness_xai.lrp.inputs import frozen_parameters
from harness_xai.lrp.methods import Method
from harness_xai.lrp.patch import lrp

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


@dataclass
class BlockCall:
    """One decoder block's call in the engine's pass: what re-running the block needs."""

    args: tuple  # positional arguments as called (the hidden state first, if positional)
    kwargs: dict  # keyword arguments (rotary tables, masks: shared between blocks, not copies)
    grad: torch.Tensor | None = None  # (1, n, d) g_l = ∂̃Δℓ/∂h_l at the block's output

    @property
    def input(self) -> torch.Tensor:  # (1, n, d) h_{l-1}
        return self.args[0] if self.args else self.kwargs["hidden_states"]


class Trace:
    """Node relevance and Δℓ of the engine's pass, and per block what re-running it needs.

    ``layers()`` streams each block's ``LayerTrace`` (step 2–5 of the module docstring) and drops
    that block's kept input and gradient once the caller moves on: a trace streams once.
    """

    def __init__(self, nodes: torch.Tensor, delta: float, model: nn.Module, spec: Method,
                 blocks: list[nn.Module], calls: list[BlockCall], embeddings: torch.Tensor):
        self.nodes = nodes.cpu()  # (L + 1, n) node relevance, row 0 = embeddings
        self.delta = delta
        self._device_nodes = nodes
        self._model, self._spec, self._blocks = model, spec, blocks
        self._calls: list[BlockCall | None] = list(calls)
        self._embeddings: torch.Tensor | None = embeddings  # (1, n, d) block 1's source

    @property
    def n_layers(self) -> int:
        return len(self._blocks)

    def layers(self) -> Iterator[LayerTrace]:
        """Each block's ``LayerTrace`` in order, re-run when asked for; what the block kept is
        released before the next one is built."""
        for l in range(self.n_layers):
            layer = self.layer(l)
            self._calls[l] = None
            if l == 0:
                self._embeddings = None
            yield layer
            del layer

    def layer(self, l: int) -> LayerTrace:
        """Block ``l + 1``'s ``LayerTrace``, by re-running that block alone (steps 2–5)."""
        call = self._calls[l]
        if call is None:
            raise RuntimeError(f"graph: block {l + 1}'s capture was already streamed; run "
                               "explain(…, trace=True) again for another graph")
        model, spec, block = self._model, self._spec, self._blocks[l]
        scales = spec.attention
        c_v = 1.0 if scales is None else scales.v
        c_k = 1.0 if scales is None else scales.k
        with torch.inference_mode(False), torch.enable_grad(), frozen_parameters(model), \
                lrp(model, spec), recording(model, [block]) as recorder:
            if l == 0:
                source = self._embeddings.detach().requires_grad_(True)
                y = _first_block(model, block, source, call)
            else:
                source = call.input.detach().requires_grad_(True)
                y = _call(block, source, call.args, call.kwargs)
            if 0 not in recorder.calls:
                raise RuntimeError(f"graph: block {l + 1} ran no attention kernel")
            att = recorder.calls[0]
            v_lin, k_lin = _linear_parts(source, att, c_k != 0)
            grads = torch.autograd.grad(y, [att.out, att.k, att.v], call.grad.to(y.dtype),
                                        allow_unused=True)
        g_out, g_k, g_v = [torch.zeros_like(x) if g is None else g
                           for x, g in zip((att.out, att.k, att.v), grads)]
        local = self._device_nodes[l].to(v_lin.device) - (v_lin * g_v.float()).sum((0, 1, 3))
        if k_lin is not None:
            local = local - (k_lin * g_k.float()).sum((0, 1, 3))
        # a target whose g_t row is zero has an all-zero row by definition (not rounding noise)
        local = local * (call.grad[0] != 0).any(-1).to(local.device)
        out = att.out.detach().float()[0].transpose(0, 1)  # (H, n, hd)
        gamma = g_out.float()[0].transpose(0, 1)  # (H, n, hd)
        return LayerTrace(
            q=att.q.detach().float()[0], k=att.k.detach().float()[0], v=att.v.detach().float()[0],
            v_lin=c_v * v_lin[0],
            k_lin=None if k_lin is None else (c_k * att.scaling) * k_lin[0],
            gamma=gamma, gamma_o=(gamma * out).sum(-1), out=out, local=local,
            mask=None if att.mask is None else att.mask.detach(), scaling=att.scaling,
            softcap=att.softcap,
            identity_cap=scales is not None and (scales.q != 0 or scales.k != 0),
            tolerance=2e-3 if att.out.dtype in (torch.float32, torch.float64) else 5e-2,
            sinks=None if att.sinks is None else att.sinks.detach().float())


class BlockTrace:
    """Step 1 around the engine's pass of one contrast (batch of one row).

    ``with BlockTrace(model, adapter, spec) as bt:`` wraps the forward (each block's call and
    output kept); ``bt.backward_inputs()`` names the tensors whose gradients the engine's one
    backward must also return (the block outputs); ``bt.finish(embeddings, grads, delta)`` turns
    those gradients into the ``Trace``.
    """

    def __init__(self, model: nn.Module, adapter: Adapter, spec: Method):
        self.model, self.spec = model, spec
        self.blocks = list(adapter.blocks(model))
        self.states: list[torch.Tensor] = []  # (L,) block outputs, each (1, n, d)
        self.calls: list[BlockCall] = []
        self._stack = None

    def __enter__(self) -> BlockTrace:
        from contextlib import ExitStack

        def called(module, args, kwargs) -> None:
            self.calls.append(BlockCall(args, kwargs))

        def keep(module, inputs, output) -> None:
            self.states.append(output[0] if isinstance(output, (tuple, list)) else output)

        self._stack = ExitStack()
        for block in self.blocks:
            self._stack.callback(block.register_forward_pre_hook(called, with_kwargs=True).remove)
            self._stack.callback(block.register_forward_hook(keep).remove)
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()
        if exc[0] is None and not (len(self.states) == len(self.calls) == len(self.blocks)):
            raise RuntimeError("graph: the model did not run each decoder block once")

    def backward_inputs(self, embeddings: torch.Tensor | None = None) -> list[torch.Tensor]:
        """The tensors whose gradients the engine's backward also returns: the block outputs."""
        return list(self.states)

    def finish(self, embeddings: torch.Tensor, grads: list, delta: float) -> Trace:
        """The ``Trace`` from ``grads`` = [∂/∂embeddings, *the gradients of ``backward_inputs``]."""
        states = [embeddings, *self.states]
        grads = [torch.zeros_like(x) if g is None else g for x, g in zip(states, grads)]
        nodes = torch.stack([(h.detach().float() * g.float()).sum(-1)[0]
                             for h, g in zip(states, grads)])  # (L + 1, n)
        calls = [BlockCall(_detached(c.args), _detached(c.kwargs), g.detach())
                 for c, g in zip(self.calls, grads[1:])]
        self.states, self.calls = [], []
        return Trace(nodes, float(delta), self.model, self.spec, self.blocks, calls,
                     embeddings.detach())


def _detached(value):
    """Tensors in ``value`` (tuple/list/dict, nested) without their autograd history."""
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, tuple):
        return tuple(_detached(v) for v in value)
    if isinstance(value, list):
        return [_detached(v) for v in value]
    if isinstance(value, dict):
        return {k: _detached(v) for k, v in value.items()}
    return value


class _Stop(Exception):
    pass


def _first_block(model: nn.Module, block: nn.Module, embeddings: torch.Tensor,
                 call: BlockCall) -> torch.Tensor:
    """Block 1's output on ``embeddings`` (a leaf) through the model's own pre-block code."""
    seen = {}

    def stop(module, args, kwargs):
        seen["x"] = args[0] if args else kwargs["hidden_states"]
        raise _Stop

    hook = block.register_forward_pre_hook(stop, with_kwargs=True)
    try:
        model(inputs_embeds=embeddings, use_cache=False, logits_to_keep=1)
    except _Stop:
        pass
    finally:
        hook.remove()
    return _call(block, seen["x"], call.args, call.kwargs)


def _call(block: nn.Module, x: torch.Tensor, args: tuple, kwargs: dict) -> torch.Tensor:
    """Re-run ``block`` as recorded, with its hidden-state argument replaced by ``x``."""
    y = block(x, *args[1:], **kwargs) if args else block(**{**kwargs, "hidden_states": x})
    return y[0] if isinstance(y, (tuple, list)) else y


def _linear_parts(source: torch.Tensor, call: AttnCall, need_k: bool):
    """(ṽ, k̃) = J̃ · source for the value and key projections (k̃ None unless ``need_k``)."""
    outs = [call.v, call.k] if need_k else [call.v]
    probes = [torch.zeros_like(t, requires_grad=True) for t in outs]
    (w,) = torch.autograd.grad(outs, source, probes, create_graph=True, retain_graph=True)
    parts = torch.autograd.grad(w, probes, grad_outputs=source.detach(), allow_unused=True)
    parts = [torch.zeros_like(p, dtype=torch.float32) if g is None else g.detach().float()
             for p, g in zip(probes, parts)]
    return parts[0], (parts[1] if need_k else None)
