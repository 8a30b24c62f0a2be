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


def _explicit_llama_relevance(model, ids, target, foil, qk_scale, v_scale, keep=None,
                              gate="uniform"):
    """Hand-written Llama forward with the AttnLRP rules spelled out; grad × input on it.

    Independent of the hooks: if the engine put a rule on the wrong module (or missed one), the
    two disagree. ``keep`` (a dict) receives the internal states kind → [tensor per layer].
    """
    def kept(kind, t):
        if keep is not None:
            keep.setdefault(kind, []).append(t)
        return t

    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    gate_rule, cfg = gate, model.config
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
        o = kept("heads", (weights @ v).transpose(1, 2).reshape(1, n, -1))
        h = kept("mid", h + kept("attn", att.o_proj(o)))
        m = _rms_const(h, layer.post_attention_layernorm.weight,
                       layer.post_attention_layernorm.variance_epsilon)
        gate = layer.mlp.gate_proj(m)
        if gate_rule == "constant":  # CP-LRP: act(stop_grad(gate)) ⊙ up, no halving
            product = F.silu(gate).detach() * layer.mlp.up_proj(m)
        else:
            act = gate * (F.silu(gate) / gate).detach()  # identity rule
            product = _grad_scaled(act, 0.5) * _grad_scaled(layer.mlp.up_proj(m), 0.5)
        h = h + kept("mlp", layer.mlp.down_proj(product))
    final = _rms_const(h, model.model.norm.weight, model.model.norm.variance_epsilon)
    logits = model.lm_head(final)[0, -1]
    delta = logits[target] - logits[foil]
    (grad,) = torch.autograd.grad(delta, x0, retain_graph=keep is not None)
    return (x0 * grad).sum(-1)[0].detach(), delta


EXPLICIT = [("attnlrp", 0.25, 0.5, "uniform"), ("cp-lrp", 0.0, 1.0, "constant"),
            ("cp-lrp-uniform", 0.0, 1.0, "uniform")]


@pytest.mark.parametrize("method,qk,v,gate", EXPLICIT)
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_engine_matches_explicit_rule_implementation(method, qk, v, gate, attn):
    model = tiny_model("llama", attn, layers=2)
    ids = random_ids(20)
    expected, delta = _explicit_llama_relevance(model, ids, 4, 9, qk, v, gate=gate)
    result = attribute(model, None, ids, 4, 9, method=method)
    assert abs(result.delta - delta.item()) <= 1e-5 * max(1.0, abs(delta.item()))
    torch.testing.assert_close(result.tokens, expected, rtol=1e-4, atol=1e-6)


def _state_relevance(delta, keep, n_heads):
    """kind → (n_layers, n) relevance of the kept tensors (heads: (n_layers, n_heads, n))."""
    out = {}
    for kind, tensors in keep.items():
        grads = torch.autograd.grad(delta, tensors, retain_graph=True)
        rows = [(t * g).detach() for t, g in zip(tensors, grads)]  # (1, n, d') each
        if kind == "heads":
            rows = [r.view(*r.shape[:2], n_heads, -1).sum(-1)[0].T for r in rows]
        else:
            rows = [r.sum(-1)[0] for r in rows]
        out[kind] = torch.stack(rows)
    return out


