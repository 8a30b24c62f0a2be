"""Several token-contrast cases in one forward/backward pass, exactly equal to one pass each.

Why it is exact: decoder-only models are causal, so a position never sees a later one. Cases
of different lengths are *right*-padded to the batch's longest input: every real token keeps
its position id, sees exactly the tokens it saw alone (no attention mask needed, no position
shift, no fully-masked rows) and therefore gets the same hidden states. Each row's Δℓ is read at
its own last real position, so nothing downstream depends on a padding token and their gradient
is exactly zero. Rows are independent, so the gradient of Σ_b Δℓ_b with respect to row b is that
of Δℓ_b alone (what one pass per case computes). Equality holds up to floating-point
reassociation (different matrix shapes), ≤1e-5 measured (tests/test_distributed.py).
Not exact for models whose tokens interact across the batch or with later positions
(bidirectional attention, capacity-limited MoE routing): every family harness-xai supports is a
causal decoder without either.

Algorithm of ``attribute_batch(model, items, method)`` (items: (input_ids, target, foil)):
1. Right-pad the inputs to (B, n_max); embed; make the embeddings a leaf requiring grad.
2. Inside ``with lrp(model, method)`` run the model with ``logits_to_keep`` = each row's last
   real position ((B, 1) integer tensor); hooks note the same internal states as the engine's
   ``attribute`` (block outputs, mid-block residual, attention/MLP branches, head outputs).
3. Δℓ_b = logit_b[target_b] − logit_b[foil_b] in fp32; one backward of Σ_b Δℓ_b.
4. As the gradient passes each noted state, its relevance Σ_hidden state ⊙ gradient (fp32) is
   kept per row (B, n_max) — unlike the engine's capture, which sums the batch.
5. Row b's ``Attribution`` = its first n_b positions of every relevance.
``batches(lengths, batch_size, max_tokens)`` groups cases of similar length: sort by length,
cut a batch when it has ``batch_size`` cases or its padded size B·n_max would pass
``max_tokens``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from harness_xai.lrp import Attribution, adapter_for, get_method, lrp
from harness_xai.lrp.capture import StateCapture, lrp_pair, state_sites

#: padded tokens per batched pass (bounds activation memory like one case of this length)
MAX_BATCH_TOKENS = 8192
_KINDS = ("out", "mid", "attn", "mlp", "heads")


def batches(lengths: Sequence[int], batch_size: int,
            max_tokens: int = MAX_BATCH_TOKENS) -> list[list[int]]:
    """Indices grouped into passes (see module docstring); a batch of one when batch_size=1."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    out: list[list[int]] = []
    for index in order:
        current = out[-1] if out else None
        longest = max([lengths[i] for i in current] + [lengths[index]]) if current else 0
        if current and len(current) < batch_size and longest * (len(current) + 1) <= max_tokens:
            current.append(index)
        else:
            out.append([index])
    return out


class _RowCapture:
    """Forward hooks noting internal states; their relevance reduced per batch row."""

    def __init__(self, model: nn.Module, adapter, states: bool) -> None:
        self.blocks = list(adapter.blocks(model))
        self.adapter = adapter
        self.kinds = _KINDS if states else ("out",)
        self.n_heads = int(model.config.get_text_config().num_attention_heads)
        self.results: dict[tuple[str, int], torch.Tensor] = {}
        self.present: set[str] = set()
        self._saved: dict[tuple[str, int], torch.Tensor] = {}
        self._handles: list = []

    def __enter__(self) -> _RowCapture:
        a = self.adapter
        for layer, block in enumerate(self.blocks):
            where = state_sites(a, block)
            for kind in self.kinds:
                module, is_input = where[kind]
                if module is None:
                    continue
                self.present.add(kind)
                if is_input:
                    h = module.register_forward_pre_hook(
                        lambda m, args, key=(kind, layer): self._note(key, args[0]))
                else:
                    h = module.register_forward_hook(
                        lambda m, args, out, key=(kind, layer): self._note(key, out))
                self._handles.append(h)
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._saved.clear()

    def _note(self, key: tuple[str, int], x) -> None:
        x = x[0] if isinstance(x, (tuple, list)) else x  # attention modules: (out, weights)
        if not (isinstance(x, torch.Tensor) and x.requires_grad):
            return
        self._saved[key] = x
        x.register_hook(lambda g, key=key: self._reduce(key, g))

    def _reduce(self, key: tuple[str, int], g: torch.Tensor) -> None:
        x = self._saved.pop(key, None)
        if x is None:
            return
        with torch.no_grad():
            prod = x.detach().float() * g.float()  # (B, n, d')
            if key[0] == "heads":  # (B, n, H, d'/H) → (B, H, n)
                value = prod.reshape(*prod.shape[:2], self.n_heads, -1).sum(3).transpose(1, 2)
            else:
                value = prod.sum(2)  # (B, n)
            self.results[key] = value.cpu()

    def stacked(self, kind: str, batch: int, n: int) -> torch.Tensor:
        """(B, n_layers, n) — (B, n_layers, H, n) for heads — zeros where never reached."""
        shape = (batch, self.n_heads, n) if kind == "heads" else (batch, n)
        rows = [self.results.get((kind, layer)) for layer in range(len(self.blocks))]
        return torch.stack([torch.zeros(shape) if r is None else r for r in rows], dim=1)


