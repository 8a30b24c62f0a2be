"""Contrastive attribution of one logit difference: one forward, one backward.

Algorithm:
1. Embed ``input_ids`` and make the embeddings a leaf that requires grad (tokens, (1, n, d)).
2. Inside ``with lrp(model, method)`` run the model on the embeddings; hooks (``capture``) note
   the residual stream after every block and — unless ``states=False`` — the mid-block residual,
   the attention and MLP branch outputs and each head's output.
3. ``Δℓ = logit[target] − logit[foil]`` at the last position, in fp32. Parameters do not
   require grad meanwhile (no weight gradients are needed), so nothing is saved for them.
4. One backward ``torch.autograd.grad(Δℓ, embeddings)`` under the method's rules; as the gradient
   passes each noted state, its relevance ``Σ_hidden state ⊙ gradient`` (fp32) is taken and the
   gradient dropped: ``layers`` (n_layers + 1, n) with row 0 the embeddings, ``tokens`` = row 0,
   ``states`` kind → (n_layers, n), ``heads`` (n_layers, n_heads, n).
5. ``integrated-gradients`` instead runs steps 2–4 on a batch of points along the path from a
   zero embedding to the input (see ``integrated``), same outputs.
bf16/fp16 models: the model runs in its own dtype; Δℓ and every relevance sum are fp32.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from harness_xai.errors import UserError
from harness_xai.lrp.adapters import adapter_for
from harness_xai.lrp.capture import (ALL_KINDS, STATE_KINDS, StateCapture, lrp_pair,
                                     trapezoid_pair)
from harness_xai.lrp.methods import get_method
from harness_xai.lrp.patch import lrp


@dataclass
class Attribution:
    """Relevance of the input tokens and internal states for ``logit[target] − logit[foil]``."""

    tokens: torch.Tensor  # (n_tokens,) relevance per input position, fp32
    layers: torch.Tensor  # (n_layers + 1, n_tokens): embeddings, then each block's output
    delta: float  # logit[target] − logit[foil] at the last position
    method: str
    input_ids: torch.Tensor  # (n_tokens,)
    target_id: int
    foil_id: int
    params: dict = field(default_factory=dict)
    #: kind → (n_layers, n_tokens), row l-1 = block l: "mid" (residual between attention and MLP;
    #: absent for parallel-residual blocks), "attn" / "mlp" (branch outputs added to the residual)
    states: dict[str, torch.Tensor] = field(default_factory=dict)
    heads: torch.Tensor | None = None  # (n_layers, n_heads, n_tokens) each head's output
    #: mixture of experts: (n_layers, n_experts, n_tokens) relevance of each routed expert's
    #: weighted output (0 where not selected; dense layers 0); None for dense models
    experts: torch.Tensor | None = None

    def numpy(self) -> tuple[np.ndarray, np.ndarray]:
        """(tokens (n,), layers (n_layers + 1, n)) as float32 numpy arrays."""
        return self.tokens.numpy().astype(np.float32), self.layers.numpy().astype(np.float32)


def attribute(model: nn.Module, tokenizer, input_ids, target_id, foil_id,
              method: str = "attnlrp", *, states: bool = True, checkpoint: bool = False,
              **options) -> Attribution:
    """Attribute ``logit[target_id] − logit[foil_id]`` at the last input position.

    ``input_ids``: a sequence of ints, a 1-D tensor, a (1, n) tensor, or a string (encoded with
    ``tokenizer`` without special tokens). ``target_id`` / ``foil_id``: token ids, or single-token
    strings. Positive relevance pushes toward ``target`` (in harness-xai: the wrong answer).
    ``states=False`` skips the mid/attn/mlp/head relevance; ``checkpoint=True`` recomputes each
    block in the backward (less memory, one more forward); ``options`` set the method's tunable
    params (e.g. ``steps=64`` for integrated-gradients).
    """
    spec = get_method(method)
    params = spec.configure(options)
    adapter = adapter_for(model)  # fails before any work for unsupported families
    ids, target, foil = contrast_inputs(model, tokenizer, input_ids, target_id, foil_id)
    n = ids.shape[1]
    kinds = ALL_KINDS if states else ("out",)

    with torch.inference_mode(False), torch.enable_grad(), _frozen(model), \
            lrp(model, spec, checkpoint):
        embeddings = model.get_input_embeddings()(ids).detach()  # (1, n, d)
        if spec.integrate:
            from harness_xai.lrp.integrated import integrated_gradients

            with StateCapture(model, adapter, kinds, trapezoid_pair) as capture:
                tokens, delta, start = integrated_gradients(model, capture, embeddings, target,
                                                            foil, params)
            params["baseline_delta"] = start
        else:
            embeddings.requires_grad_(True)
            with StateCapture(model, adapter, kinds, lrp_pair) as capture:
                deltas, grad = forward_backward(model, capture, embeddings, target, foil)
            tokens, delta = lrp_pair(embeddings.detach(), grad).sum((0, 2)).cpu(), float(deltas[0])

    layers = torch.cat([tokens[None], capture.stacked("out", n)])  # (L + 1, n)
    result = Attribution(tokens=layers[0].clone(), layers=layers, delta=delta, method=spec.name,
                         input_ids=ids[0].cpu(), target_id=target, foil_id=foil, params=params)
    if states:
        result.states = {k: capture.stacked(k, n) for k in STATE_KINDS if k in capture.present}
        result.heads = capture.stacked("heads", n)
        result.experts = capture.stacked_experts(n)
    return result


def forward_backward(model: nn.Module, capture: StateCapture, embeddings: torch.Tensor,
                     target: int, foil: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Δℓ per batch row (fp32, (B,)) and ∂̃ΣΔℓ/∂embeddings (B, n, d); hooks fill ``capture``."""
    capture.recording = True
    try:
        logits = model(inputs_embeds=embeddings, use_cache=False, logits_to_keep=1).logits
    finally:
        capture.recording = False  # forwards re-run by checkpointing are not recorded
    last = logits[:, -1].float()  # (B, vocab)
    deltas = last[:, target] - last[:, foil]  # (B,)
    (grad,) = torch.autograd.grad(deltas.sum(), embeddings)
    capture.done()
    return deltas.detach().cpu(), grad