@pytest.mark.parametrize("method,qk,v,gate", EXPLICIT)
def test_internal_states_match_explicit_rule_implementation(method, qk, v, gate):
    model = tiny_model("llama", layers=3)
    ids = random_ids(20)
    keep = {}
    _, delta = _explicit_llama_relevance(model, ids, 4, 9, qk, v, keep, gate=gate)
    expected = _state_relevance(delta, keep, model.config.num_attention_heads)
    result = attribute(model, None, ids, 4, 9, method=method)
    assert set(result.states) == {"mid", "attn", "mlp"}
    for kind, value in expected.items():
        got = result.heads if kind == "heads" else result.states[kind]
        assert got.shape == value.shape
        torch.testing.assert_close(got, value, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_grad_x_input_states_match_plain_autograd(family):
    """No rule at all: each state's relevance is its plain gradient × itself (retain_grad)."""
    model = tiny_model(family, layers=2)
    ids = random_ids()
    kept = {"mid": [], "attn": [], "mlp": [], "heads": []}

    def keep(kind, is_input):
        def hook(module, args, output=None):
            t = args[0] if is_input else output
            t = t[0] if isinstance(t, tuple) else t
            t.retain_grad()
            kept[kind].append(t)
        return hook if not is_input else (lambda module, args: hook(module, args))
    handles = []
    for block in model.model.layers:
        handles += [block.post_attention_layernorm.register_forward_pre_hook(keep("mid", True)),
                    block.self_attn.o_proj.register_forward_pre_hook(keep("heads", True)),
                    block.self_attn.register_forward_hook(keep("attn", False)),
                    block.mlp.register_forward_hook(keep("mlp", False))]
    emb = model.get_input_embeddings()(ids).detach().requires_grad_(True)
    logits = model(inputs_embeds=emb).logits[0, -1]
    (logits[3] - logits[8]).backward()
    for handle in handles:
        handle.remove()
    result = attribute(model, None, ids, 3, 8, method="grad-x-input")
    for kind, tensors in kept.items():
        rows = [(t * t.grad).detach() for t in tensors]
        if kind == "heads":
            expected = torch.stack([r.view(1, 24, 4, -1).sum(-1)[0].T for r in rows])
            got = result.heads
        else:
            expected, got = torch.stack([r.sum(-1)[0] for r in rows]), result.states[kind]
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)


def test_checkpointing_really_recomputes_blocks():
    model = tiny_model("llama")
    calls = []
    # a pre-hook: the recomputation stops as soon as the last saved tensor is back (inside the
    # MLP), so the MLP's post-hook would not see it
    model.model.layers[0].mlp.register_forward_pre_hook(lambda *a: calls.append(1))
    attribute(model, None, random_ids(), 1, 2)
    assert len(calls) == 1
    attribute(model, None, random_ids(), 1, 2, checkpoint=True)
    assert len(calls) == 3  # forward + recomputation in the backward


def test_bf16_model_gets_fp32_relevance_close_to_fp32_model():
    model = tiny_model("llama", layers=2)
    ids = random_ids(24)
    reference = attribute(model, None, ids, 4, 9)
    result = attribute(model.to(torch.bfloat16), None, ids, 4, 9)
    assert next(model.parameters()).dtype == torch.bfloat16
    assert result.tokens.dtype == result.layers.dtype == result.heads.dtype == torch.float32
    assert all(v.dtype == torch.float32 for v in result.states.values())
    # bf16 keeps ~3 significant digits: loose agreement, but far tighter than chance
    scale = reference.layers.abs().max().item()
    assert (result.layers - reference.layers).abs().max().item() <= 0.05 * scale
    assert abs(result.delta - reference.delta) <= 0.05 * max(1.0, abs(reference.delta))
    corr = torch.corrcoef(torch.stack([result.tokens, reference.tokens]))[0, 1].item()
    assert corr > 0.99


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


# ---- integrated gradients ----

def _ig_loop(model, ids, target, foil, steps, baseline):
    """Integrated gradients written out: one unbatched forward/backward per path point."""
    emb = model.get_input_embeddings()
    x = emb(ids).detach()  # (1, n, d)
    vocab = model.get_output_embeddings().weight.shape[0]
    base = (torch.zeros_like(x) if baseline == "zero"
            else emb(torch.arange(vocab)[None]).detach().mean(1, keepdim=True).expand_as(x))
    points, grads, deltas = [], [], []
    for k in range(steps + 1):
        point = (base + (k / steps) * (x - base)).requires_grad_(True)
        logits = model(inputs_embeds=point).logits[0, -1]
        delta = logits[target] - logits[foil]
        grads.append(torch.autograd.grad(delta, point)[0])
        points.append(point.detach())
        deltas.append(delta.item())
    tokens = sum(((points[k] - points[k - 1]) * (grads[k] + grads[k - 1]) / 2).sum(-1)[0]
                 for k in range(1, steps + 1))
    return tokens, deltas[-1], deltas[0]


