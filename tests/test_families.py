"""Every registered model family: bit-exact patched forward, clean undo, CP-LRP conservation,
determinism, and hand-written oracles of the AttnLRP rules for the families least like Llama
(GPT-NeoX, GPT-2, Gemma 2, Gemma 3)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from tiny_models import EAGER_ONLY, FAMILIES, MOE, MORE_FAMILIES, random_ids, tiny_model

from harness_xai import attribute
from harness_xai.errors import UserError
from harness_xai.lrp import lrp
from harness_xai.lrp.adapters import ADAPTERS, get_adapter

ALL = FAMILIES + tuple(MORE_FAMILIES)
# transformers refuses SDPA for Gemma 2 (attention soft-capping); every other family gets both
KERNELS = {family: ("eager",) if family in EAGER_ONLY else ("sdpa", "eager")
           for family in ALL}
CASES = [(family, attn) for family in ALL for attn in KERNELS[family]]
# additive terms that absorb relevance; zeroed for the conservation test
ADDITIVE = {"qwen2": "q/k/v biases", "gpt_neox": "Linear and LayerNorm biases",
            "gpt2": "Conv1D and LayerNorm biases, learned position embeddings wpe",
            "gpt_oss": "attention, router and expert biases"}
#: a constant inside the block even without biases: gpt-oss's experts compute (u' + 1) ⊙ glu
NOT_CONSERVATIVE = ("gpt_oss",)
CONSERVATIVE_CASES = [(f, a) for f, a in CASES if f not in NOT_CONSERVATIVE]
SOFTCAP = {"gemma2": ("attn_logit_softcapping", "final_logit_softcapping"),
           "gemma3_text": ("final_logit_softcapping",)}


def test_every_registered_family_is_tested():
    get_adapter("llama")  # loads the built-ins
    assert set(ADAPTERS) == set(ALL)


def _config_state(model):
    return {key: getattr(model.config, key) for key in
            ("_attn_implementation", "attn_logit_softcapping", "final_logit_softcapping")
            if hasattr(model.config, key)}


@pytest.mark.parametrize("family,attn", CASES)
def test_patched_forward_is_exact_and_model_restored(family, attn):
    model = tiny_model(family, attn)
    ids = random_ids()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    config = _config_state(model)
    with torch.no_grad():
        reference = model(ids).logits
    for method in ("attnlrp", "cp-lrp", "cp-lrp-uniform"):
        with lrp(model, method):
            assert model.config._attn_implementation.startswith("xai_")
            assert any("forward" in vars(m) for m in model.modules())
            with torch.no_grad():
                patched = model(ids).logits
        # MoE: the rule re-runs the experts' eager loop; the model's default kernel (grouped_mm)
        # sums in another order (bit-exact against the eager kernel: tests/test_moe.py)
        assert (patched - reference).abs().max().item() <= (1e-5 if family in MOE else 1e-6)
        assert _config_state(model) == config
        assert [n for n, m in model.named_modules() if "forward" in vars(m)] == []
    assert all(getattr(model.config, key) is not None for key in SOFTCAP.get(family, ()))
    after = model.state_dict()
    assert state.keys() == after.keys() and all(torch.equal(state[k], after[k]) for k in state)


def _zero_additive(model):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or ".wpe." in name:
                p.zero_()


@pytest.mark.parametrize("method", ["cp-lrp", "cp-lrp-uniform"])
@pytest.mark.parametrize("family,attn", CONSERVATIVE_CASES)
def test_cp_lrp_conserves_delta_layer_by_layer(family, attn, method):
    model = tiny_model(family, attn, layers=3)
    if family in ADDITIVE:
        _zero_additive(model)
    ids = random_ids(30)
    result = attribute(model, None, ids, 5, 11, method=method)
    with torch.no_grad():  # Δℓ is the difference of the logits the model outputs (capped if so)
        logits = model(ids).logits[0, -1]
    assert result.delta == pytest.approx((logits[5] - logits[11]).item(), rel=1e-5, abs=1e-6)
    assert result.layers.shape == (4, 30)
    for layer_sum in result.layers.sum(-1).tolist():  # row 0 = tokens
        assert abs(layer_sum - result.delta) <= 1e-4 * abs(result.delta)


@pytest.mark.parametrize("family", ALL)
def test_attribution_is_deterministic(family):
    model = tiny_model(family, KERNELS[family][0])
    first = attribute(model, None, random_ids(), 1, 2)
    second = attribute(model, None, random_ids(), 1, 2)
    assert torch.equal(first.layers, second.layers) and first.delta == second.delta


# ---- oracles: each family's forward written out by hand, rules spelled out, grad × input ----

def _scaled(t, s):
    """Value ``t``, gradient ``s · ∂/∂t``."""
    return t * s + (t * (1 - s)).detach()


def _ident(x, fx):
    """Identity rule: value ``f(x)``, gradient ``f(x)/x``."""
    return x * (fx / x).detach()


def _ln(x, mod):
    c = x - x.mean(-1, keepdim=True)
    return c / (c.pow(2).mean(-1, keepdim=True) + mod.eps).sqrt().detach() * mod.weight + mod.bias


def _rms(x, mod, offset=1.0):
    return x / (x.pow(2).mean(-1, keepdim=True) + mod.eps).sqrt().detach() * (offset + mod.weight)


def _rope(t, cos, sin):
    rot = cos.shape[-1]
    r, rest = t[..., :rot], t[..., rot:]
    half = torch.cat([-r[..., rot // 2:], r[..., :rot // 2]], -1)
    return torch.cat([r * cos[:, None] + half * sin[:, None], rest], -1)


class Rules:
    """Scales and switches of the oracle; ``wrong`` variants must disagree with the engine."""

    def __init__(self, qk=0.25, v=0.5, product=0.5, cap_identity=True, gate_constant=False):
        self.qk, self.v, self.product, self.cap_identity = qk, v, product, cap_identity
        self.gate_constant = gate_constant  # CP-LRP: act(gate) detached, up's gradient whole

    def gated(self, act, up):
        if self.gate_constant:
            return act.detach() * up
        return _scaled(act, self.product) * _scaled(up, self.product)

    def cap(self, s, c):
        capped = torch.tanh(s / c) * c
        return _ident(s, capped) if self.cap_identity else capped

    def attend(self, q, k, v, scale, mask, cap=None):
        # q: (1, H, n, hd); k, v: (1, H_kv, n, hd)
        q, k, v = _scaled(q, self.qk), _scaled(k, self.qk), _scaled(v, self.v)
        rep = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
        scores = q @ k.transpose(-1, -2) * scale  # (1, H, n, n)
        if cap is not None:
            scores = self.cap(scores, cap)
        out = F.softmax(scores + mask, -1) @ v
        return out.transpose(1, 2).reshape(q.shape[0], q.shape[2], -1)


def _causal(n, window=None):
    i, j = torch.arange(n)[:, None], torch.arange(n)[None]
    ok = (j <= i) & ((i - j < window) if window else True)
    return torch.zeros(n, n).masked_fill(~ok, float("-inf"))


def _heads(t, hd):
    return t.view(1, t.shape[1], -1, hd).transpose(1, 2)


def _kept(keep, kind, t):
    """Record ``t`` (the very tensor used downstream) as an internal state of the oracle."""
    if keep is not None:
        keep.setdefault(kind, []).append(t)
    return t


def _gpt_neox(model, x0, rules, keep=None):
    net, n = model.gpt_neox, x0.shape[1]
    hd = model.config.hidden_size // model.config.num_attention_heads
    cos, sin = net.rotary_emb(x0, torch.arange(n)[None])
    h = x0
    for layer in net.layers:
        att, mlp = layer.attention, layer.mlp
        qkv = _heads(att.query_key_value(_ln(h, layer.input_layernorm)), 3 * hd)
        q, k, v = qkv.chunk(3, -1)
        heads = _kept(keep, "heads", rules.attend(_rope(q, cos, sin), _rope(k, cos, sin), v,
                                                  hd ** -0.5, _causal(n)))
        o = _kept(keep, "attn", att.dense(heads))
        u = mlp.dense_h_to_4h(_ln(h, layer.post_attention_layernorm))  # parallel residual
        h = h + o + _kept(keep, "mlp", mlp.dense_4h_to_h(_ident(u, F.gelu(u))))
    return model.lm_head(_ln(h, net.final_layer_norm))


def _gpt2(model, x0, rules, keep=None):
    net, n, d = model.transformer, x0.shape[1], model.config.hidden_size
    hd = d // model.config.num_attention_heads
    h = x0 + net.wpe(torch.arange(n))[None]
    for block in net.h:
        q, k, v = block.attn.c_attn(_ln(h, block.ln_1)).split(d, -1)
        heads = _kept(keep, "heads", rules.attend(_heads(q, hd), _heads(k, hd), _heads(v, hd),
                                                  hd ** -0.5, _causal(n)))
        h = _kept(keep, "mid", h + _kept(keep, "attn", block.attn.c_proj(heads)))
        u = block.mlp.c_fc(_ln(h, block.ln_2))
        gelu_new = 0.5 * u * (1 + torch.tanh(math.sqrt(2 / math.pi) * (u + 0.044715 * u ** 3)))
        h = h + _kept(keep, "mlp", block.mlp.c_proj(_ident(u, gelu_new)))
    return model.lm_head(_ln(h, net.ln_f))


def _gemma(model, x0, rules, keep=None):
    net, cfg, n = model.model, model.config, x0.shape[1]
    h = x0  # the scaled embeddings: the embedding module multiplies by √d
    for i, layer in enumerate(net.layers):
        att, mlp = layer.self_attn, layer.mlp
        sliding = cfg.layer_types[i] == "sliding_attention"
        if cfg.model_type == "gemma3_text":  # per-layer-type rotary tables
            cos, sin = net.rotary_emb(x0, torch.arange(n)[None], cfg.layer_types[i])
        else:
            cos, sin = net.rotary_emb(x0, torch.arange(n)[None])
        a = _rms(h, layer.input_layernorm)
        q, k, v = (_heads(p(a), cfg.head_dim) for p in (att.q_proj, att.k_proj, att.v_proj))
        if hasattr(att, "q_norm"):
            q, k = _rms(q, att.q_norm), _rms(k, att.k_norm)
        o = _kept(keep, "heads", rules.attend(_rope(q, cos, sin), _rope(k, cos, sin), v,
                                              cfg.query_pre_attn_scalar ** -0.5,
                                              _causal(n, cfg.sliding_window if sliding else None),
                                              cap=cfg.attn_logit_softcapping))
        h = h + _kept(keep, "attn", _rms(att.o_proj(o), layer.post_attention_layernorm))
        h = _kept(keep, "mid", h)
        m = _rms(h, layer.pre_feedforward_layernorm)
        gate = mlp.gate_proj(m)
        act = _ident(gate, F.gelu(gate, approximate="tanh"))
        y = mlp.down_proj(rules.gated(act, mlp.up_proj(m)))
        h = h + _kept(keep, "mlp", _rms(y, layer.post_feedforward_layernorm))
    logits = model.lm_head(_rms(h, net.norm))
    cap = cfg.final_logit_softcapping
    return logits if cap is None else rules.cap(logits, cap)


ORACLES = {"gpt_neox": _gpt_neox, "gpt2": _gpt2, "gemma2": _gemma, "gemma3_text": _gemma}
ORACLE_CASES = [(f, a) for f in ORACLES for a in KERNELS[f]]


def _oracle(family, model, ids, target, foil, rules, states=False):
    """Token relevance and Δℓ of the hand-written forward; with ``states``, also kind →
    (n_layers, n) relevance of the recorded internal states ("heads": (n_layers, n_heads, n))."""
    x0 = model.get_input_embeddings()(ids).detach().requires_grad_(True)  # (1, n, d)
    keep: dict[str, list[torch.Tensor]] = {}
    logits = ORACLES[family](model, x0, rules, keep)[0, -1]
    delta = logits[target] - logits[foil]
    kinds = sorted(keep)
    grads = torch.autograd.grad(delta, [x0] + [t for k in kinds for t in keep[k]])
    tokens = (x0 * grads[0]).sum(-1)[0].detach()
    if not states:
        return tokens, delta.item()
    heads, rel, it = model.config.num_attention_heads, {}, iter(grads[1:])
    for kind in kinds:
        rows = [(t * next(it)).detach() for t in keep[kind]]  # (1, n, d') each
        if kind == "heads":
            rows = [r.view(*r.shape[:2], heads, -1).sum(-1)[0].T for r in rows]
        else:
            rows = [r.sum(-1)[0] for r in rows]
        rel[kind] = torch.stack(rows)
    return tokens, delta.item(), rel


METHOD_RULES = [("attnlrp", Rules()), ("cp-lrp", Rules(qk=0.0, v=1.0, gate_constant=True)),
                ("cp-lrp-uniform", Rules(qk=0.0, v=1.0))]


@pytest.mark.parametrize("method,rules", METHOD_RULES)
@pytest.mark.parametrize("family,attn", ORACLE_CASES)
def test_engine_matches_hand_written_rules(family, attn, method, rules):
    model = tiny_model(family, attn)
    ids = random_ids(20)
    expected, delta = _oracle(family, model, ids, 4, 9, rules)
    result = attribute(model, None, ids, 4, 9, method=method)
    assert result.delta == pytest.approx(delta, rel=1e-5, abs=1e-6)
    torch.testing.assert_close(result.tokens, expected, rtol=1e-4, atol=1e-6)


WRONG = {"q/k gradient ½ instead of ¼": Rules(qk=0.5), "v gradient 1 instead of ½": Rules(v=1.0),
         "true tanh gradient on the soft-caps": Rules(cap_identity=False),
         "product factors not halved": Rules(product=1.0),
         "gate held constant (CP-LRP's rule)": Rules(gate_constant=True)}
# a wrong rule only shows where its operation occurs: soft-caps in Gemma, gated products in Gemma
WRONG_CASES = [(f, w) for f in ORACLES for w in WRONG
               if ("tanh" not in w or f in SOFTCAP)
               and (("product" not in w and "gate" not in w) or f in SOFTCAP)]


@pytest.mark.parametrize("family,wrong", WRONG_CASES)
def test_oracle_with_a_wrong_rule_disagrees(family, wrong):
    """The 1e-4 agreement above is meaningful: one wrong rule in the oracle breaks it."""
    model = tiny_model(family, KERNELS[family][-1])
    ids = random_ids(20)
    expected, _ = _oracle(family, model, ids, 4, 9, WRONG[wrong])
    result = attribute(model, None, ids, 4, 9, method="attnlrp")
    gap = (result.tokens - expected).abs().max() / expected.abs().max()
    assert gap > 1e-2


def test_gpt2_reordered_eager_attention_is_refused():
    model = tiny_model("gpt2", "eager")
    model.config.reorder_and_upcast_attn = True
    with pytest.raises(UserError, match="reorder_and_upcast_attn"):
        attribute(model, None, random_ids(), 1, 2)
    assert [n for n, m in model.named_modules() if "forward" in vars(m)] == []


def test_softcap_in_a_fused_kernel_is_refused_for_attnlrp_only():
    """A kernel other than eager applies the attention soft-cap inside its own backward, where
    the identity rule cannot reach: AttnLRP refuses; CP-LRP (q, k constant) does not need it."""
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
    from transformers.modeling_utils import AttentionInterface
    from transformers.models.gemma2 import modeling_gemma2

    AttentionInterface.register("xaitest_fused", modeling_gemma2.eager_attention_forward)
    AttentionMaskInterface.register("xaitest_fused",
                                    ALL_MASK_ATTENTION_FUNCTIONS._global_mapping["eager"])
    model = tiny_model("gemma2", "eager")
    model.config._attn_implementation = "xaitest_fused"
    ids = random_ids()
    with pytest.raises(UserError, match="needs attn_implementation='eager'"):
        attribute(model, None, ids, 1, 2, method="attnlrp")
    assert model.config._attn_implementation == "xaitest_fused"
    assert [n for n, m in model.named_modules() if "forward" in vars(m)] == []
    cp = attribute(model, None, ids, 1, 2, method="cp-lrp")
    assert abs(cp.tokens.sum().item() - cp.delta) <= 1e-4 * abs(cp.delta)


# ---- internal states: mid-block residual, attention / MLP branches, heads ----

def _attribute_bias_free(family, attn, method, layers=3, **config):
    model = tiny_model(family, attn, layers=layers)
    for key, value in config.items():
        setattr(model.config, key, value)
        for block in get_adapter(model.config.model_type).blocks(model):
            if hasattr(block, key):
                setattr(block, key, value)
    if family in ADDITIVE:
        _zero_additive(model)
    return attribute(model, None, random_ids(30), 5, 11, method=method)


@pytest.mark.parametrize("method", ["attnlrp", "cp-lrp", "cp-lrp-uniform"])
@pytest.mark.parametrize("family,attn", CASES)
def test_internal_state_identities(family, attn, method):
    """Exact identities of the rules (bias-free), per position:
    1. the MLP sub-block is position-wise and conservative under the rules (identity rule on
       norm and activation, uniform rule on the gated product), so R(mid_l) = R(out_l);
    2. the output projection is linear and bias-free (and a post-norm conserves per position),
       so Σ_heads R(head) = R(attention branch);
    3. CP-LRP: every mid-block state carries Δℓ in total."""
    result = _attribute_bias_free(family, attn, method)
    parallel = family == "gpt_neox"
    assert set(result.states) == ({"attn", "mlp"} if parallel else {"mid", "attn", "mlp"})
    assert all(v.shape == (3, 30) and v.dtype == torch.float32 for v in result.states.values())
    assert result.heads.shape == (3, 4, 30)
    scale = result.layers.abs().max().item()
    torch.testing.assert_close(result.heads.sum(1), result.states["attn"], rtol=0,
                               atol=1e-5 * scale)
    assert result.states["attn"].abs().max() > 1e-3 * scale  # a real, non-zero branch
    if not parallel and family not in NOT_CONSERVATIVE:
        torch.testing.assert_close(result.states["mid"], result.layers[1:], rtol=0,
                                   atol=1e-5 * scale)
        # a capture in the wrong place (the MLP's input instead of the residual) breaks it
        assert (result.states["mlp"] - result.layers[1:]).abs().max() > 1e-3 * scale
    if method.startswith("cp-lrp") and not parallel and family not in NOT_CONSERVATIVE:
        for total in result.states["mid"].sum(-1).tolist():
            assert abs(total - result.delta) <= 1e-4 * abs(result.delta)


@pytest.mark.parametrize("method", ["attnlrp", "cp-lrp"])
def test_sequential_gpt_neox_has_a_mid_state(method):
    result = _attribute_bias_free("gpt_neox", "sdpa", method, use_parallel_residual=False)
    assert set(result.states) == {"mid", "attn", "mlp"}
    scale = result.layers.abs().max().item()
    torch.testing.assert_close(result.states["mid"], result.layers[1:], rtol=0, atol=1e-5 * scale)


@pytest.mark.parametrize("method,rules", METHOD_RULES)
@pytest.mark.parametrize("family,attn", ORACLE_CASES)
def test_internal_states_match_hand_written_rules(family, attn, method, rules):
    """Each state where the hand-written forward has it (biases kept, so nothing cancels)."""
    model = tiny_model(family, attn)
    ids = random_ids(20)
    _, _, expected = _oracle(family, model, ids, 4, 9, rules, states=True)
    result = attribute(model, None, ids, 4, 9, method=method)
    assert set(result.states) | {"heads"} == set(expected)
    for kind, value in expected.items():
        got = result.heads if kind == "heads" else result.states[kind]
        torch.testing.assert_close(got, value, rtol=1e-4, atol=1e-6 * value.abs().max().item())


@pytest.mark.parametrize("family", ALL)
def test_states_off_and_checkpointing_change_nothing(family):
    """``states=False`` only drops the extra outputs; ``checkpoint=True`` recomputes each block
    in the backward with the rules in place: same relevance to float rounding, model restored."""
    model = tiny_model(family, KERNELS[family][0])
    ids = random_ids()
    full = attribute(model, None, ids, 1, 2)
    lean = attribute(model, None, ids, 1, 2, states=False)
    assert lean.states == {} and lean.heads is None
    assert torch.equal(full.layers, lean.layers) and full.delta == lean.delta
    ckpt = attribute(model, None, ids, 1, 2, checkpoint=True)
    assert ckpt.delta == full.delta
    scale = full.layers.abs().max().item()
    torch.testing.assert_close(ckpt.layers, full.layers, rtol=1e-5, atol=1e-6 * scale)
    for kind in full.states:
        torch.testing.assert_close(ckpt.states[kind], full.states[kind], rtol=1e-5,
                                   atol=1e-6 * scale)
    torch.testing.assert_close(ckpt.heads, full.heads, rtol=1e-5, atol=1e-6 * scale)
    assert [n for n, m in model.named_modules() if "forward" in vars(m)] == []
    assert all(p.requires_grad for p in model.parameters())