@contextmanager
def _frozen(model: nn.Module) -> Iterator[None]:
    """Parameters stop requiring grad for the call (nothing is saved for weight gradients:
    ~25% less peak memory measured); their flags come back on exit."""
    frozen = [p for p in model.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in frozen:
            p.requires_grad_(True)


def input_device(model: nn.Module) -> torch.device:
    """Where the input ids must live: the embedding's execution device under accelerate's hooks
    (``device_map`` / offload: weights may sit on ``meta`` until the forward), else its weight's."""
    get_embeddings = getattr(model, "get_input_embeddings", None)
    if get_embeddings is None:  # not a transformers model: its first parameter decides
        return next(model.parameters()).device
    embedding = get_embeddings()
    for module in (embedding, model):
        hook = getattr(module, "_hf_hook", None)
        device = getattr(hook, "execution_device", None)
        if device is not None:
            return torch.device(device) if not isinstance(device, int) else torch.device("cuda", device)
    return embedding.weight.device


def contrast_inputs(model: nn.Module, tokenizer, input_ids, target_id,
                    foil_id) -> tuple[torch.Tensor, int, int]:
    """The checked inputs of a contrast: ids (1, n) on the model's input device, and the target
    and foil token ids (UserError when either is outside the vocabulary)."""
    ids = as_ids(input_ids, tokenizer)  # (1, n)
    target, foil = as_token(target_id, tokenizer), as_token(foil_id, tokenizer)
    vocab = model.get_output_embeddings().weight.shape[0]
    for name, tok in (("target_id", target), ("foil_id", foil)):
        if not 0 <= tok < vocab:
            raise UserError(f"{name}={tok} is outside the model's vocabulary (0..{vocab - 1}).")
    return ids.to(input_device(model)), target, foil


def as_ids(input_ids, tokenizer) -> torch.Tensor:
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


def as_token(token, tokenizer) -> int:
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