@pytest.mark.parametrize("family,baseline", [("llama", "mean-embedding"), ("gpt2", "zero"),
                                             ("gpt_neox", "mean-embedding")])
def test_integrated_gradients_equals_per_point_loop(family, baseline):
    model = tiny_model(family)
    ids = random_ids(20)
    expected, delta, start = _ig_loop(model, ids, 4, 9, 12, baseline)
    for batch_size in (2, 5, 17):  # chunks share their boundary point: same integral
        result = attribute(model, None, ids, 4, 9, method="integrated-gradients", steps=12,
                           batch_size=batch_size, baseline=baseline)
        torch.testing.assert_close(result.tokens, expected, rtol=1e-4,
                                   atol=1e-5 * expected.abs().max().item())
        assert result.delta == pytest.approx(delta, abs=1e-5)
        assert result.params == {"steps": 12, "batch_size": batch_size, "baseline": baseline,
                                 "quadrature": "trapezoid",
                                 "baseline_delta": pytest.approx(start, abs=1e-5)}
        assert result.method == "integrated-gradients"


@pytest.mark.parametrize("family,attn", [("llama", "sdpa"), ("gemma2", "eager"),
                                         ("gpt2", "sdpa")])
def test_integrated_gradients_completeness_error_shrinks_with_steps(family, attn):
    """Σ R = Δℓ(input) − Δℓ(baseline) up to the trapezoid error, O(1/steps²): for every
    residual state too (each is a path the whole output depends on)."""
    model = tiny_model(family, attn)
    ids = random_ids(24)
    errors = {}
    for steps in (16, 64):
        result = attribute(model, None, ids, 4, 9, method="integrated-gradients", steps=steps)
        change = result.delta - result.params["baseline_delta"]
        rows = torch.cat([result.layers, result.states["mid"]]).sum(-1)  # (2L + 1,)
        errors[steps] = ((rows - change).abs().max() / abs(change)).item()
    assert errors[64] <= 2e-2
    assert errors[64] <= errors[16] / 6  # ideal: 16× for 4× the steps


def test_integrated_gradients_options_are_checked():
    model = tiny_model("llama")
    ids = random_ids()
    with pytest.raises(UserError, match="has no option 'steps'"):
        attribute(model, None, ids, 1, 2, method="attnlrp", steps=8)
    with pytest.raises(UserError, match="steps >= 1"):
        attribute(model, None, ids, 1, 2, method="integrated-gradients", steps=0)
    with pytest.raises(UserError, match="must be an integer"):
        attribute(model, None, ids, 1, 2, method="integrated-gradients", steps="8")
    with pytest.raises(UserError, match="must be one of mean-embedding, zero"):
        attribute(model, None, ids, 1, 2, method="integrated-gradients", baseline="pad")


@pytest.mark.parametrize("family", ["llama", "gpt_neox"])
def test_offloaded_model_attributes_like_the_plain_one(family, tmp_path):
    """accelerate's offload hooks (weights on `meta`, moved in per forward) stay in charge: the
    rules patch `_old_forward`, the result equals the plain model's, the hooks survive."""
    from accelerate import cpu_offload
    from tiny_models import random_ids, tiny_model

    from harness_xai import attribute

    plain = tiny_model(family)
    offloaded = tiny_model(family)
    cpu_offload(offloaded, execution_device=torch.device("cpu"))
    assert any(p.device.type == "meta" for p in offloaded.parameters())
    ids = random_ids(20)
    want = attribute(plain, None, ids, 5, 7, method="attnlrp")
    got = attribute(offloaded, None, ids, 5, 7, method="attnlrp")
    torch.testing.assert_close(got.layers, want.layers, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got.heads, want.heads, rtol=1e-5, atol=1e-6)
    hooked = [m for m in offloaded.modules() if "_old_forward" in vars(m)]
    assert hooked and not any(getattr(m._old_forward, "_xai_rule", False) for m in hooked)
