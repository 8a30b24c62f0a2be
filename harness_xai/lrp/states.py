"""Relevance of internal states: captured in the forward, reduced inside the one backward.

Kinds (keyed by block, row ``l - 1`` = block ``l``):
- ``out``: the residual stream after the block (the block's output);
- ``mid``: the residual between attention and MLP (input of the adapter's ``mid_input``
  module; absent for parallel-residual blocks);
- ``attn`` / ``mlp``: the branch outputs added to the residual (after any post-norm);
- ``heads``: each head's output = the input of the output projection, split by head;
- ``experts`` (mixture of experts, one-backward methods): per routed expert ``e`` the relevance
  of its weighted output ``c_e = w_e · E_e(x)`` at each token (0 where not selected), noted by
  the experts' rule loop (``rules.moe.EXPERT_RECORDER``); Σ_e = the ``mlp`` state of the block.

Algorithm:
1. Forward hooks (``out``, ``attn``, ``mlp``: module outputs) and forward pre-hooks (``mid``,
   ``heads``: module inputs) go on the modules the family adapter names.
2. While recording, a hook keeps the state ``x`` (batch, n, d') and registers a gradient hook on
   it. With gradient checkpointing (``checkpointed``) the state is *not* kept: the hook hands
   the module ``probe(x)`` instead — an identity whose only job is to save ``x`` for its
   backward, so ``x`` becomes one of the block's checkpointed tensors (dropped after the
   forward, recomputed when the backward reaches the block, like every other activation). The
   probe's backward puts the recomputed ``x`` where the gradient hook finds it; the gradient
   hook fires after it, since the probe is one of ``x``'s consumers. The re-run forward applies
   the same probes (the recomputation must save what the forward saved) but registers nothing.
   Mixture-of-experts contributions, which the rule loop hands over without a way back in, are
   noted again by the re-run forward (it runs before their gradients arrive: the block's ``mlp``
   probe and the loop's own saved indices trigger it). Checkpointed, the captured states cost
   O(one block) instead of O(all blocks) (bench/README: "States under checkpointing").
3. When the backward reaches ``x`` with its (rule-modified) gradient ``g``, the gradient hook
   reduces ``pair(x, g)`` (rows, n, d') in fp32: summed over the hidden dimension (split into
   ``n_heads`` groups for ``heads``), giving (rows, n) or (rows, n_heads, n) — one row per batch
   row (several contrasts in one pass), or summed over the rows when ``sum_rows`` (the points of
   one integrated-gradients path). Results add up across passes (integrated gradients runs
   several chunks). Gradients are never kept: the extra memory is the captured states
   themselves, O(n·d) per state. While ``paused`` (the graph's linear-part probes, which are
   backward passes too) gradients reaching a state are ignored.
4. ``stacked(kind, n)`` gives (rows, n_layers, n) or (rows, n_layers, n_heads, n) fp32; a state
   the gradient never reached is zero.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from harness_xai.lrp.adapters import Adapter
from harness_xai.lrp.rules.moe import EXPERT_RECORDER

#: ``pair(x, g) -> (batch', n, d')`` products whose hidden-dimension sum is the relevance
Pair = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
STATE_KINDS = ("mid", "attn", "mlp")
ALL_KINDS = ("out", *STATE_KINDS, "heads", "experts")


def lrp_pair(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Relevance = state ⊙ modified gradient (one forward, one backward), fp32.

    ``x * g.float()`` promotes ``x`` inside the multiply: bit-identical to ``x.float() *
    g.float()`` (both exact casts, then one fp32 product) with one cast kernel and one
    (rows, n, d) fp32 temporary fewer for bf16/fp16 states."""
    return x * g.float()


