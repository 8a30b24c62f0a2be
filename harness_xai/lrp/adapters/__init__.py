"""Model-family adapters: which submodules of a family get which LRP rule.

One small file per family registers an :class:`Adapter` for the ``config.model_type`` values it
covers. Attention needs no adapter entry: it is hooked through transformers' attention registry
(see ``harness_xai.lrp.patch``), so every family's attention kernel works unchanged; a kernel's
``softcap=`` argument (Gemma 2 attention-logit soft-cap) gets the identity rule there too.
An adapter also names, per block, where the internal states are read (``mid_input``,
``attn_output``, ``mlp_output``, ``head_input``; defaults fit the Llama layout), and for a
mixture of experts the routed experts module and the expert function the rules run
(``experts``, ``expert_fn``; ``harness_xai.lrp.rules.moe``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from harness_xai.errors import UserError
from harness_xai.registry import Registry


@dataclass(frozen=True)
class Adapter:
    """Rule assignment for one model family."""

    family: str
    model_types: tuple[str, ...]
    #: the decoder blocks in order; their outputs are the residual-stream states
    blocks: Callable[[nn.Module], Sequence[nn.Module]]
    #: normalisation modules of the model and the identity-rule replacement of their forward:
    #: ``norm_rule(module, x, value) -> value with the rule's gradient``
    norms: Callable[[nn.Module], Sequence[nn.Module]]
    norm_rule: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
    #: per block, (activation module, its product partner) of a gated MLP ``act(gate) ⊙ up``;
    #: a partner of ``None`` means a plain MLP (identity rule on the activation only)
    activations: Callable[[nn.Module], Sequence[tuple[nn.Module, nn.Module | None]]]
    #: modules whose whole output feeds both factors of a product (Phi-3's fused ``gate_up_proj``
    #: is chunked into ``gate`` and ``up``): output gradient halved, i.e. the uniform rule on
    #: ``act(gate) ⊙ up`` applied before the chunk; their activations are listed with partner None
    product_factors: Callable[[nn.Module], Sequence[nn.Module]] = lambda model: ()
    #: config attribute of a final-logit soft-cap ``c · tanh(z / c)`` (identity rule), if any
    logit_softcap: str | None = None
    #: raises UserError for configurations of the family the rules do not cover
    check: Callable[[nn.Module], None] = lambda model: None
    #: internal states, per decoder block (defaults: the Llama layout). ``mid_input``: the module
    #: whose *input* is the residual between attention and MLP (``None``: parallel residual, no
    #: such state); ``attn_output`` / ``mlp_output``: the modules whose *output* is the branch
    #: added to the residual (after any post-norm); ``head_input``: the output projection, whose
    #: *input* is the concatenation of the heads' outputs
    mid_input: Callable[[nn.Module], nn.Module | None] = \
        lambda block: block.post_attention_layernorm
    attn_output: Callable[[nn.Module], nn.Module] = lambda block: block.self_attn
    mlp_output: Callable[[nn.Module], nn.Module] = lambda block: block.mlp
    head_input: Callable[[nn.Module], nn.Module] = lambda block: block.self_attn.o_proj
    #: mixture of experts: per block, the routed experts module called as
    #: ``experts(hidden (T, d), top_k_index (T, k), top_k_weights (T, k))`` (None: dense MLP),
    #: and ``expert_fn(mode)`` → ``fn(experts, e, x) = E_e(x)`` under the rule mode "plain",
    #: "uniform" or "constant" (see ``harness_xai.lrp.rules.moe``)
    experts: Callable[[nn.Module], nn.Module | None] = lambda block: None
    expert_fn: Callable[[str], Callable] | None = None


#: config.model_type → Adapter (built-ins registered at the bottom of this module)
ADAPTERS: Registry[Adapter] = Registry(
    "model family", "Add an adapter (harness_xai/lrp/adapters/, register_adapter) or use a "
    "supported model.")

#: families transformers runs but the rules do not cover: model_type → why (refused up front)
REFUSED: dict[str, str] = {
    "qwen3_next": "its Gated DeltaNet layers (linear attention with a gated delta-rule "
                  "recurrence, interleaved with full attention) have no LRP rule here that is "
                  "stated and checked against an explicit reference",
}


def register_adapter(adapter: Adapter, *, overwrite: bool = False) -> Adapter:
    """Register ``adapter`` for each of its ``model_types``; a type already taken is refused
    unless ``overwrite=True`` (checked for all types before any is registered)."""
    if not overwrite:
        for model_type in adapter.model_types:
            if model_type in ADAPTERS and ADAPTERS[model_type] is not adapter:
                ADAPTERS.register(model_type, adapter)  # raises: taken
    for model_type in adapter.model_types:
        ADAPTERS.register(model_type, adapter, overwrite=True)
    return adapter


def get_adapter(model_type: str | None) -> Adapter:
    """The adapter for ``config.model_type``; unknown types fail before any work is done."""
    if model_type in REFUSED and model_type not in ADAPTERS:
        raise UserError(f"unsupported model family '{model_type}' (config.model_type of the "
                        f"model): {REFUSED[model_type]}. Attribute a supported family "
                        f"({', '.join(sorted(ADAPTERS))}) or run without --attribute.")
    return ADAPTERS.get(model_type)


def adapter_for(model: nn.Module) -> Adapter:
    return get_adapter(getattr(getattr(model, "config", None), "model_type", None))


# Built-in families register themselves exactly as a user's adapter module would, when this
# module is first imported (before any user code can register).
from harness_xai.lrp.adapters import (  # noqa: E402,F401
    gemma, gemma3, gpt2, gpt_neox, gpt_oss, granite, llama, mixtral, olmo2, olmo3, olmoe, phi3,
    qwen3, qwen3_moe, smollm3)
