"""The LRP engine: scoped patching, conservation, and oracles for the modified gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tiny_models import BIAS_FREE, FAMILIES, random_ids, tiny_model

from harness_xai import attribute
from harness_xai.errors import UserError
from harness_xai.lrp import lrp
from harness_xai.lrp.adapters import get_adapter
from harness_xai.lrp.methods import get_method

METHODS = ("attnlrp", "cp-lrp", "grad-x-input")


def _snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("method", METHODS)
def test_patched_forward_equals_unpatched(family, attn, method):
    model = tiny_model(family, attn)
    ids = random_ids()
    with torch.no_grad():
        reference = model(ids).logits
    with lrp(model, method):
        with torch.no_grad():
            patched = model(ids).logits
        if method != "grad-x-input":
            assert model.config._attn_implementation.startswith("xai_")
    assert (patched - reference).abs().max().item() <= 1e-6


@pytest.mark.parametrize("family", FAMILIES)
def test_model_unchanged_after_block_and_after_exception(family):
    model = tiny_model(family)
    model.train()  # the block switches to eval; the flag must come back
    ids = random_ids()
    before = _snapshot(model)
    model.eval()
    with torch.no_grad():
        reference = model(ids).logits
    model.train()
    with lrp(model, "attnlrp"):
        assert not model.training
    with pytest.raises(RuntimeError, match="boom"):
        with lrp(model, "cp-lrp"):
            raise RuntimeError("boom")
    assert model.training
    assert model.config._attn_implementation == "sdpa"
    assert [n for n, m in model.named_modules() if "forward" in vars(m)] == []
    after = _snapshot(model)
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(ids).logits, reference)


def test_user_instance_patch_is_restored():
    model = tiny_model("llama")
    norm = model.model.norm
    marker = norm.forward
    norm.forward = marker  # a user's own instance-level patch
    with lrp(model):
        assert norm.forward is not marker
    assert vars(norm)["forward"] is marker


@pytest.mark.parametrize("family", BIAS_FREE)
def test_cp_lrp_is_conservative_on_bias_free_models(family):
    model = tiny_model(family, layers=3)
    result = attribute(model, None, random_ids(30), 5, 11, method="cp-lrp")
    assert result.tokens.shape == (30,)
    assert result.layers.shape == (4, 30)
    assert abs(result.tokens.sum().item() - result.delta) <= 1e-4 * abs(result.delta)
    for layer_sum in result.layers.sum(-1).tolist():  # layer-by-layer conservation
        assert abs(layer_sum - result.delta) <= 1e-4 * abs(result.delta)


def test_attnlrp_is_not_conservative_and_differs_from_cp_lrp():
    model = tiny_model("llama", layers=3)
    ids = random_ids(30)
    attn = attribute(model, None, ids, 5, 11, method="attnlrp")
    cp = attribute(model, None, ids, 5, 11, method="cp-lrp")
    assert attn.delta == cp.delta
    assert not torch.allclose(attn.tokens, cp.tokens, rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("family", FAMILIES)
def test_grad_x_input_matches_autograd(family):
    model = tiny_model(family)
    ids = random_ids()
    emb = model.get_input_embeddings()(ids).detach().requires_grad_(True)
    logits = model(inputs_embeds=emb).logits[0, -1]
    (grad,) = torch.autograd.grad(logits[3] - logits[8], emb)
    expected = (emb * grad).sum(-1)[0]
    result = attribute(model, None, ids, 3, 8, method="grad-x-input")
    torch.testing.assert_close(result.tokens, expected.detach(), rtol=1e-5, atol=1e-7)


def _rms_const(x, weight, eps):
    """RMSNorm with 1/rms held constant (identity rule), written independently of the engine."""
    return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps).detach())


def _grad_scaled(t, s):
    return t * s + (t * (1 - s)).detach()


def _explicit_llama_relevance(model, ids, target, foil, qk_scale, v_scale):
    """Hand-written Llama forward with the AttnLRP rules spelled out; grad × input on it.

    Independent of the hooks: if the engine put a rule on the wrong module (or missed one), the
    two disagree.
    """
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    cfg = model.config
    n = ids.shape[1]
    heads, kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
    hd = cfg.hidden_size // heads
    x0 = model.model.embed_tokens(ids).detach().requires_grad_(True)  # (1, n, d)
    pos = torch.arange(n)[None]
    cos, sin = model.model.rotary_emb(x0, pos)
    causal = torch.full((n, n), float("-inf")).triu(1)
    h = x0
    for layer in model.model.layers:
        att = layer.self_attn
        a = _rms_const(h, layer.input_layernorm.weight, layer.input_layernorm.variance_epsilon)
        q = att.q_proj(a).view(1, n, heads, hd).transpose(1, 2)  # (1, H, n, hd)
        k = att.k_proj(a).view(1, n, kv_heads, hd).transpose(1, 2)
        v = att.v_proj(a).view(1, n, kv_heads, hd).transpose(1, 2)
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        q, k, v = _grad_scaled(q, qk_scale), _grad_scaled(k, qk_scale), _grad_scaled(v, v_scale)
        k = k.repeat_interleave(heads // kv_heads, dim=1)
        v = v.repeat_interleave(heads // kv_heads, dim=1)
        weights = F.softmax(q @ k.transpose(-1, -2) * hd ** -0.5 + causal, dim=-1)  # (1, H, n, n)
        o = (weights @ v).transpose(1, 2).reshape(1, n, -1)
        h = h + att.o_proj(o)
        m = _rms_const(h, layer.post_attention_layernorm.weight,
                       layer.post_attention_layernorm.variance_epsilon)
        gate = layer.mlp.gate_proj(m)
        act = gate * (F.silu(gate) / gate).detach()  # identity rule
        h = h + layer.mlp.down_proj(_grad_scaled(act, 0.5) * _grad_scaled(layer.mlp.up_proj(m), 0.5))
    final = _rms_const(h, model.model.norm.weight, model.model.norm.variance_epsilon)
    logits = model.lm_head(final)[0, -1]
    delta = logits[target] - logits[foil]
    (grad,) = torch.autograd.grad(delta, x0)
    return (x0 * grad).sum(-1)[0].detach(), delta.item()


@pytest.mark.parametrize("method,qk,v", [("attnlrp", 0.25, 0.5), ("cp-lrp", 0.0, 1.0)])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_engine_matches_explicit_rule_implementation(method, qk, v, attn):
    model = tiny_model("llama", attn, layers=2)
    ids = random_ids(20)
    expected, delta = _explicit_llama_relevance(model, ids, 4, 9, qk, v)
    result = attribute(model, None, ids, 4, 9, method=method)
    assert abs(result.delta - delta) <= 1e-5 * max(1.0, abs(delta))
    torch.testing.assert_close(result.tokens, expected, rtol=1e-4, atol=1e-6)


def test_determinism_bit_identical():
    model = tiny_model("llama")
    ids = random_ids()
    first = attribute(model, None, ids, 1, 2)
    second = attribute(model, None, ids, 1, 2)
    assert torch.equal(first.layers, second.layers)


def test_string_inputs_and_bad_tokens():
    model = tiny_model("llama")
    with pytest.raises(UserError, match="outside the model's vocabulary"):
        attribute(model, None, random_ids(), 5, 10_000)
    with pytest.raises(UserError, match="no tokenizer"):
        attribute(model, None, "hello", 5, 6)


def test_unknown_family_and_method_get_did_you_mean():
    with pytest.raises(UserError, match=r"did you mean 'llama'\?.*supported: .*llama"):
        get_adapter("lama")
    with pytest.raises(UserError, match=r"did you mean 'attnlrp'\?"):
        get_method("attnlrpp")


def test_attribute_runs_under_inference_mode():
    model = tiny_model("llama")
    ids = random_ids()
    outside = attribute(model, None, ids, 1, 2)
    with torch.inference_mode():
        inside = attribute(model, None, ids, 1, 2)
    assert torch.equal(outside.tokens, inside.tokens)
