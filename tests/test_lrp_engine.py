"""The one forward+backward (``lrp.engine.explain``): batched objectives equal one pass each,
the graph's capture rides in the same pass, sequence objectives equal their definition, and the
registries refuse taken names."""

from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest
import torch
from tiny_models import EAGER_ONLY, FAMILIES as BASE_FAMILIES, MORE_FAMILIES, random_ids, tiny_model

from harness_xai import attribute
from harness_xai.errors import UserError
from harness_xai.lrp import explain, get_method
from harness_xai.records import SequenceTarget, TokenTarget

TOL = 1e-5
FAMILIES = ("llama", "qwen2", "qwen3", "olmo2", "phi3", "gemma2", "gemma3_text", "gpt_neox",
            "gpt2", "mistral")


def _model(family: str):
    return tiny_model(family, attn="eager" if family == "gemma2" else "sdpa")


def _close(got, want) -> None:
    assert got.delta == pytest.approx(want.delta, abs=TOL)
    assert got.layers.shape == want.layers.shape
    torch.testing.assert_close(got.layers, want.layers, atol=TOL, rtol=0)
    assert got.states.keys() == want.states.keys()
    for kind in want.states:
        torch.testing.assert_close(got.states[kind], want.states[kind], atol=TOL, rtol=0)
    if want.heads is not None:
        torch.testing.assert_close(got.heads, want.heads, atol=TOL, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_batched_pass_equals_one_pass_per_case(family):
    """Right-padded rows of different lengths in one pass = ``attribute`` of each alone:
    tokens, every layer, mid/attn/mlp states, heads and Δℓ within 1e-5."""
    model = _model(family)
    items = [TokenTarget(random_ids(n, seed=i)[0].tolist(), (7 * i) % 97, (11 * i + 3) % 97)
             for i, n in enumerate((5, 17, 12, 17, 30))]
    for method in ("attnlrp", "cp-lrp") if family in ("llama", "gpt2") else ("attnlrp",):
        got = explain(model, items, method)
        for item, g in zip(items, got):
            ref = attribute(model, None, list(item.input_ids), item.target, item.foil,
                            method=method)
            assert g.layers.shape == (model.config.num_hidden_layers + 1, item.n_tokens)
            assert ref.states
            _close(g, ref)
            assert g.tokens.abs().sum() > 0


ALL_FAMILIES = BASE_FAMILIES + tuple(MORE_FAMILIES)  # tests/test_families.py's list


def _relative_close(got, want, floor: float = 1e-6) -> None:
    """Every output of two explanations equal within 1e-5 relative, entries near 0 within
    ``floor`` × the largest layer relevance (float reassociation of other matrix shapes)."""
    scale = want.layers.abs().max().item()
    tol = dict(rtol=1e-5, atol=floor * scale)
    assert got.delta == pytest.approx(want.delta, rel=1e-5, abs=floor)
    torch.testing.assert_close(got.tokens, want.tokens, **tol)
    torch.testing.assert_close(got.layers, want.layers, **tol)
    assert got.states.keys() == want.states.keys() and want.states
    for kind in want.states:
        torch.testing.assert_close(got.states[kind], want.states[kind], **tol)
    torch.testing.assert_close(got.heads, want.heads, **tol)
    assert (got.experts is None) == (want.experts is None)
    if want.experts is not None:
        assert want.experts.abs().sum() > 0
        torch.testing.assert_close(got.experts, want.experts, **tol)


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_checkpointed_pass_keeps_states_and_equals_plain(family):
    """``checkpoint=True`` (blocks re-run in the backward; states reach it through probes whose
    saved inputs are recomputed) == the plain pass: tokens, layers, mid/attn/mlp, heads and
    experts, for right-padded rows of different lengths and a sequence objective."""
    model = tiny_model(family, "eager" if family in EAGER_ONLY else "sdpa")
    items = [TokenTarget(random_ids(n, seed=i)[0].tolist(), 3 + i, 40 + i)
             for i, n in enumerate((9, 21, 14))]
    items.append(SequenceTarget([5, 6, 7, 8, 9, 10], 4, [5, 6, 7, 11, 12, 13, 14], 4))
    plain = explain(model, items, "attnlrp")
    ckpt = explain(model, items, "attnlrp", checkpoint=True)
    for got, want in zip(ckpt, plain):
        _relative_close(got, want)
    assert [n for n, m in model.named_modules() if "forward" in vars(m)] == []


def _slicing_of_4_56(hidden_states, logits_to_keep):
    """transformers 4.56's slicing (every family's forward, inline): the lower bound pyproject
    allows; 5.x moved it into ``modeling_utils.slice_logits_to_keep`` (same for int and 1-D)."""
    slice_indices = (slice(-logits_to_keep, None) if isinstance(logits_to_keep, int)
                     else logits_to_keep)
    return hidden_states[:, slice_indices, :]


@pytest.mark.parametrize("slicing", ["installed", "4.56"])
@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_batched_logits_to_keep_equals_one_pass_each(family, slicing, monkeypatch):
    """Token rows of different lengths (right padding) with duplicate last positions in one
    pass: the model gets a 1-D ``logits_to_keep`` of the distinct last positions, sorted and
    inside the padded length, and every output equals that case explained alone (``keep=1``),
    under the installed transformers' slicing and under 4.56's."""
    import sys

    model = tiny_model(family, "eager" if family in EAGER_ONLY else "sdpa")
    if slicing == "4.56":
        monkeypatch.setattr(sys.modules[type(model).__module__], "slice_logits_to_keep",
                            _slicing_of_4_56)
    lengths = (6, 19, 11, 19, 6, 25)  # duplicates at 5 and 18; the longest sets n_max
    items = [TokenTarget(random_ids(n, seed=10 + i)[0].tolist(), (5 * i) % 97, (13 * i + 1) % 97)
             for i, n in enumerate(lengths)]
    seen = []
    forward = type(model).forward

    def spy(self, *args, **kwargs):
        seen.append(kwargs.get("logits_to_keep"))
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(type(model), "forward", spy)
    got = explain(model, items, "attnlrp")
    (keep,) = seen
    assert keep.dtype == torch.long and keep.tolist() == [5, 10, 18, 24]
    for item, g in zip(items, got):
        (want,) = explain(model, [item], "attnlrp")
        _relative_close(g, want, floor=1e-5)  # (R, n_max) vs (1, n) matrices: reassociation
    assert seen[1:] == [1] * len(items)  # one row alone: the int path


def test_logits_to_keep_read_otherwise_is_refused(monkeypatch):
    """A transformers that does not return one logit row per kept position is caught before
    any row's logits are read (no silent mis-indexing, no device-side assert)."""
    import sys

    model = _model("llama")
    monkeypatch.setattr(sys.modules[type(model).__module__], "slice_logits_to_keep",
                        lambda h, keep: h[:, -1:, :])
    items = [TokenTarget([3, 4, 5], 1, 2), TokenTarget([3, 4, 5, 6, 7], 1, 2)]
    with pytest.raises(RuntimeError, match="logits_to_keep"):
        explain(model, items, "attnlrp")


def _live_states_at_backward(model, monkeypatch, **options) -> tuple[int, int]:
    """(states still alive when the backward starts, states seen): weak references to every
    block's attention/MLP outputs and output-projection inputs, counted at ``autograd.grad``."""
    from harness_xai.lrp.adapters import adapter_for
    from harness_xai.lrp.states import state_sites

    refs, handles, counted = [], [], []
    adapter = adapter_for(model)

    def note(value):
        x = value[0] if isinstance(value, (tuple, list)) else value
        refs.append(weakref.ref(x))

    for block in adapter.blocks(model):
        sites = state_sites(adapter, block)
        for kind in ("attn", "mlp"):
            handles.append(sites[kind][0].register_forward_hook(lambda m, i, o: note(o)))
        handles.append(sites["heads"][0].register_forward_pre_hook(lambda m, i: note(i)))
    grad = torch.autograd.grad

    def counting_grad(*args, **kwargs):
        gc.collect()
        if not counted:  # the engine's backward (a checkpointed re-run adds refs later)
            counted.append(sum(r() is not None for r in refs))
            counted.append(len(refs))
        return grad(*args, **kwargs)

    monkeypatch.setattr(torch.autograd, "grad", counting_grad)
    try:
        explain(model, [TokenTarget(random_ids(40)[0].tolist(), 3, 4)], "attnlrp", **options)
    finally:
        monkeypatch.setattr(torch.autograd, "grad", grad)
        for h in handles:
            h.remove()
    return counted[0], counted[1]


@pytest.mark.parametrize("family", ["llama", "gpt2", "qwen3_moe"])
def test_checkpointed_forward_holds_no_states(family, monkeypatch):
    """Checkpointed, the states are not kept from the forward to the backward (they are
    recomputed with the block); the plain pass keeps every one (the control)."""
    model = _model(family) if family != "qwen3_moe" else tiny_model(family)
    live, seen = _live_states_at_backward(model, monkeypatch, checkpoint=True)
    assert seen == 3 * model.config.num_hidden_layers and live == 0
    live, seen = _live_states_at_backward(model, monkeypatch)
    assert live == seen == 3 * model.config.num_hidden_layers


def _sequence_by_definition(model, target: SequenceTarget, method: str):
    """The sequence contrast the slow way: each window its own forward, the shared prefix one
    embedding leaf (one input token, seen by both), rules installed around both passes."""
    from harness_xai.lrp import lrp

    embed = model.get_input_embeddings()
    shared = target.shared
    wrong, gold = list(target.wrong_ids[:-1]), list(target.gold_ids[:-1])
    leaves = [embed(torch.tensor([ids])).detach().requires_grad_(True)
              for ids in (wrong[:shared], wrong[shared:], gold[shared:])]
    total = 0
    with torch.enable_grad(), lrp(model, get_method(method)):
        for rest, ids, start, weight in ((leaves[1], target.wrong_ids, target.wrong_from,
                                          target.wrong_weight),
                                         (leaves[2], target.gold_ids, target.gold_from,
                                          -target.gold_weight)):
            logits = model(inputs_embeds=torch.cat([leaves[0], rest], 1), use_cache=False).logits
            logp = torch.log_softmax(logits[0].float(), -1)
            scored = torch.tensor(ids[start:])
            total = total + weight * logp[start - 1: len(ids) - 1].gather(1, scored[:, None]).sum()
        grads = torch.autograd.grad(total, leaves)
    rel = [(e * g).sum(-1)[0].detach() for e, g in zip(leaves, grads)]
    return float(total.detach()), torch.cat(rel[:2]), rel[2]


@pytest.mark.parametrize("family,method", [("llama", "grad-x-input"), ("llama", "attnlrp"),
                                           ("gpt2", "cp-lrp"), ("qwen3", "attnlrp")])
def test_sequence_objective_equals_its_definition(family, method):
    """Both windows as two rows of one pass == two separate forwards with one leaf for the
    shared prefix; the gold window's own tokens' relevance is kept in the params."""
    model = _model(family)
    target = SequenceTarget([5, 6, 7, 8, 9, 10], 4, [5, 6, 7, 11, 12, 13, 14], 4, 0.5, 0.25)
    (got,) = explain(model, [target], method)
    delta, tokens, gold_rest = _sequence_by_definition(model, target, method)
    assert got.delta == pytest.approx(delta, abs=TOL)
    torch.testing.assert_close(got.tokens, tokens, atol=TOL, rtol=0)
    assert got.params["gold_tokens"] == [11, 12, 13]
    np.testing.assert_allclose(got.params["gold_relevance"], gold_rest.numpy(), atol=TOL)
    assert list(got.input_ids) == [5, 6, 7, 8, 9] and got.layers.shape[1] == 5
    assert (got.target_id, got.foil_id) == (9, 12)


def test_token_and_sequence_objectives_share_a_pass():
    model = _model("llama")
    token = TokenTarget(random_ids(11)[0].tolist(), 3, 4)
    seq = SequenceTarget([5, 6, 7, 8, 9, 10], 4, [5, 6, 11, 12], 3)
    both = explain(model, [token, seq, token], "attnlrp")
    _close(both[0], explain(model, [token], "attnlrp")[0])
    _close(both[1], explain(model, [seq], "attnlrp")[0])
    _close(both[2], both[0])


@pytest.mark.parametrize("method", ["attnlrp", "cp-lrp", "grad-x-input"])
def test_graph_capture_rides_in_the_attribution_pass(method):
    """``--xai-graph``'s one pass (states, heads and the graph's capture together) equals
    ``attribute`` and ``graph`` run separately, to the bit."""
    import harness_xai
    from harness_xai.graph import graph_from_trace

    model = _model("qwen2")
    ids = random_ids(19)[0].tolist()
    objective = TokenTarget(ids, 5, 7)
    (one,) = explain(model, [objective], method, trace=True)
    ref = attribute(model, None, ids, 5, 7, method=method)
    assert one.delta == ref.delta
    assert torch.equal(one.layers, ref.layers) and torch.equal(one.heads, ref.heads)
    assert all(torch.equal(one.states[k], ref.states[k]) for k in ref.states)
    got = graph_from_trace(one.trace, method, True, objective).to_record()
    want = harness_xai.graph(model, None, ids, 5, 7, method=method, prune=True).to_record()
    for name in ("node_relevance", "source_layer", "source_position", "target_layer",
                 "target_position", "weight"):
        np.testing.assert_array_equal(getattr(got, name), getattr(want, name))
    assert torch.equal(one.trace.nodes, one.layers)  # node relevance = the layer relevance


def test_device_map_hooks_attribute_like_the_plain_model(micro_model):
    """A model dispatched block by block with accelerate's device-map hooks (what
    ``parallelize=True`` / ``device_map`` builds; every execution device is the CPU here):
    the rules and captures compose with the hooks, results equal the plain model's, and the
    hooks are intact afterwards."""
    from accelerate import dispatch_model
    from transformers import AutoModelForCausalLM

    plain = AutoModelForCausalLM.from_pretrained(micro_model, dtype=torch.float32)
    hooked = AutoModelForCausalLM.from_pretrained(micro_model, dtype=torch.float32)
    device_map = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.norm": "cpu",
                  "lm_head": "cpu", **{f"model.layers.{i}": "cpu"
                                       for i in range(plain.config.num_hidden_layers)}}
    hooked = dispatch_model(hooked, device_map=device_map, force_hooks=True)
    blocks = hooked.model.layers
    wrapped = [b.forward for b in blocks]
    assert all(hasattr(b, "_hf_hook") for b in blocks)
    ids = list(range(3, 40))
    for method in ("attnlrp", "cp-lrp"):
        want = attribute(plain, None, ids, 5, 7, method=method)
        got = attribute(hooked, None, ids, 5, 7, method=method)
        (batched, _) = explain(hooked, [TokenTarget(ids, 5, 7), TokenTarget(ids[:9], 5, 7)],
                               method)
        for g in (got, batched):
            _close(g, want)
    assert [b.forward for b in blocks] == wrapped  # accelerate's forwards restored
    with torch.no_grad():
        torch.testing.assert_close(hooked(torch.tensor([ids])).logits,
                                   plain(torch.tensor([ids])).logits)


