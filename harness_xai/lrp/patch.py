"""Scoped, reversible installation of LRP rules on a model: ``with lrp(model, method): …``.

Algorithm:
1. Look up the method (which rules) and the family adapter (which modules get them).
2. Put the model in eval mode.
3. Override the ``forward`` of each norm, activation and product-factor module *on the instance*
   with one that returns the module's own output value and the rule's gradient (a gate held
   constant — CP-LRP — returns its value without gradient; its partner is left alone). A final-logit
   soft-cap (adapter's ``logit_softcap``) moves from the config (set to None) into the LM head's
   instance forward, recomputed bit-exact with the identity rule.
4. Point ``config._attn_implementation`` at a registered wrapper ``xai_<method>_<kernel>`` that
   rescales the q/k/v gradients and calls the original kernel (same masks, same kernel). When the
   kernel gets ``softcap=`` and q/k carry gradient, the eager kernel runs under ``IdentityTanh``
   (other kernels cap inside fused code: refused).
4b. Routed experts (mixture of experts): each experts module's instance ``forward`` re-runs
   the model's dropless loop with the router weights constant and the expert MLP under the
   method's rules (``rules.moe``; methods without layer rules keep the true gradient).
5. Optional gradient checkpointing (``checkpoint=True``): each decoder block's instance
   ``forward`` runs under ``torch.utils.checkpoint`` (non-reentrant), so only block inputs are
   kept for the backward and each block's forward is re-run there, rules included (the rules are
   deterministic, so the recomputed values and gradients are the same).
6. On exit — normal or by exception — delete the instance overrides, restore the attention
   implementation, the config's soft-cap and the training flag. Parameters and buffers are never
   touched.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager

import torch
from torch import nn

from harness_xai.errors import UserError
from harness_xai.lrp.adapters import Adapter, adapter_for
from harness_xai.lrp.methods import Method, get_method
from harness_xai.lrp.rules.activation import identity_activation
from harness_xai.lrp.rules.attention import QKVScales
from harness_xai.lrp.rules.moe import routed_experts
from harness_xai.lrp.rules.product import uniform_factor
from harness_xai.lrp.rules.softcap import IdentityTanh, capped_logits

_PREFIX = "xai_"


@contextmanager
def lrp(model: nn.Module, method: str | Method = "attnlrp",
        checkpoint: bool = False) -> Iterator[nn.Module]:
    """Install ``method``'s rules (and optionally block checkpointing) for the block's duration."""
    spec = get_method(method) if isinstance(method, str) else method
    adapter = adapter_for(model)
    adapter.check(model)
    with ExitStack() as undo:
        was_training = model.training
        model.eval()
        undo.callback(model.train, was_training)
        if spec.layer_rules:
            _install_layer_rules(model, adapter, undo, constant_gate=spec.gate == "constant")
        if spec.attention is not None:
            _install_attention_rule(model, spec, undo)
        if adapter.expert_fn is not None:
            _install_expert_rule(model, adapter, spec, undo)
        if checkpoint:
            for block in adapter.blocks(model):
                _override_forward(block, _checkpointed, undo)
        yield model


def _override_forward(module: nn.Module, make: Callable[[Callable], Callable], undo: ExitStack):
    """Shadow ``module.forward`` with ``make(original_forward)`` on this instance only.

    A module dispatched by accelerate (``device_map``, CPU/disk offload) keeps its hook: the hook
    lives in ``forward`` and calls ``_old_forward`` once the weights are on the execution device,
    so the rule replaces ``_old_forward`` instead.
    """
    name = "_old_forward" if ("_old_forward" in module.__dict__
                              and hasattr(module, "_hf_hook")) else "forward"
    current = getattr(module, name)
    if getattr(current, "_xai_rule", False):  # a module shared by several blocks
        return
    had_own = name in module.__dict__  # a user's own instance patch, restored on exit
    previous = module.__dict__.get(name)
    patched = make(current)
    patched._xai_rule = True
    setattr(module, name, patched)
    if had_own:
        undo.callback(setattr, module, name, previous)
    else:
        undo.callback(module.__dict__.pop, name, None)


def _install_layer_rules(model: nn.Module, adapter: Adapter, undo: ExitStack,
                         constant_gate: bool = False) -> None:
    for norm in adapter.norms(model):
        def make_norm(orig, norm=norm):
            def forward(x, *args, **kwargs):
                with torch.no_grad():
                    value = orig(x, *args, **kwargs)
                return adapter.norm_rule(norm, x, value)
            return forward
        _override_forward(norm, make_norm, undo)

    factors = list(adapter.product_factors(model))
    for act, partner in adapter.activations(model):
        gated = partner is not None  # a fused product (factors) is halved before the chunk
        constant = constant_gate and (gated or bool(factors))  # CP-LRP: act(gate) a constant

        def make_act(orig, gated=gated, constant=constant):
            def forward(x, *args, **kwargs):
                with torch.no_grad():
                    value = orig(x, *args, **kwargs)
                if constant:
                    return value
                out = identity_activation(x, value)
                return uniform_factor(out) if gated else out
            return forward
        _override_forward(act, make_act, undo)
        if partner is not None and not constant_gate:
            _override_forward(partner, _halved, undo)
    for factor in ([] if constant_gate else factors):
        _override_forward(factor, _halved, undo)
    _install_logit_softcap(model, adapter, undo)


def _install_expert_rule(model: nn.Module, adapter: Adapter, spec: Method,
                         undo: ExitStack) -> None:
    """Routed experts: the model's dropless loop re-run with the rules (``rules.moe``)."""
    mode = "plain" if not spec.layer_rules else ("constant" if spec.gate == "constant"
                                                 else "uniform")
    fn = adapter.expert_fn(mode)
    for block in adapter.blocks(model):
        experts = adapter.experts(block)
        if experts is None:
            continue

        def make(orig, experts=experts):
            def forward(hidden, index, weights):
                return routed_experts(experts, fn, hidden, index, weights, spec.layer_rules)
            return forward
        _override_forward(experts, make, undo)


