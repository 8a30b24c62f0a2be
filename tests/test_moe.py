"""Mixture-of-experts rule (``harness_xai.lrp.rules.moe``): relevance per expert.

1. Σ over experts of the per-expert relevance = the MoE block's (``mlp`` state) relevance, per
   token and layer, for every LRP method; dense layers (Qwen3-MoE ``mlp_only_layers``) get 0.
2. An expert that is never selected, or whose output is zeroed, gets no relevance, and the
   others carry all of the block's.
3. Engine == the float64 reference (explicit messages) per expert.
4. The rule's loop reproduces the experts' eager kernel bit-exactly.
"""

from __future__ import annotations

import pytest
import torch
from tiny_models import EAGER_ONLY, MOE, random_ids
from tiny_models import tiny_model as _tiny

from harness_xai import attribute
from harness_xai.lrp import lrp
from harness_xai.lrp.reference import reference_attribute

METHODS = ("attnlrp", "cp-lrp", "cp-lrp-uniform")


def tiny_model(family: str, **kwargs):
    return _tiny(family, "eager" if family in EAGER_ONLY else "sdpa", **kwargs)


def _scale(t: torch.Tensor) -> float:
    return t.abs().max().item()


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("family", MOE)
def test_expert_relevance_sums_to_the_block(family, method):
    model = tiny_model(family, layers=3)
    result = attribute(model, None, random_ids(20), 4, 9, method=method)
    n_experts = 4
    assert result.experts.shape == (3, n_experts, 20)
    mlp = result.states["mlp"]
    dense = [0] if family == "qwen3_moe" else []  # mlp_only_layers=[0]
    for layer in range(3):
        if layer in dense:
            assert torch.count_nonzero(result.experts[layer]) == 0
            assert mlp[layer].abs().max() > 0
        else:
            torch.testing.assert_close(result.experts[layer].sum(0), mlp[layer], rtol=0,
                                       atol=1e-5 * _scale(mlp))
            # top-2 of 4: each token's relevance sits on at most two experts
            assert (result.experts[layer] != 0).sum(0).max() <= 2
            assert result.experts[layer].abs().max() > 1e-3 * _scale(mlp)


def _toy(zeroed: int | None = None, never: int | None = None):
    """Mixtral with 2 experts, top-1: ``zeroed``'s output weights are 0; ``never`` is never
    routed (a router hook sends every token to the other expert)."""
    model = tiny_model("mixtral", layers=2)
    for block in model.model.layers:
        experts, router = block.mlp.experts, block.mlp.gate
        experts.num_experts = router.num_experts = 2
        router.top_k = 1
        with torch.no_grad():
            experts.gate_up_proj = torch.nn.Parameter(experts.gate_up_proj[:2].clone())
            experts.down_proj = torch.nn.Parameter(experts.down_proj[:2].clone())
            router.weight = torch.nn.Parameter(router.weight[:2].clone())
            if zeroed is not None:
                experts.down_proj[zeroed].zero_()
        if never is not None:
            router.register_forward_hook(lambda m, a, out, other=1 - never: (
                out[0], torch.ones_like(out[1]), torch.full_like(out[2], other)))
    model.config.num_local_experts, model.config.num_experts_per_tok = 2, 1
    return model


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("case", ["zeroed", "never selected"])
def test_two_expert_toy_dead_expert_gets_nothing(case, method):
    kwargs = {"zeroed": 1} if case == "zeroed" else {"never": 1}
    model = _toy(**kwargs)
    ids = random_ids(20)
    result = attribute(model, None, ids, 4, 9, method=method)
    assert result.experts.shape == (2, 2, 20)
    assert torch.count_nonzero(result.experts[:, 1]) == 0
    live, mlp = result.experts[:, 0], result.states["mlp"]
    assert live.abs().max() > 1e-3 * _scale(result.layers)
    torch.testing.assert_close(live, mlp, rtol=0, atol=1e-5 * _scale(mlp))
    if case == "zeroed":  # the zeroed expert really was selected for some tokens
        routed = []
        hook = model.model.layers[0].mlp.gate.register_forward_hook(
            lambda m, a, out: routed.append(out[2]))
        with torch.no_grad():
            model(ids)
        hook.remove()
        assert (routed[0] == 1).any() and (routed[0] == 0).any()


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("family", MOE)
def test_expert_relevance_matches_the_reference(family, method):
    model = tiny_model(family, layers=2)
    ids = random_ids(20)
    engine = attribute(model, None, ids, 4, 9, method=method)
    ref = reference_attribute(model, ids, 4, 9, method=method)
    assert ref.experts.shape == engine.experts.shape
    gap = (engine.experts.double() - ref.experts).abs().max() / ref.experts.abs().max()
    assert gap.item() <= 1e-4


def test_router_weights_get_no_relevance():
    """With the router weights constant the block is conservative (bias-free, CP-LRP): Σ R = Δℓ
    at every layer; a router that took relevance would leave a deficit at the MoE layers."""
    model = tiny_model("olmoe", layers=3)
    result = attribute(model, None, random_ids(24), 4, 9, method="cp-lrp")
    for total in result.layers.sum(-1).tolist():
        assert total == pytest.approx(result.delta, rel=1e-4)
    plain = attribute(model, None, random_ids(24), 4, 9, method="grad-x-input")
    assert plain.experts is not None  # plain gradients also report experts (router included)


@pytest.mark.parametrize("family", MOE)
def test_rule_loop_is_bit_exact_against_the_eager_kernel(family):
    model = tiny_model(family)
    model.config._experts_implementation = "eager"
    ids = random_ids()
    with torch.no_grad():
        reference = model(ids).logits
    for method in METHODS + ("grad-x-input",):
        with lrp(model, method), torch.no_grad():
            patched = model(ids).logits
        assert torch.equal(patched, reference), method
    assert [n for n, m in model.named_modules() if "forward" in vars(m)] == []


def test_batched_attribution_has_the_same_expert_relevance():
    """The engine's batched pass (right-padded rows) reports each row's experts as alone."""
    from harness_xai.lrp import explain
    from harness_xai.records import TokenTarget

    model = tiny_model("qwen3_moe", layers=2)
    items = [(random_ids(n, seed=n)[0].tolist(), 4, 9) for n in (12, 20, 7)]
    batched = explain(model, [TokenTarget(*item) for item in items], "attnlrp")
    for (ids, t, f), got in zip(items, batched):
        alone = attribute(model, None, ids, t, f)
        assert got.experts.shape == alone.experts.shape == (2, 4, len(ids))
        torch.testing.assert_close(got.experts, alone.experts, rtol=1e-4,
                                   atol=1e-5 * _scale(alone.experts))