def test_bad_objectives_fail_before_any_work():
    model = _model("llama")
    with pytest.raises(UserError, match="vocabulary"):
        explain(model, [TokenTarget([1, 2, 3], 5, 500)], "attnlrp")
    with pytest.raises(UserError, match="token id 97 is outside the model's input embeddings"):
        explain(model, [TokenTarget([1, 97, 3], 5, 6), TokenTarget([1], 5, 6)], "attnlrp")
    with pytest.raises(UserError, match="token id -1 is outside"):
        explain(model, [SequenceTarget([5, 6, 7], 2, [5, 8, -1], 2)], "attnlrp")
    with pytest.raises(UserError, match="at least one input token"):
        explain(model, [TokenTarget([], 5, 6)], "attnlrp")
    with pytest.raises(UserError, match="sequence contrasts"):
        explain(model, [SequenceTarget([5, 6, 7], 2, [5, 8, 9], 2)], "integrated-gradients")
    with pytest.raises(UserError, match="did you mean 'attnlrp'"):
        explain(model, [TokenTarget([1, 2, 3], 5, 6)], "atnlrp")
    assert explain(model, [], "attnlrp") == []


def test_attribution_repr_is_compact():
    model = _model("llama")
    result = attribute(model, None, random_ids(40)[0].tolist(), 5, 7)
    text = repr(result)
    assert len(text) < 300 and "delta=" in text and "n_tokens=40" in text and "tensor" not in text
    top = int(result.tokens.abs().argmax())
    assert text.split("top=[")[1].startswith(f"{top}: ")


