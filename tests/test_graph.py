"""Attribution graphs: the fast closed form against the definition (reference) for every family,
the column identity, causality, node relevance = attribute's, and what pruning promises."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from tiny_models import EAGER_ONLY, FAMILIES, MORE_FAMILIES, random_ids, tiny_model

from harness_xai import attribute
from harness_xai.errors import UserError
from harness_xai.graph import Prune, formation_layer, graph
from harness_xai.graph import fast
from harness_xai.lrp.engine import explain
from harness_xai.records import TokenTarget
from harness_xai.graph.prune import Collector, n_entries, prune_dense, target_nodes
from harness_xai.lrp import adapter_for, lrp
from harness_xai.lrp.methods import get_method
from harness_xai.records import GraphRecord

ALL = FAMILIES + tuple(MORE_FAMILIES)
KERNEL = {family: "eager" if family in EAGER_ONLY else "sdpa" for family in ALL}
CASES = ([(family, KERNEL[family], method) for family in ALL for method in ("attnlrp", "cp-lrp")]
         + [(family, KERNEL[family], "grad-x-input") for family in ("llama", "gemma2", "gpt2")]
         + [("llama", "eager", "attnlrp"), ("gpt_neox", "eager", "attnlrp")]
         + [(family, KERNEL[family], "cp-lrp-uniform") for family in ("llama", "phi3")])
N = 16  # > the Gemma sliding window (8): windows are exercised
TARGET, FOIL = 5, 11


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item() / b.abs().max().item()


@pytest.mark.parametrize("family,attn,method", CASES)
def test_fast_equals_reference_column_identity_causal_nodes(family, attn, method):
    model = tiny_model(family, attn, layers=3)
    ids = random_ids(N)
    fast_graph = graph(model, None, ids, TARGET, FOIL, method=method)
    ref = graph(model, None, ids, TARGET, FOIL, method=method, impl="reference", batch=5)
    assert len(fast_graph.edges) == len(ref.edges) == 3
    assert fast_graph.node_layers == ["emb", "1", "2", "3"]
    for t, (a, r) in enumerate(zip(fast_graph.edges, ref.edges), start=1):
        assert a.shape == r.shape == (N, N)
        assert r.abs().max() > 0
        assert _rel(a, r) <= 1e-4, f"block {t}"
        # column identity: Σ_j A[j, i] = R_{t-1}(i), for the definition and the fast form
        source = ref.nodes[t - 1]
        assert _rel(r.sum(0), source) <= 1e-5
        assert _rel(a.sum(0), source) <= 1e-5
        assert torch.count_nonzero(torch.triu(a, 1)) == 0  # causal
        assert torch.count_nonzero(torch.triu(r, 1)) == 0
        # a target whose g_t row is zero (last block: every row but the output's) is exactly 0
        dead = (r == 0).all(1)
        assert torch.count_nonzero(a[dead]) == 0
    assert (ref.edges[-1] == 0).all(1).sum() == N - 1
    expected = attribute(model, None, ids, TARGET, FOIL, method=method).layers
    assert torch.allclose(fast_graph.nodes, expected, rtol=1e-6, atol=1e-7)
    assert torch.equal(fast_graph.nodes, ref.nodes)
    assert fast_graph.delta == pytest.approx(ref.delta, rel=1e-6)


def test_cross_position_edges_are_a_real_part_of_the_graph():
    """Off-diagonal edges carry mass, and the key path (AttnLRP only) changes them."""
    model = tiny_model("llama", layers=3)
    ids = random_ids(N)
    attn = graph(model, None, ids, TARGET, FOIL)
    cp = graph(model, None, ids, TARGET, FOIL, method="cp-lrp")
    off = torch.ones(N, N).tril(-1).bool()
    assert all(0.05 < f < 0.95 for f in attn.metrics["cross_position_fraction"])
    assert _rel(attn.edges[0][off], cp.edges[0][off]) > 1e-2


def _model_and_dense(layers=4, n=24):
    model = tiny_model("llama", layers=layers)
    ids = random_ids(n)
    return model, ids, graph(model, None, ids, TARGET, FOIL, impl="reference", batch=8)


SPECS = [Prune(), Prune(node_threshold=0.0, ancestors=False), Prune(top_k=3),
         Prune(mass=0.5, max_edges=12), Prune(mass=None, top_k=2), Prune(max_nodes=4),
         Prune(node_threshold=0.2, mass=0.95)]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: ",".join(
    f"{k}={v}" for k, v in dataclasses.asdict(s).items() if v != getattr(Prune(), k)) or "paper")
def test_chunked_pruning_equals_pruning_the_reference_matrix(spec):
    model, ids, ref = _model_and_dense()
    # tiny chunks: many chunks per block, so candidates are filtered and compacted across chunks
    pruned = graph(model, None, ids, TARGET, FOIL, prune=spec, chunk_elements=8 * 24 * 3)
    expected = prune_dense(ref.nodes, ref.edges, spec)
    assert pruned.pruned and len(pruned.edges) == len(expected)
    for got, want in zip(pruned.edges, expected):
        got_map = dict(zip(zip(got.target.tolist(), got.source.tolist()), got.weight.tolist()))
        want_map = dict(zip(zip(want.target.tolist(), want.source.tolist()), want.weight.tolist()))
        assert got_map.keys() == want_map.keys()
        for key, w in want_map.items():
            assert got_map[key] == pytest.approx(w, rel=1e-4, abs=1e-4 * abs(w) + 1e-9)
    assert pruned.metrics["n_edges"] == sum(e.weight.numel() for e in expected)


def test_pruning_keeps_what_it_promises():
    model, ids, ref = _model_and_dense()
    p = 0.85
    selected = graph(model, None, ids, TARGET, FOIL, prune=Prune(mass=p, ancestors=False))
    kept = graph(model, None, ids, TARGET, FOIL, prune=Prune(mass=p))
    n, L = ids.shape[1], len(ref.edges)
    for t, (sel, matrix) in enumerate(zip(selected.edges, ref.edges), start=1):
        rows = target_nodes(ref.nodes[t], Prune())
        size = ref.nodes[t].abs()
        assert set(rows.tolist()) == set(torch.nonzero(size >= 0.01 * size.max()).flatten().tolist())
        layer_mass = matrix[rows].abs().sum().item()
        assert sel.weight.abs().sum().item() >= p * layer_mass * (1 - 1e-6)  # mass ≥ p
        # minimal: without its smallest edge the selection would fall short of p
        smallest = sel.weight.abs().min().item()
        assert sel.weight.abs().sum().item() - smallest < p * layer_mass
        assert set(sel.target.tolist()) <= set(rows.tolist())
        assert (sel.weight != 0).all() and (sel.source <= sel.target).all()
        assert selected.metrics["mass_selected"][t - 1] >= p * (1 - 1e-6)
    # ancestors only: every kept edge ends at the output node or at a source of a kept edge above
    frontier = {n - 1}
    for t in range(L, 0, -1):
        e = kept.edges[t - 1]
        assert set(e.target.tolist()) <= frontier
        # and nothing on a path to the output node was dropped
        sel = selected.edges[t - 1]
        on_path = torch.isin(sel.target, torch.tensor(sorted(frontier)))
        assert int(on_path.sum()) == e.weight.numel()
        frontier = set(e.source.tolist())
    assert kept.metrics["n_edges"] < selected.metrics["n_edges"] or L == 1
    assert 0 < kept.metrics["mass_kept"] <= selected.metrics["mass_kept"] <= 1


def test_collector_compaction_matches_plain_selection():
    """Random rows fed in chunks, with a tiny compaction limit, select what the dense code does."""
    g = torch.Generator().manual_seed(0)
    n = 40
    dense = torch.randn(n, n, generator=g).tril() * torch.rand(n, n, generator=g).pow(4)
    nodes = torch.ones(2, n)
    for spec in (Prune(ancestors=False), Prune(ancestors=False, top_k=5),
                 Prune(ancestors=False, max_edges=30), Prune(ancestors=False, mass=0.99)):
        targets = torch.arange(n)
        collector = Collector(spec, n_entries(targets, spec))
        collector.limit = 50  # compact (and re-filter) every few chunks
        for start in range(0, n, 3):
            rows = targets[start:start + 3]
            collector.add(rows, dense[rows, :int(rows[-1]) + 1])
            if spec.max_edges is not None:  # candidates stay bounded by the edge budget
                assert collector.size <= 2 * spec.max_edges + 3 * n
        got = collector.finish()
        (want,) = prune_dense(nodes, [dense], spec)
        assert sorted(zip(got.target.tolist(), got.source.tolist())) == \
            sorted(zip(want.target.tolist(), want.source.tolist()))


def test_record_and_metrics():
    model = tiny_model("gpt2", layers=2)
    ids = random_ids(N)
    g = graph(model, None, ids, TARGET, FOIL, prune=True)
    record = g.to_record()
    assert isinstance(record, GraphRecord)
    assert record.node_layers == ["emb", "1", "2"]
    assert record.node_relevance.shape == (3, N) and record.node_relevance.dtype == np.float32
    # nodes outside the pruned graph are zeroed; kept ones carry the node relevance
    kept = np.zeros((3, N), bool)
    kept[2, N - 1] = True
    kept[record.source_layer, record.source_position] = True
    kept[record.target_layer, record.target_position] = True
    assert kept.sum() == g.metrics["n_nodes"] < 3 * N
    assert np.array_equal(record.node_relevance[kept], g.nodes.numpy()[kept])
    assert not record.node_relevance[~kept].any()
    m = record.weight.size
    assert m == g.metrics["n_edges"] > 0
    for name in ("source_layer", "source_position", "target_layer", "target_position"):
        assert getattr(record, name).shape == (m,) and getattr(record, name).dtype == np.int32
    assert (record.source_layer == record.target_layer - 1).all()
    assert (record.source_position <= record.target_position).all()
    assert record.target_position[record.target_layer == 2].tolist() == [N - 1] * int(
        (record.target_layer == 2).sum())
    total = sum(float(np.abs(record.weight[record.target_layer == t]).sum()) for t in (1, 2))
    assert total == pytest.approx(g.metrics["mass_kept"] * sum(g.metrics["layer_mass"]), rel=1e-5)
    assert len(g.metrics["cross_position_fraction"]) == 2
    assert 0 <= g.metrics["formation_layer"] <= 2
    assert record.params["method"] == "attnlrp" and record.params["prune"]["mass"] == 0.85
    dense_record = graph(model, None, ids, TARGET, FOIL).to_record()  # every nonzero entry
    assert dense_record.weight.size == sum(int((e != 0).sum()) for e in graph(
        model, None, ids, TARGET, FOIL).edges)


def test_graph_from_the_engines_pass_and_top_level_api():
    """``graph_from_trace`` on the capture of the engine's pass (what ``--xai-graph`` uses) is
    ``harness_xai.graph(…)``; the engine refuses a capture it cannot make."""
    import harness_xai
    from harness_xai.graph import graph_from_trace

    model = tiny_model("llama", layers=2)
    ids = random_ids(N)[0].tolist()
    objective = TokenTarget(ids, TARGET, FOIL)
    (result,) = explain(model, [objective], "cp-lrp", trace=True)
    record = graph_from_trace(result.trace, "cp-lrp", Prune(max_edges=5), objective).to_record()
    direct = harness_xai.graph(model, None, ids, TARGET, FOIL, method="cp-lrp",
                               prune=Prune(max_edges=5)).to_record()
    assert record.params["method"] == "cp-lrp" and 0 < record.weight.size <= 10
    assert np.array_equal(record.weight, direct.weight)
    assert np.array_equal(record.source_position, direct.source_position)
    np.testing.assert_array_equal(record.node_relevance, direct.node_relevance)
    with pytest.raises(UserError, match="one token contrast"):
        explain(model, [objective, objective], "cp-lrp", trace=True)
    with pytest.raises(UserError, match="one-backward method"):
        explain(model, [objective], "integrated-gradients", trace=True)


def test_formation_layer_definition():
    nodes = torch.tensor([[1.0, 1.0, 0.5],   # last position holds 0.2 of |R|
                          [0.1, 0.1, 0.3],   # 0.6
                          [0.5, 0.0, 0.1],   # 1/6: below half
                          [0.1, 0.0, 0.9],   # 0.9
                          [0.0, 0.0, 2.0]])  # 1.0
    assert formation_layer(nodes) == 3
    nodes[2] = torch.tensor([0.1, 0.0, 0.4])
    assert formation_layer(nodes) == 1
    nodes[0] = torch.tensor([0.0, 0.0, 1.0])
    assert formation_layer(nodes) == 0


@pytest.mark.parametrize("identity_cap", [False, True])
@pytest.mark.parametrize("softcap", [None, 0.7])
def test_rows_against_autograd_on_explicit_attention(softcap, identity_cap):
    """Closed-form rows = ⟨ṽ[i], ∂f_j/∂v[i]⟩ + ⟨k̃[i], ∂f_j/∂k[i]⟩, f_j = ⟨o[j], γ[j]⟩, by autograd
    on a hand-written GQA attention (soft-cap with its true derivative, or the identity rule)."""
    from harness_xai.lrp.blocktrace import LayerTrace
    from harness_xai.lrp.gradtricks import scale_grad
    from harness_xai.lrp.rules.softcap import IdentityTanh

    g = torch.Generator().manual_seed(3)
    heads, kv, n, hd, scaling, c_k, c_v = 4, 2, 7, 5, 0.45, 0.25, 0.5
    q, gamma = torch.randn(heads, n, hd, generator=g), torch.randn(heads, n, hd, generator=g)
    k, v = torch.randn(kv, n, hd, generator=g), torch.randn(kv, n, hd, generator=g)
    k_tilde, v_tilde = torch.randn(kv, n, hd, generator=g), torch.randn(kv, n, hd, generator=g)

    def attention(k, v):  # (H, n, hd)
        kk, vv = k.repeat_interleave(heads // kv, 0), v.repeat_interleave(heads // kv, 0)
        s = scaling * q @ kk.transpose(1, 2)
        if softcap is not None:
            s = softcap * torch.tanh(s / softcap)
        s = s.masked_fill(torch.ones(n, n).triu(1).bool(), float("-inf"))
        return torch.softmax(s, -1) @ vv

    out = attention(k, v)
    expected = torch.zeros(n, n)
    for j in range(n):
        kk, vv = k.clone().requires_grad_(), v.clone().requires_grad_()
        if identity_cap:
            with IdentityTanh():
                o = attention(scale_grad(kk, c_k), scale_grad(vv, c_v))
        else:
            o = attention(scale_grad(kk, c_k), scale_grad(vv, c_v))
        gk, gv = torch.autograd.grad((o[:, j] * gamma[:, j]).sum(), [kk, vv])
        expected[j] = (k_tilde * gk).sum((0, 2)) + (v_tilde * gv).sum((0, 2))
    layer = LayerTrace(q=q, k=k, v=v, v_lin=c_v * v_tilde, k_lin=c_k * scaling * k_tilde,
                       gamma=gamma, gamma_o=(gamma * out).sum(-1), out=out, local=torch.zeros(n),
                       mask=None, scaling=scaling, softcap=softcap, identity_cap=identity_cap)
    got = torch.zeros(n, n)
    for start in range(0, n, 3):  # chunks of 3 target rows
        rows = torch.arange(start, min(n, start + 3))
        got[rows, :int(rows[-1]) + 1] = fast.rows(layer, rows, check=True)
    assert _rel(got, expected) <= 1e-5


def test_ancestors_keeps_exactly_the_paths_to_the_output():
    from harness_xai.graph.prune import Edges, ancestors

    def edges(pairs):  # (target, source) pairs
        t, s = zip(*pairs)
        return Edges(torch.tensor(t), torch.tensor(s), torch.ones(len(pairs)))

    layers = [edges([(0, 0), (1, 0), (2, 1), (3, 3)]),  # 0→1 … only targets 0, 2 reach the top
              edges([(1, 0), (2, 2), (3, 1), (3, 3)]),  # (3,3) is dropped above: its source 3 too
              edges([(3, 1), (3, 2)])]  # output node 3
    kept = ancestors(layers, output=3)
    as_set = [set(zip(e.target.tolist(), e.source.tolist())) for e in kept]
    assert as_set == [{(0, 0), (2, 1)}, {(1, 0), (2, 2)}, {(3, 1), (3, 2)}]


def test_attention_recomputation_check_fails_loudly():
    model = tiny_model("llama", layers=2)
    spec = get_method("attnlrp")
    tr = explain(model, [TokenTarget(random_ids(N)[0].tolist(), TARGET, FOIL)], spec,
                 states=False, trace=True)[0].trace
    layer = tr.layer(0)
    fast.rows(layer, torch.arange(N), check=True)  # the model's own attention: passes
    wrong = dataclasses.replace(layer, scaling=layer.scaling * 3)
    with pytest.raises(RuntimeError, match="recomputed attention"):
        fast.rows(wrong, torch.arange(N), check=True)


def test_bad_input_and_model_restored():
    model = tiny_model("llama", layers=2)
    ids = random_ids(N)
    implementation = model.config._attn_implementation
    for kwargs, match in ((dict(prune={"mass": 1.5}), "mass"), (dict(prune={"bogus": 1}), "bogus"),
                          (dict(prune={"top_k": 0}), "top_k"),
                          (dict(method="integrated-gradients"), "one-backward"),
                          (dict(impl="slow"), "impl")):
        with pytest.raises(UserError, match=match):
            graph(model, None, ids, TARGET, FOIL, **kwargs)
    with pytest.raises(UserError, match="vocabulary"):
        graph(model, None, ids, 10_000, FOIL)
    graph(model, None, ids, TARGET, FOIL, prune=True)
    assert model.config._attn_implementation == implementation
    assert [name for name, m in model.named_modules() if "forward" in vars(m)] == []


def test_trace_streams_each_block_once_and_releases_it():
    """``Trace.layers()`` re-runs one block at a time: the previous block's ``LayerTrace`` and its
    kept input/gradient are gone when the next is built; a streamed trace refuses a second use;
    the re-run equals a single ``layer(l)`` call, checkpointed pass or not."""
    import gc
    import weakref

    model = tiny_model("qwen2", layers=3)
    objective = TokenTarget(random_ids(N)[0].tolist(), TARGET, FOIL)
    plain = explain(model, [objective], "attnlrp", states=False, trace=True)[0].trace
    ckpt = explain(model, [objective], "attnlrp", states=False, trace=True, checkpoint=True)[0].trace
    assert torch.equal(plain.nodes, ckpt.nodes)
    single = [plain.layer(l) for l in range(3)]
    alive = []
    for l, layer in enumerate(ckpt.layers()):
        gc.collect()
        assert all(ref() is None for ref in alive), f"block {l}: an earlier LayerTrace is alive"
        assert ckpt._calls[l] is None and all(c is None for c in ckpt._calls[:l])
        for name in ("q", "k", "v", "v_lin", "k_lin", "gamma", "local"):
            assert torch.equal(getattr(layer, name), getattr(single[l], name)), (l, name)
        alive.append(weakref.ref(layer))
        del layer
    with pytest.raises(RuntimeError, match="already streamed"):
        next(ckpt.layers())


def test_chunk_budget_follows_memory_and_can_be_overridden(monkeypatch):
    from harness_xai.graph import budget

    monkeypatch.delenv(budget.ENV, raising=False)
    monkeypatch.setattr(budget, "available_ram", lambda: 1 << 40)  # plenty: the CPU cap
    assert budget.chunk_elements("cpu") == budget.CPU_CAP_BYTES // (4 * budget.LIVE_TEMPORARIES)
    monkeypatch.setattr(budget, "available_ram", lambda: 256 << 20)  # scarce: a share of it
    assert budget.chunk_elements("cpu") == int((256 << 20) * budget.CPU_SHARE) // (
        4 * budget.LIVE_TEMPORARIES)
    monkeypatch.setattr(budget, "available_ram", lambda: 1 << 20)  # never below the floor
    assert budget.chunk_elements("cpu") == budget.MIN_ELEMENTS
    assert budget.chunk_elements("cpu", 1234) == 1234  # the argument wins
    monkeypatch.setenv(budget.ENV, "4321")
    assert budget.chunk_elements("cpu") == 4321 and budget.chunk_elements("cpu", 7) == 7
    monkeypatch.setenv(budget.ENV, "lots")
    with pytest.raises(UserError, match=budget.ENV):
        budget.chunk_elements("cpu")
    assert budget.available_ram() > 0  # the real machine's figure is readable