def trapezoid_pair(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Integrated gradients along a path sampled in the batch: Σ_k Δx_k ⊙ (g_k + g_{k−1}) / 2.

    Rows are consecutive path points; over a state ``h(α)`` of the network this is the
    trapezoid rule for ``∫ ∂f/∂h · dh`` (conductance), so Σ over positions ≈ f(end) − f(start).
    """
    x, g = x.float(), g.float()
    return (x[1:] - x[:-1]) * ((g[1:] + g[:-1]) * 0.5)


class _Probe(torch.autograd.Function):
    """Identity that saves its input for the backward and hands it to ``sink`` there (step 2)."""

    @staticmethod
    def forward(ctx, x, sink):
        ctx.save_for_backward(x)
        ctx.sink = sink
        return x.view_as(x)  # same values, no copy

    @staticmethod
    def backward(ctx, grad):
        if ctx.sink is not None:
            ctx.sink(ctx.saved_tensors[0])  # recomputed under checkpointing
        return grad, None


def state_sites(adapter: Adapter, block: nn.Module) -> dict[str, tuple[nn.Module | None, bool]]:
    """kind → (module whose output — or, when the flag is True, whose input — is that state of
    ``block``; None where the family has no such state)."""
    return {"out": (block, False), "attn": (adapter.attn_output(block), False),
            "mlp": (adapter.mlp_output(block), False), "mid": (adapter.mid_input(block), True),
            "heads": (adapter.head_input(block), True)}


class StateCapture:
    """Context manager: hooks that turn internal states into relevance during the backward."""

    def __init__(self, model: nn.Module, adapter: Adapter, kinds: Sequence[str], pair: Pair,
                 sum_rows: bool = False, checkpointed: bool = False):
        self.blocks = list(adapter.blocks(model))
        self.adapter, self.kinds, self.pair, self.sum_rows = adapter, tuple(kinds), pair, sum_rows
        text = model.config.get_text_config()
        self.n_heads = int(text.num_attention_heads)
        self.n_experts = int(getattr(text, "num_local_experts", None)
                             or getattr(text, "num_experts", None) or 0)
        self.experts = {id(adapter.experts(block)): layer for layer, block in
                        enumerate(self.blocks) if adapter.experts(block) is not None}
        self._recorder_token = None
        self.results: dict[tuple[str, int], torch.Tensor] = {}
        self.present: set[str] = set()  # kinds at least one block has
        self.recording = False
        self.paused = False
        self.checkpointed = checkpointed  # step 2: states reach the backward through probes
        self._handles: list = []
        self._saved: dict[tuple[str, int], torch.Tensor] = {}

    def __enter__(self) -> StateCapture:
        a = self.adapter
        for layer, block in enumerate(self.blocks):
            targets = state_sites(a, block)
            for kind in self.kinds:
                if kind == "experts":
                    continue
                module, is_input = targets[kind]
                if module is None:
                    continue
                self.present.add(kind)
                if is_input:
                    hook = module.register_forward_pre_hook(self._hook(kind, layer, True))
                else:
                    hook = module.register_forward_hook(self._hook(kind, layer, False))
                self._handles.append(hook)
        if "experts" in self.kinds and self.experts and self.pair is lrp_pair:
            self.present.add("experts")
            self._recorder_token = EXPERT_RECORDER.set(self._note_expert)
        return self

    def __exit__(self, *exc) -> None:
        if self._recorder_token is not None:
            EXPERT_RECORDER.reset(self._recorder_token)
            self._recorder_token = None
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.done()
        self.recording = False

    def _hook(self, kind: str, layer: int, is_input: bool):
        def hook(module, inputs, output=None):
            if not (self.recording or self.checkpointed):
                return None
            value = inputs if is_input else output
            x = value[0] if isinstance(value, (tuple, list)) else value  # attention: (out, w)
            if not (isinstance(x, torch.Tensor) and x.requires_grad):
                return None
            key = (kind, layer)
            if self.recording:
                x.register_hook(self._reducer(key))
            if not self.checkpointed:
                self._saved[key] = x  # held here, not in the hook's closure (no reference cycle)
                return None
            sink = self._sink(key) if self.recording else None  # None: a re-run forward
            probe = _Probe.apply(x, sink)
            if isinstance(value, (tuple, list)):
                return type(value)((probe, *value[1:]))
            return (probe,) if is_input else probe
        if is_input:
            return lambda module, inputs: hook(module, inputs)
        return hook

    def _sink(self, key: tuple[str, int]):
        def put(x: torch.Tensor) -> None:
            if not self.paused:
                self._saved[key] = x
        return put

    def _reducer(self, key: tuple[str, int]):
        def on_grad(g: torch.Tensor) -> None:
            if self.paused:
                return
            x = self._saved.pop(key, None)  # freed as soon as its relevance is known
            if x is None:
                return
            with torch.no_grad():
                prod = self.pair(x.detach(), g)  # (rows, n, d')
                if key[0] == "heads":  # (rows, n, H, d'/H) → (rows, H, n)
                    prod = prod.reshape(*prod.shape[:2], self.n_heads, -1)
                    value = (prod.sum((0, 3)).T[None] if self.sum_rows
                             else prod.sum(3).transpose(1, 2))
                else:  # (rows, n), or (1, n) summed over the rows
                    value = prod.sum((0, 2))[None] if self.sum_rows else prod.sum(2)
                old = self.results.get(key)
                self.results[key] = value if old is None else old + value
        return on_grad

    def _note_expert(self, module: nn.Module, e: int, tok: torch.Tensor, c: torch.Tensor,
                     rows: int) -> None:
        """Expert ``e``'s weighted output ``c`` (tokens, d) at flattened rows ``tok``."""
        layer = self.experts.get(id(module))
        if layer is None or not c.requires_grad:
            return
        stash = ("experts", layer, e)
        if not self.recording:
            if self.checkpointed:  # the re-run forward: this is the value the gradient needs
                self._saved[stash] = (c.detach(), tok)
            return
        kept = None if self.checkpointed else (c.detach(), tok)  # checkpointed: not held

        def on_grad(g: torch.Tensor) -> None:
            if self.paused:
                return
            found = kept if kept is not None else self._saved.pop(stash, None)
            if found is None:  # never silently zero: the re-run did not note this expert
                raise RuntimeError(f"checkpointed backward: expert {e} of block {layer} was "
                                   "not recomputed before its gradient arrived")
            value, index = found
            with torch.no_grad():
                key = ("experts", layer)
                if key not in self.results:
                    self.results[key] = torch.zeros(self.n_experts, rows, device=g.device)
                self.results[key][e].index_add_(0, index, (value.float() * g.float()).sum(-1))
        c.register_hook(on_grad)

    def expert_rows(self, batch: int, n: int) -> torch.Tensor | None:
        """(batch, n_layers, n_experts, n) fp32 on the CPU; None without experts."""
        if "experts" not in self.present:
            return None
        found = [self.results.get(("experts", layer)) for layer in range(len(self.blocks))]
        device = next((r.device for r in found if r is not None), torch.device("cpu"))
        rows = [torch.zeros(self.n_experts, batch, n, device=device) if r is None
                else r.view(self.n_experts, batch, n).to(device) for r in found]
        return torch.stack(rows).permute(2, 0, 1, 3).cpu()

    def done(self) -> None:
        """End of one backward: drop states the gradient never reached."""
        self._saved.clear()

    def stacked(self, kind: str, rows: int, n: int) -> torch.Tensor:
        """(rows, n_layers, n) — or (rows, n_layers, n_heads, n) for heads — fp32 on the CPU;
        stacked where the relevance lives, then one copy (not one device sync per layer)."""
        shape = (rows, self.n_heads, n) if kind == "heads" else (rows, n)
        found = [self.results.get((kind, layer)) for layer in range(len(self.blocks))]
        device = next((r.device for r in found if r is not None), torch.device("cpu"))
        return torch.stack([torch.zeros(shape, device=device) if r is None else r.to(device)
                            for r in found], dim=1).cpu()