# -- registries ---------------------------------------------------------------------------------
def test_registries_refuse_taken_names_and_keep_builtins():
    from dataclasses import replace

    from harness_xai.contrast import CONTRAST_BUILDERS, register_contrast
    from harness_xai.lrp.adapters import ADAPTERS, get_adapter, register_adapter
    from harness_xai.lrp.methods import METHODS, register_method

    llama = get_adapter("llama")
    assert {"llama", "gpt2", "gpt_neox"} <= set(ADAPTERS)  # built-ins are in on import
    with pytest.raises(UserError, match="model family 'llama' is already registered"):
        register_adapter(replace(llama, family="mine", model_types=("my_llama", "llama")))
    assert "my_llama" not in ADAPTERS  # nothing half-registered
    mine = register_adapter(replace(llama, family="mine", model_types=("my_llama",)))
    try:
        assert get_adapter("my_llama") is mine and get_adapter("llama") is llama
        again = register_adapter(replace(mine, family="mine2"), overwrite=True)
        assert get_adapter("my_llama") is again
    finally:
        ADAPTERS.unregister("my_llama")
    with pytest.raises(UserError, match=r"did you mean 'llama'\?"):
        get_adapter("lama")

    attn = METHODS.get("attnlrp")
    with pytest.raises(UserError, match="already registered"):
        register_method(replace(attn, description="x"))
    assert METHODS.get("attnlrp") is attn
    register_method(replace(attn, name="attnlrp-copy"))
    try:
        assert get_method("attnlrp-copy").attention == attn.attention
    finally:
        METHODS.unregister("attnlrp-copy")

    builtin = CONTRAST_BUILDERS.get("multiple_choice")
    with pytest.raises(UserError, match="output type 'multiple_choice' is already registered"):
        register_contrast("multiple_choice", lambda *a: None)
    assert CONTRAST_BUILDERS.get("multiple_choice") is builtin
    with pytest.raises(UserError, match="did you mean 'generate_until'"):
        CONTRAST_BUILDERS.get("generate_untill")


def test_notebook_html_heatmap_is_escaped_and_scaled():
    model = _model("llama")

    class Tok:  # a tokenizer whose pieces are hostile text
        def decode(self, ids):
            return "<script>x</script>" if ids[0] == 3 else f" t{ids[0]}"

    ids = [3, 4, 5, 6]
    result = attribute(model, None, ids, 5, 7)
    page = result.to_html(Tok())
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert page.count("<span") == len(ids) and result._repr_html_().count("<span") == len(ids)
    top = int(result.tokens.abs().argmax())
    assert page.count("rgba(") == len(ids) and ",1.000)" in page.split("<span")[top + 1]
    with pytest.raises(UserError, match="SequenceTarget"):
        from harness_xai.lrp.inputs import as_token

        class Two:
            def __call__(self, text, add_special_tokens=False):
                return {"input_ids": [1, 2]}
        as_token("Paris", Two())