def _checkpointed(orig: Callable) -> Callable:
    from torch.utils.checkpoint import checkpoint

    return lambda *args, **kwargs: checkpoint(orig, *args, use_reentrant=False, **kwargs)


def _halved(orig: Callable) -> Callable:
    return lambda *args, **kwargs: uniform_factor(orig(*args, **kwargs))


def _install_logit_softcap(model: nn.Module, adapter: Adapter, undo: ExitStack) -> None:
    """Identity rule on ``c · tanh(logits / c)``: the cap moves from the config into the LM head."""
    cap = getattr(model.config, adapter.logit_softcap, None) if adapter.logit_softcap else None
    if cap is None:
        return
    setattr(model.config, adapter.logit_softcap, None)
    undo.callback(setattr, model.config, adapter.logit_softcap, cap)
    _override_forward(model.get_output_embeddings(),
                      lambda orig: (lambda *a, **k: capped_logits(orig(*a, **k), cap)), undo)


def _install_attention_rule(model: nn.Module, spec: Method, undo: ExitStack) -> None:
    config = model.config
    base = config._attn_implementation or "eager"
    if base.startswith(_PREFIX):
        raise RuntimeError("lrp() blocks cannot be nested on the same model")
    name = f"{_PREFIX}{spec.name.replace('-', '')}_{base}"
    _register_attention(name, base, spec.attention)
    config._attn_implementation = name
    undo.callback(setattr, config, "_attn_implementation", base)


def _register_attention(name: str, base: str, scales: QKVScales) -> None:
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, AttentionInterface

    if name in ALL_ATTENTION_FUNCTIONS and name in ALL_MASK_ATTENTION_FUNCTIONS._global_mapping:
        return

    def attention(module, query, key, value, attention_mask, *args, **kwargs):
        # query: (batch, heads, n_q, head_dim); key/value: (batch, kv_heads, n_k, head_dim)
        query, key, value = scales.apply(query, key, value)
        kernel = _base_attention(module, base)
        if kwargs.get("softcap") is None or (scales.q == 0 and scales.k == 0):
            return kernel(module, query, key, value, attention_mask, *args, **kwargs)
        if base != "eager":  # the cap's tanh is fused into the kernel's own backward
            raise UserError(f"AttnLRP on attention soft-capping needs attn_implementation='eager' "
                            f"(kernel '{base}' fuses the cap); load the model with it.")
        with IdentityTanh():  # identity rule on the cap inside the family's eager kernel
            return kernel(module, query, key, value, attention_mask, *args, **kwargs)

    AttentionInterface.register(name, attention)
    if base in ALL_MASK_ATTENTION_FUNCTIONS._global_mapping:
        AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS._global_mapping[base])


def _base_attention(module: nn.Module, base: str) -> Callable:
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    if base == "eager":  # each family defines its own eager kernel next to its attention class
        return sys.modules[type(module).__module__].eager_attention_forward
    return ALL_ATTENTION_FUNCTIONS[base]