def attribute_batch(model: nn.Module, items: Sequence[tuple[Sequence[int], int, int]],
                    method: str = "attnlrp", *, states: bool = True,
                    pad_id: int = 0) -> list[Attribution]:
    """One pass for all ``items`` = (input_ids, target_id, foil_id); an ``Attribution`` each,
    equal to ``harness_xai.attribute`` of the item alone (module docstring)."""
    spec = get_method(method)
    if spec.integrate:
        raise ValueError(f"method {spec.name!r} integrates along a path: no batched passes")
    adapter = adapter_for(model)
    lengths = [len(ids) for ids, _, _ in items]
    if not items or min(lengths) == 0:
        raise ValueError("attribute_batch needs non-empty inputs")
    device = model.get_input_embeddings().weight.device
    batch, n = len(items), max(lengths)
    ids = torch.full((batch, n), int(pad_id), dtype=torch.long)
    for b, (row, _, _) in enumerate(items):
        ids[b, : len(row)] = torch.as_tensor(list(row), dtype=torch.long)
    ids = ids.to(device)
    last = torch.tensor([[k - 1] for k in lengths], device=device)  # (B, 1)
    targets = torch.tensor([int(t) for _, t, _ in items], device=device)
    foils = torch.tensor([int(f) for _, _, f in items], device=device)
    frozen = [p for p in model.parameters() if p.requires_grad]
    try:
        for p in frozen:
            p.requires_grad_(False)
        with torch.inference_mode(False), torch.enable_grad(), lrp(model, spec):
            embeddings = model.get_input_embeddings()(ids).detach().requires_grad_(True)
            with _RowCapture(model, adapter, states) as capture, \
                    StateCapture(model, adapter, ("experts",) if states else (), lrp_pair) as moe:
                moe.recording = True  # MoE: relevance per expert, per row (rules.moe)
                logits = model(inputs_embeds=embeddings, use_cache=False,
                               logits_to_keep=last).logits[:, -1].float()  # (B, vocab)
                rows = torch.arange(batch, device=logits.device)
                deltas = logits[rows, targets.to(logits.device)] \
                    - logits[rows, foils.to(logits.device)]  # (B,)
                (grad,) = torch.autograd.grad(deltas.sum(), embeddings)
                tokens = (embeddings.detach().float() * grad.float()).sum(2).cpu()  # (B, n)
                layers = torch.cat([tokens[:, None], capture.stacked("out", batch, n)], 1)
                extra = {k: capture.stacked(k, batch, n) for k in ("mid", "attn", "mlp", "heads")
                         if states and k in capture.present}
                experts = moe.expert_rows(n)
    finally:
        for p in frozen:
            p.requires_grad_(True)
    deltas = deltas.detach().cpu()
    out = []
    for b, k in enumerate(lengths):
        result = Attribution(tokens=layers[b, 0, :k].clone(), layers=layers[b, :, :k].clone(),
                             delta=float(deltas[b]), method=spec.name,
                             input_ids=ids[b, :k].cpu(), target_id=int(targets[b]),
                             foil_id=int(foils[b]), params=dict(spec.params))
        if states:
            result.states = {kind: extra[kind][b, ..., :k].clone()
                             for kind in ("mid", "attn", "mlp") if kind in extra}
            result.heads = extra["heads"][b, ..., :k].clone() if "heads" in extra else None
            result.experts = None if experts is None else experts[b, ..., :k].clone()
        out.append(result)
    return out
