"""Contrastive attribution of one logit difference: one forward, one backward.

Algorithm:
1. Embed ``input_ids`` and make the embeddings a leaf that requires grad (tokens, (1, n, d)).
2. Inside ``with lrp(model, method)`` run the model on the embeddings, capturing every decoder
   block's output (the residual stream after block l) with forward hooks.
3. ``Δℓ = logit[target] − logit[foil]`` at the last position.
4. One backward: ``torch.autograd.grad(Δℓ, [embeddings, block outputs…])`` under the method's rules.
5. Relevance of a state = ``Σ_hidden state ⊙ gradient`` (fp32): ``layers`` (n_layers + 1, n) with
   row 0 the embeddings; ``tokens`` = row 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from harness_xai.errors import UserError
from harness_xai.lrp.adapters import adapter_for
from harness_xai.lrp.methods import get_method
from harness_xai.lrp.patch import lrp


@dataclass
class Attribution:
    """Relevance of the input tokens and residual states for ``logit[target] − logit[foil]``."""

    tokens: torch.Tensor  # (n_tokens,) relevance per input position
    layers: torch.Tensor  # (n_layers + 1, n_tokens): embeddings, then each block's output
    delta: float  # logit[target] − logit[foil] at the last position
    method: str
    input_ids: torch.Tensor  # (n_tokens,)
    target_id: int
    foil_id: int
    params: dict = field(default_factory=dict)

    def numpy(self) -> tuple[np.ndarray, np.ndarray]:
        """(tokens (n,), layers (n_layers + 1, n)) as float32 numpy arrays."""
        return self.tokens.numpy().astype(np.float32), self.layers.numpy().astype(np.float32)


def attribute(model: nn.Module, tokenizer, input_ids, target_id, foil_id,
              method: str = "attnlrp") -> Attribution:
    """Attribute ``logit[target_id] − logit[foil_id]`` at the last input position.

    ``input_ids``: a sequence of ints, a 1-D tensor, a (1, n) tensor, or a string (encoded with
    ``tokenizer`` without special tokens). ``target_id`` / ``foil_id``: token ids, or single-token
    strings. Positive relevance pushes toward ``target`` (in harness-xai: the wrong answer).
    """
    spec = get_method(method)
    adapter = adapter_for(model)  # fails before any work for unsupported families
    ids = _as_ids(input_ids, tokenizer)  # (1, n)
    target, foil = _as_token(target_id, tokenizer), _as_token(foil_id, tokenizer)
    vocab = model.get_output_embeddings().weight.shape[0]
    for name, tok in (("target_id", target), ("foil_id", foil)):
        if not 0 <= tok < vocab:
            raise UserError(f"{name}={tok} is outside the model's vocabulary (0..{vocab - 1}).")
    device = next(model.parameters()).device
    ids = ids.to(device)

    with torch.inference_mode(False), torch.enable_grad(), lrp(model, spec):
        embeddings = model.get_input_embeddings()(ids).detach().requires_grad_(True)  # (1, n, d)
        states: list[torch.Tensor] = []
        hooks = [block.register_forward_hook(_capture(states)) for block in adapter.blocks(model)]
        try:
            logits = model(inputs_embeds=embeddings, use_cache=False, logits_to_keep=1).logits
        finally:
            for hook in hooks:
                hook.remove()
        last = logits[0, -1]  # (vocab,)
        delta = last[target] - last[foil]
        grads = torch.autograd.grad(delta, [embeddings, *states])

    layers = torch.stack([(h.detach().float() * g.float()).sum(-1)[0]
                          for h, g in zip([embeddings, *states], grads)]).cpu()  # (L + 1, n)
    return Attribution(tokens=layers[0].clone(), layers=layers, delta=float(delta.detach()),
                       method=spec.name, input_ids=ids[0].cpu(), target_id=target, foil_id=foil,
                       params=dict(spec.params))


def _capture(states: list[torch.Tensor]):
    def hook(module, inputs, output):
        states.append(output[0] if isinstance(output, (tuple, list)) else output)
    return hook


def _as_ids(input_ids, tokenizer) -> torch.Tensor:
    if isinstance(input_ids, str):
        if tokenizer is None:
            raise UserError("input_ids is a string but no tokenizer was given.")
        input_ids = tokenizer(input_ids, add_special_tokens=False)["input_ids"]
    ids = torch.as_tensor(input_ids, dtype=torch.long)
    if ids.dim() == 1:
        ids = ids[None]
    if ids.dim() != 2 or ids.shape[0] != 1 or ids.shape[1] == 0:
        raise UserError(f"input_ids must be one non-empty sequence, got shape {tuple(ids.shape)}.")
    return ids


def _as_token(token, tokenizer) -> int:
    if isinstance(token, str):
        if tokenizer is None:
            raise UserError(f"token {token!r} is a string but no tokenizer was given.")
        ids = tokenizer(token, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise UserError(f"token {token!r} is {len(ids)} tokens, not one; pass a token id.")
        return int(ids[0])
    if isinstance(token, torch.Tensor):
        token = token.item()
    return int(token)


def relevance_sums(attribution: Attribution) -> Sequence[float]:
    """Σ over positions of each layer row (for conservation checks)."""
    return attribution.layers.sum(-1).tolist()
