"""Reference edges by the definition (slow): the oracle of the tests and the benchmark baseline.

``A_{j,i} = Σ_k h_s[i,k] · ∂̃⟨h_t[j], g_t[j]⟩/∂h_s[i,k]`` for block ``t`` with source ``s = t−1``:
1. Under ``lrp(model, method)`` one forward records every block's output ``h_t`` and the
   arguments each block was called with; one backward of Δℓ gives ``g_t`` (and node relevance).
2. For block ``t``, target rows are taken ``batch`` at a time: the source state is copied
   ``batch`` times (a leaf that requires grad), the block is re-run on the copies with the
   recorded arguments, and the output gradient of copy ``b`` is ``g_t`` at its target row only.
   One backward through the block then gives, for every copy, the gradient of its row's
   ``⟨h_t[j], g_t[j]⟩`` w.r.t. the source; multiplied by the source and summed over the hidden
   dimension it is row ``j`` of ``A``. ``⌈n / batch⌉`` passes per block.
3. Block 1's source is the embedding itself: the copies go through the model's own code up to
   the first block (position embeddings, scaling), stopped there by a pre-hook, so the gradient
   is taken w.r.t. the embeddings exactly as defined.
"""

from __future__ import annotations

import time

import torch
from torch import nn

from harness_xai.lrp.adapters import Adapter


class _Stop(Exception):
    pass


def reference_edges(model: nn.Module, adapter: Adapter, ids: torch.Tensor, target: int, foil: int,
                    batch: int = 8, layers: list[int] | None = None,
                    max_passes: int | None = None,
                    timings: dict | None = None) -> tuple[torch.Tensor, list[torch.Tensor], float]:
    """(nodes (L + 1, n), dense edges per block (n, n) [target, source], Δℓ).

    Call inside ``lrp(model, method)``. ``layers`` (1-based blocks) restricts the work (others
    come back empty); ``max_passes`` stops each block after that many passes and ``timings``
    (a dict) receives ``setup`` and per-block pass (wall, CPU) seconds (benchmark extrapolation).
    """
    def clock() -> tuple[float, float]:  # (wall, process CPU) seconds
        return time.perf_counter(), time.process_time()

    started = clock()
    blocks = list(adapter.blocks(model))
    embeddings = model.get_input_embeddings()(ids).detach().requires_grad_(True)  # (1, n, d)
    states: list[torch.Tensor] = [embeddings]
    calls: list[tuple[tuple, dict]] = []
    hooks = []
    for block in blocks:
        hooks.append(block.register_forward_pre_hook(
            lambda m, args, kwargs: calls.append((args, kwargs)), with_kwargs=True))
        hooks.append(block.register_forward_hook(
            lambda m, i, o: states.append(o[0] if isinstance(o, (tuple, list)) else o)))
    try:
        logits = model(inputs_embeds=embeddings, use_cache=False, logits_to_keep=1).logits
    finally:
        for hook in hooks:
            hook.remove()
    last = logits[0, -1].float()
    delta = last[target] - last[foil]
    grads = torch.autograd.grad(delta, states)
    nodes = torch.stack([(h.detach().float() * g.float()).sum(-1)[0] for h, g in zip(states, grads)])

    n = ids.shape[1]
    if timings is not None:
        timings["setup"] = _since(started)
        timings["passes"] = {}
    edges = []
    for t in range(1, len(blocks) + 1):
        if layers is not None and t not in layers:
            edges.append(torch.zeros(0, 0))
            continue
        out = torch.zeros(n, n)
        g_t = grads[t].detach()[0].to(ids.device)  # (n, d)
        for p, start in enumerate(range(0, n, batch)):
            if max_passes is not None and p >= max_passes:
                break
            tick = clock()
            rows = torch.arange(start, min(n, start + batch))
            b = rows.shape[0]
            if t == 1:
                source, y = _first_block(model, blocks[0], embeddings.detach(), b)
            else:
                args, kwargs = calls[t - 1]
                source = states[t - 1].detach().expand(b, -1, -1).clone().requires_grad_(True)
                y = _call(blocks[t - 1], source, args, kwargs)
            grad_out = torch.zeros_like(y)
            at = rows.to(y.device)
            grad_out[torch.arange(b, device=y.device), at] = g_t[at].to(y.dtype)
            (g_s,) = torch.autograd.grad(y, source, grad_out)
            out[rows] = (source.detach().float() * g_s.float()).sum(-1).cpu()
            if timings is not None:
                timings["passes"].setdefault(t, []).append(_since(tick))
        edges.append(out)
    return nodes.cpu(), edges, float(delta.detach())


def _since(start: tuple[float, float]) -> tuple[float, float]:
    return time.perf_counter() - start[0], time.process_time() - start[1]


def _call(block: nn.Module, x: torch.Tensor, args: tuple, kwargs: dict) -> torch.Tensor:
    """Re-run ``block`` as recorded, with its hidden-state argument replaced by ``x``."""
    if args:
        return _output(block(x, *args[1:], **kwargs))
    return _output(block(**{**kwargs, "hidden_states": x}))


def _output(y):
    return y[0] if isinstance(y, (tuple, list)) else y


def _first_block(model: nn.Module, block: nn.Module, embeddings: torch.Tensor, copies: int):
    """(embedding copies (leaf), block 1 output on them), through the model's own pre-block code."""
    source = embeddings.expand(copies, -1, -1).clone().requires_grad_(True)  # (b, n, d)
    seen = {}

    def stop(module, args, kwargs):
        seen["call"] = (args, kwargs)
        raise _Stop

    hook = block.register_forward_pre_hook(stop, with_kwargs=True)
    try:
        model(inputs_embeds=source, use_cache=False, logits_to_keep=1)
    except _Stop:
        pass
    finally:
        hook.remove()
    args, kwargs = seen["call"]
    x = args[0] if args else kwargs["hidden_states"]
    return source, _call(block, x, args, kwargs)
