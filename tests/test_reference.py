"""The slow reference LRP (``harness_xai.lrp.reference``) against the HF forward and the engine.

For every family of ``tests/tiny_models`` (both attention kernels where transformers allows them),
plus GPT-NeoX with a sequential residual, Mistral with a sliding window shorter than the input
and the biased families with random non-zero biases:
1. the reference's float64 forward reproduces the HF logits (max abs difference ≤ 1e-5);
2. for ``attnlrp``, ``cp-lrp`` and ``cp-lrp-uniform`` the reference and the efficient engine agree on token, layer,
   mid/attn/mlp state and head relevance: ``max|engine − ref| ≤ 1e-4 · max|ref|`` per array;
3. the reference alone: CP-LRP conserves Δℓ at every layer on bias-free models, every run closes
   its books (Σ tokens + absorbed = Δℓ), it runs under ``inference_mode`` and its source uses no
   autograd; a deliberately wrong rule in the reference breaks the agreement (> 1e-2), so 2. is
   a real check.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

import pytest
import torch
from tiny_models import EAGER_ONLY, FAMILIES, MORE_FAMILIES, random_ids, tiny_model

from harness_xai import attribute
from harness_xai.errors import UserError
from harness_xai.lrp.adapters import ADAPTERS, get_adapter
from harness_xai.lrp.reference import (propagation, read_model, reference_attribute,
                                       reference_forward, rules)

ALL = FAMILIES + tuple(MORE_FAMILIES)
KERNELS = {family: ("eager",) if family in EAGER_ONLY else ("sdpa", "eager")
           for family in ALL}
BIASED = ("qwen2", "gpt_neox", "gpt2", "gpt_oss")  # Linear biases tiny_models leaves at zero
CASES = ([(family, attn, "") for family in ALL for attn in KERNELS[family]]
         + [("gpt_neox", attn, "sequential") for attn in KERNELS["gpt_neox"]]
         + [("mistral", attn, "window") for attn in KERNELS["mistral"]]
         + [(family, attn, "biased") for family in BIASED for attn in KERNELS[family]])
IDS = [f"{f}-{a}{'-' + v if v else ''}" for f, a, v in CASES]
METHODS = ("attnlrp", "cp-lrp", "cp-lrp-uniform")
TARGET, FOIL = 4, 9
RTOL = 1e-4  # relative to the largest magnitude of the reference array


def build(family: str, attn: str, variant: str = "", layers: int = 2):
    model = tiny_model(family, attn, layers=layers)
    if variant == "sequential":  # GPT-NeoX: h' = mid + mlp(ln2(mid)), mid = h + attn(ln1(h))
        model.config.use_parallel_residual = False
        for layer in model.gpt_neox.layers:
            layer.use_parallel_residual = False
    elif variant == "window":  # Mistral's sliding window shorter than the 20-token inputs
        model.config.sliding_window = 6
    elif variant == "biased":
        g = torch.Generator().manual_seed(3)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith(".bias"):
                    p.copy_(0.2 * torch.randn(p.shape, generator=g))
    return model


@lru_cache(maxsize=None)
def cached(family: str, attn: str, variant: str):
    """Models the tests only read (attribute() restores everything it patches)."""
    return build(family, attn, variant)


def gap(engine: torch.Tensor, ref: torch.Tensor) -> float:
    """``max|engine − ref| / max|ref|``."""
    return ((engine.double() - ref).abs().max() / ref.abs().max()).item()


def test_every_registered_family_has_a_reader():
    get_adapter("llama")  # loads the built-ins
    assert set(ADAPTERS) == set(ALL)
    for family in ALL:
        assert read_model(cached(family, KERNELS[family][0], "")).family == family


def test_unknown_family_is_refused():
    model = cached("llama", "sdpa", "")
    model.config.model_type = "mamba"
    try:
        with pytest.raises(UserError, match="no reader for model_type 'mamba'"):
            read_model(model)
    finally:
        model.config.model_type = "llama"


@pytest.mark.parametrize("family,attn,variant", CASES, ids=IDS)
def test_reference_forward_reproduces_hf_logits(family, attn, variant):
    model = cached(family, attn, variant)
    ids = random_ids(20)
    with torch.no_grad():
        expected = model(ids).logits[0].double()  # (n, vocab)
    logits = reference_forward(model, ids)
    assert logits.dtype == torch.float64 and logits.shape == expected.shape
    assert (logits - expected).abs().max().item() <= 1e-5


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("family,attn,variant", CASES, ids=IDS)
def test_reference_agrees_with_engine(family, attn, variant, method):
    model = cached(family, attn, variant)
    ids = random_ids(20)
    engine = attribute(model, None, ids, TARGET, FOIL, method=method)
    ref = reference_attribute(model, ids, TARGET, FOIL, method=method)
    assert engine.delta == pytest.approx(ref.delta, rel=1e-5, abs=1e-6)
    assert ref.layers.shape == engine.layers.shape == (3, 20)
    assert gap(engine.tokens, ref.tokens) <= RTOL
    assert gap(engine.layers, ref.layers) <= RTOL
    # internal states: "mid" exists exactly for sequential residuals
    parallel = family == "gpt_neox" and variant != "sequential"
    assert set(ref.states) == ({"attn", "mlp"} if parallel else {"mid", "attn", "mlp"})
    assert set(engine.states) == set(ref.states)
    for kind, expected in ref.states.items():
        assert expected.shape == engine.states[kind].shape == (2, 20)
        assert gap(engine.states[kind], expected) <= RTOL, kind
    assert ref.heads.shape == engine.heads.shape == (2, model.config.get_text_config().num_attention_heads, 20)
    assert gap(engine.heads, ref.heads) <= RTOL


@pytest.mark.parametrize("family", ["gemma2", "gpt_neox"])
def test_reference_agrees_with_checkpointed_engine(family):
    model = cached(family, "eager", "")
    ids = random_ids(20)
    engine = attribute(model, None, ids, TARGET, FOIL, checkpoint=True)
    ref = reference_attribute(model, ids, TARGET, FOIL)
    assert gap(engine.layers, ref.layers) <= RTOL and gap(engine.heads, ref.heads) <= RTOL


# ---- the reference on its own ----

_AUTOGRAD = re.compile(r"autograd\.|\.backward\(|requires_grad|\.grad\b|enable_grad|"
                       r"torch\.func|vjp|jacrev|jacfwd|grad_fn")


def test_reference_source_uses_no_autograd():
    sources = sorted((Path(rules.__file__).parent).glob("*.py"))
    assert {p.name for p in sources} >= {"__init__.py", "rules.py", "spec.py", "forward.py",
                                         "propagation.py"}
    for path in sources:
        hits = [line for line in path.read_text().splitlines() if _AUTOGRAD.search(line)]
        assert hits == [], f"{path.name}: {hits}"


def test_reference_runs_without_autograd():
    """Under inference_mode no graph can be built: the reference still gives the same numbers."""
    model = cached("qwen3", "sdpa", "")
    ids = random_ids(20)
    with torch.inference_mode():
        inside = reference_attribute(model, ids, TARGET, FOIL)
    outside = reference_attribute(model, ids, TARGET, FOIL)
    assert not inside.layers.requires_grad
    assert torch.equal(inside.layers, outside.layers) and torch.equal(inside.heads, outside.heads)



@pytest.mark.parametrize("method", ["cp-lrp", "cp-lrp-uniform"])
@pytest.mark.parametrize("family", [f for f in ALL if f != "gpt_oss"])  # its experts add 1
def test_reference_cp_lrp_conserves_delta_without_biases(family, method):
    """Σ R = Δℓ at the embeddings, every block output and every mid state; the heads of a layer
    carry its attention branch's relevance. Biased families get their biases (and GPT-2's
    learned positions) zeroed first."""
    model = build(family, KERNELS[family][-1], layers=3)
    if family in BIASED:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("bias") or ".wpe." in name:
                    p.zero_()
    ref = reference_attribute(model, random_ids(24), TARGET, FOIL, method=method)
    tol = 1e-9 * max(1.0, abs(ref.delta))
    assert abs(ref.delta) > 1e-3  # a non-trivial contrast
    assert ref.layers.shape == (4, 24)
    for row in ref.layers.sum(-1).tolist():
        assert row == pytest.approx(ref.delta, abs=tol)
    for row in ref.states.get("mid", torch.zeros(0, 24)).sum(-1).tolist():
        assert row == pytest.approx(ref.delta, abs=tol)
    assert torch.allclose(ref.heads.sum((1, 2)), ref.states["attn"].sum(-1), rtol=0, atol=tol)
    assert ref.ledger.total() == pytest.approx(0.0, abs=tol)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("family,attn,variant", CASES[::2] + [CASES[-1]], ids=(IDS[::2] + IDS[-1:]))
def test_reference_books_balance(family, attn, variant, method):
    """Every relevance path is accounted for: Σ tokens + absorbed (biases, positions, softmax
    deficit) = Δℓ; AttnLRP's softmax deficit and real biases are really there."""
    model = cached(family, attn, variant)
    ref = reference_attribute(model, random_ids(20), TARGET, FOIL, method=method)
    assert ref.tokens.sum().item() + ref.ledger.total() == pytest.approx(ref.delta, abs=1e-10)
    assert ("softmax" in ref.ledger.totals) == (method == "attnlrp")
    if variant == "biased":
        assert abs(ref.ledger.totals["bias"]) > 1e-3


@pytest.mark.parametrize("family", ["llama", "gemma2", "phi3", "gpt2"])
def test_cp_lrp_variants_differ_exactly_on_gated_mlps(family):
    """Published CP-LRP (gate constant) and cp-lrp-uniform differ only in the gated product: far
    apart on gated-MLP families, identical on GPT-2's plain MLP."""
    model = cached(family, "eager", "")
    ids = random_ids(20)
    const = reference_attribute(model, ids, TARGET, FOIL, method="cp-lrp")
    uniform = reference_attribute(model, ids, TARGET, FOIL, method="cp-lrp-uniform")
    if family == "gpt2":
        assert torch.equal(const.layers, uniform.layers)
    else:
        assert gap(uniform.tokens, const.tokens) > 1e-2


# ---- a wrong rule in the reference must break the agreement ----

def _share(key, value):
    return lambda mp: mp.setitem(propagation.SHARES["attnlrp"], key, value)


MUTATIONS = {
    "product: all to one factor": (lambda mp: mp.setattr(
        rules, "product_uniform", lambda r, share=0.5: (r, 0 * r)), ("qwen3", "gemma2", "phi3")),
    "softmax as identity": (lambda mp: mp.setattr(
        rules, "softmax_rule", lambda s, a, r, allowed: r), ("gemma2", "gpt_neox", "gpt2")),
    "q·k: all to q": (_share("qk", 1.0), ("qwen3", "gpt_neox")),
    "A·V: ¼ to A, ¾ to V": (_share("probs", 0.25), ("qwen3", "gpt2")),
    "residual split in halves": (lambda mp: mp.setattr(
        rules, "sum_split", lambda terms, total, r: [r / len(terms)] * len(terms)),
        ("llama", "olmo2")),
    "LayerNorm centering skipped": (lambda mp: mp.setattr(
        rules, "layer_norm_identity",
        lambda x, c, u, y, r: (u * rules.ratio(r, y), 0 * r.sum(-1))), ("gpt2", "gpt_neox")),
    "RoPE as identity": (lambda mp: mp.setattr(rules, "rope_eps", lambda x, m, y, r: r),
                         ("qwen3", "gpt_neox")),
}
MUTATION_CASES = [(name, family) for name, (_, families) in MUTATIONS.items() for family in families]


@pytest.mark.parametrize("mutation,family", MUTATION_CASES)
def test_wrong_reference_rule_disagrees(mutation, family, monkeypatch):
    model = cached(family, "eager", "")
    ids = random_ids(20)
    engine = attribute(model, None, ids, TARGET, FOIL, method="attnlrp", states=False)
    MUTATIONS[mutation][0](monkeypatch)
    wrong = reference_attribute(model, ids, TARGET, FOIL, method="attnlrp")
    assert gap(engine.tokens, wrong.tokens) > 1e-2
