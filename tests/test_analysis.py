"""Per-case analysis (harness_xai.analysis): every definition on constructed cases, the triage
rules one by one, storage in case_metrics / case_labels / token_relevance.evidence on all three
backends, and evidence positions mapped from the docs' evidence_span through a real run."""

from __future__ import annotations

import itertools
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from harness_xai.analysis import analyse, case_metrics
import harness_xai.analysis.triage as tri
from harness_xai.analysis.evidence import evidence_recovery
from harness_xai.analysis.layers import layer_profile
from harness_xai.analysis.relevance import (concentration, conservation, gini, position_profile,
                                            segment_relevance)
from harness_xai.contrast.evidence import doc_spans, evidence_positions, locate_text
from harness_xai.records import Case, Explanation, Faithfulness
from harness_xai.store import Store, run_sql
from test_store_support import backend, db, explained, make_case, make_run, make_skipped  # noqa: F401

TASKS = Path(__file__).resolve().parents[1] / "tasks"


def _case(relevance, segments=None, evidence=(), faith=None, layers=None, delta=1.0,
          **fields) -> tuple[Case, Explanation]:
    """A case explained by ``relevance`` (tokens t0 … t{n-1}); ``fields``: other record fields."""
    return explained(np.asarray(relevance, dtype=np.float32), delta=delta,
                     layer_relevance=None if layers is None else np.asarray(layers, np.float32),
                     segments=segments or (), segment_index=[None] * len(segments or []),
                     evidence_positions=evidence, faithfulness=faith, **fields)


def _faith(aopc: float, aopc_random: float) -> Faithfulness:
    return Faithfulness(fractions=[0.1], n_removed=[1], delta_relevance=[0.0], delta_random=[0.0],
                        aopc=aopc, aopc_random=aopc_random, baseline_token_id=0)


# -- 1. segment relevance ---------------------------------------------------------------------
def test_paper_normalisation_ignores_special_tokens():
    rel = [40.0, 1.0, -2.0, 0.5, 4.0, -1.0]
    seg = ["special", "instruction", "question", "question", "option", "continuation"]
    m = segment_relevance(np.array(rel), seg)
    assert m["norm.scale"] == 4.0  # the BOS' 40 is not the scale
    assert m["relevance.total"] == pytest.approx((1 - 2 + 0.5 + 4 - 1) / 4)
    assert m["segment.question.total"] == pytest.approx(-1.5 / 4)
    assert m["segment.special.total"] == pytest.approx(10.0)
    assert m["segment.question.n_tokens"] == 2
    assert sum(m[f"segment.{s}.total"] for s in set(seg) - {"special"}) == \
        pytest.approx(m["relevance.total"])
    shares = {s: m[f"segment.{s}.share"] for s in set(seg)}
    assert sum(shares.values()) == pytest.approx(1.0)
    assert shares["special"] == pytest.approx(40 / 48.5)


def test_without_segments_every_token_is_content():
    m = segment_relevance(np.array([2.0, -8.0, 4.0]), [])
    assert m == {"norm.scale": 8.0, "relevance.total": pytest.approx(-0.25)}
    assert segment_relevance(np.zeros(3), []) == {}  # nothing to normalise by


# -- 2. concentration, position, sink, conservation -------------------------------------------
def test_gini_by_hand_and_bounds():
    assert gini(np.array([1.0, 2.0, 3.0, 4.0])) == pytest.approx(0.25)
    assert gini(np.ones(7)) == pytest.approx(0.0)
    assert gini(np.array([0, 0, 0, 5.0])) == pytest.approx(1 - 1 / 4)


def test_concentration_one_hot_uniform_and_topk():
    one_hot = concentration(np.array([0, 0, -3.0, 0, 0]), [])
    assert one_hot["concentration.entropy"] == pytest.approx(0.0)
    assert one_hot["concentration.top1"] == pytest.approx(1.0)
    uniform = concentration(np.full(40, -0.5), [])
    assert uniform["concentration.entropy"] == pytest.approx(1.0)
    assert uniform["concentration.gini"] == pytest.approx(0.0, abs=1e-12)
    assert uniform["concentration.top1"] == pytest.approx(1 / 40)
    assert uniform["concentration.top5"] == pytest.approx(5 / 40)
    assert uniform["concentration.top10pct"] == pytest.approx(4 / 40)
    # the special token is left out: 2 content tokens, 1 and 3
    m = concentration(np.array([100.0, 1.0, -3.0]), ["special", "question", "question"])
    p = np.array([0.25, 0.75])
    assert m["concentration.top1"] == pytest.approx(0.75)
    assert m["concentration.entropy"] == pytest.approx(-(p * np.log(p)).sum() / math.log(2))


def test_position_profile_and_sink_share():
    rel = np.zeros(20)
    rel[0], rel[19], rel[5] = 6.0, 3.0, -1.0
    m = position_profile(rel, ["special"] + ["question"] * 19)
    assert m["sink.share"] == pytest.approx(0.6)
    assert m["position.d9"] == pytest.approx(0.75) and m["position.d2"] == pytest.approx(0.25)
    assert sum(m[f"position.d{k}"] for k in range(10)) == pytest.approx(1.0)
    assert m["position.centroid"] == pytest.approx(0.75 * 1 + 0.25 * 5 / 19)
    short = position_profile(np.array([1.0, 1.0, 2.0]), [])  # n < 10: deciles 0, 3, 6
    assert (short["position.d0"], short["position.d3"], short["position.d6"]) == (0.25, 0.25, 0.5)
    assert conservation(np.array([1.0, 2.0]), 4.0) == {"relevance.conservation": 0.75}
    assert conservation(np.array([1.0]), 0.0) == {}


# -- layer profile ----------------------------------------------------------------------------
def test_layer_profile_formation():
    layers = np.array([[1.0, 1.0, 1.0, 1.0],     # last share 0.25
                       [0.0, 0.0, 3.0, 1.0],     # 0.25
                       [1.0, 0.0, 0.0, -3.0],    # 0.75
                       [0.5, 0.0, 0.0, 2.0],     # 0.8
                       [0.0, 0.0, 0.0, 5.0]])    # 1.0
    m = layer_profile(layers)
    assert m["layer.formation"] == 2 and m["layer.formation_rel"] == 0.5
    assert [m[f"layer.l{k}.last_share"] for k in range(5)] == pytest.approx([0.25, 0.25, 0.75, 0.8, 1])
    layers[1, -1] = -10.0  # now gathered by block 1 already (row 0 stays at 0.25)
    assert layer_profile(layers)["layer.formation"] == 1
    layers[3, 0] = 9.0  # a dip above breaks the run: only rows from 4 on count
    assert layer_profile(layers)["layer.formation"] == 4
    assert layer_profile(None, {"formation_layer": 3}, 5) == {"layer.formation": 3.0,
                                                              "layer.formation_rel": 0.75}
    assert layer_profile(None) == {}


# -- 3. evidence recovery ---------------------------------------------------------------------
def test_evidence_ranks_in_three_orders_and_random_baseline():
    rel = np.array([50.0, 0.5, -4.0, 3.0, 1.0, -0.2])
    seg = ["special"] + ["question"] * 5
    m = evidence_recovery(rel, [2], seg)
    assert m["evidence.rank_abs"] == 1 and m["evidence.top1"] == 1.0  # BOS not a candidate
    assert m["evidence.rank_pos"] == 5  # −4 is the most negative: last toward the target …
    assert m["evidence.rank_neg"] == 1  # … and first toward the foil
    assert m["evidence.candidates"] == 5 and m["evidence.n"] == 1
    assert m["evidence.random_top1"] == pytest.approx(1 / 5)
    assert m["evidence.random_rank"] == pytest.approx(3.0)
    assert m["evidence.norm"] == pytest.approx(-1.0)
    assert m["evidence.share"] == pytest.approx(4 / 8.7)
    two = evidence_recovery(rel, [1, 4], seg)  # best of the two is 1.0 (rank 3 by |R|)
    assert two["evidence.rank_abs"] == 3 and two["evidence.top1"] == 0.0
    assert two["evidence.random_rank"] == pytest.approx(6 / 3)
    assert evidence_recovery(rel, [], seg) == {} and evidence_recovery(rel, [17], seg) == {}


def test_ties_count_against_the_evidence():
    m = evidence_recovery(np.zeros(6), [3], [])
    assert m["evidence.rank_abs"] == 6 and m["evidence.top1"] == 0.0


@pytest.mark.parametrize("n, m", [(5, 1), (6, 2), (7, 3)])
def test_random_baseline_is_the_mean_over_all_orders(n, m):
    ranks = []
    for order in itertools.permutations(range(n)):  # every relevance order of n distinct values
        rel = np.array(order, dtype=np.float64)
        ranks.append(evidence_recovery(rel, list(range(m)), [])["evidence.rank_abs"])
    precisions = [evidence_recovery(np.array(order, dtype=np.float64), list(range(m)),
                                    [])["evidence.precision"]
                  for order in itertools.permutations(range(n))]
    any_case = evidence_recovery(np.arange(n, dtype=float), list(range(m)), [])
    assert np.mean(ranks) == pytest.approx(any_case["evidence.random_rank"])
    assert np.mean(np.array(ranks) == 1) == pytest.approx(any_case["evidence.random_top1"])
    assert np.mean(precisions) == pytest.approx(any_case["evidence.random_precision"])
    assert any_case["evidence.random_precision"] == pytest.approx(m / n)


def test_several_evidence_tokens_best_rank_and_top_m_precision():
    """Every operand of a sum is evidence: the rank asks for the best one, precision for all."""
    rel = np.array([9.0, 0.1, 3.0, -2.5, 0.2, 1.0, 0.05])
    seg = ["special"] + ["question"] * 6  # the BOS' 9.0 is no candidate
    all_top = evidence_recovery(rel, [2, 3, 5], seg)
    assert all_top["evidence.rank_abs"] == 1 and all_top["evidence.precision"] == 1.0
    assert all_top["evidence.n"] == 3 and all_top["evidence.candidates"] == 6
    assert all_top["evidence.random_top1"] == pytest.approx(3 / 6)
    assert all_top["evidence.random_precision"] == pytest.approx(3 / 6)
    assert all_top["evidence.random_rank"] == pytest.approx(7 / 4)
    assert all_top["evidence.share"] == pytest.approx(6.5 / 6.85)
    # the best operand is first but the other two sit below two non-evidence tokens
    one_top = evidence_recovery(rel, [2, 1, 6], seg)
    assert one_top["evidence.rank_abs"] == 1 and one_top["evidence.precision"] == pytest.approx(1 / 3)
    # by sign: toward the target (R) the best evidence 3.0 is first, toward the foil (−R) −2.5
    assert evidence_recovery(rel, [3, 5], seg)["evidence.rank_pos"] == 2  # 1.0 below 3.0
    assert evidence_recovery(rel, [3, 5], seg)["evidence.rank_neg"] == 1
    # ties count against the evidence here too
    tied = evidence_recovery(np.ones(6), [0, 1], [])
    assert tied["evidence.precision"] == 0.0 and tied["evidence.rank_abs"] == 5
    # one evidence token: precision is top1
    for pos in range(1, 7):
        single = evidence_recovery(rel, [pos], seg)
        assert single["evidence.precision"] == single["evidence.top1"]


# -- 4. triage --------------------------------------------------------------------------------
QUESTION = ["question"] * 8


def _triage(pair: tuple[Case, Explanation]) -> tuple[str, list[str]]:
    ex = analyse(*pair)
    return ex.analysis["triage"], ex.analysis["flags"]


def test_evidence_on_top_is_unflagged():
    case = _case([0.1, 0.2, 3.0, -0.3, 0.1, 0.2, 0.1, 0.4], QUESTION, evidence=[2],
                 faith=_faith(0.9, 0.1))
    assert _triage(case) == ("unflagged", [])


def test_uninformative_when_aopc_is_not_above_random_by_the_margin():
    rel = [0.1, 0.2, 3.0, -0.3, 0.1, 0.2, 0.1, 0.4]
    assert _triage(_case(rel, QUESTION, [2], _faith(0.30, 0.25))) == (
        "uninformative", ["uninformative"])
    assert _triage(_case(rel, QUESTION, [2], _faith(0.36, 0.25)))[0] == "unflagged"  # margin 0.1
    assert _triage(_case(rel, QUESTION, [2], _faith(float("nan"), 0.2)))[0] == "unflagged"
    assert _triage(_case(rel, QUESTION, [2], None))[0] == "unflagged"


def test_special_dominated():
    case = _case([9.0, 1.0, -1.0, 2.0], ["special", "question", "question", "question"])
    assert _triage(case) == ("special-dominated", ["special-dominated"])
    case = _case([3.9, 1.0, -1.0, 2.0], ["special", "question", "question", "question"])
    assert _triage(case) == ("unflagged", [])


def test_fewshot_dominated_is_measured_on_content_tokens():
    seg = ["special", "fewshot", "fewshot", "question", "question"]
    case = _case([1.0, 2.0, -1.5, 1.0, 2.0], seg)  # fewshot 3.5 of 6.5 content
    assert _triage(case) == ("fewshot-dominated", ["fewshot-dominated"])
    case = _case([4.0, 2.0, -1.5, 1.0, 2.0], seg)  # fewshot 3.5 of 10.5 overall, of 6.5 content
    assert _triage(case)[1] == ["fewshot-dominated"]
    case = _case([1.0, 1.0, -1.0, 1.0, 2.0], seg)  # 2 of 5
    assert _triage(case) == ("unflagged", [])


def test_irrelevant_overweighted_vs_evidence_underweighted():
    # one distractor dwarfs the evidence (rank 2): overweighted only
    case = _case([0.1, 5.0, -2.0, 0.3, 0.1, 0.2, 0.1, 0.4], QUESTION, evidence=[2])
    assert _triage(case) == ("irrelevant-overweighted", ["irrelevant-overweighted"])
    # many tokens slightly above the evidence (rank 5), none twice as large: underweighted only
    case = _case([1.0, 1.1, 1.2, 1.3, 0.9, 0.1, 0.1, 0.1], QUESTION, evidence=[4])
    assert _triage(case) == ("evidence-underweighted", ["evidence-underweighted"])
    # both
    case = _case([6.0, 1.1, 1.2, 1.3, 0.9, 0.1, 0.1, 0.1], QUESTION, evidence=[4])
    assert _triage(case) == ("irrelevant-overweighted",
                             ["irrelevant-overweighted", "evidence-underweighted"])
    # no known evidence: neither rule can fire
    assert _triage(_case([6.0, 1.1, 1.2, 1.3, 0.9, 0.1, 0.1, 0.1], QUESTION)) == ("unflagged", [])


def test_primary_label_follows_the_priority_order():
    seg = ["special", "fewshot", "question", "question"]
    case = _case([10.0, 3.0, 0.1, 0.2], seg, evidence=[2], faith=_faith(0.1, 0.1))
    label, flags = _triage(case)
    assert flags == ["uninformative", "special-dominated", "fewshot-dominated",
                     "irrelevant-overweighted"] and label == "uninformative"
    assert list(tri.FLAGS) == flags + ["evidence-underweighted"]


def test_analyse_leaves_other_cases_alone_and_gives_plain_floats():
    assert analyse(make_skipped(), None) is None  # a skipped case has nothing to analyse
    case, empty = _case([])
    assert analyse(case, empty) is empty  # no token relevance: unchanged
    case, before = _case([0.5, -1.0, 2.0], ["special", "question", "question"], [1],
                         layers=np.ones((3, 3)))
    ex = analyse(case, before)
    assert before.analysis == {} and ex.analysis  # a new record; the given one is unchanged
    assert ex.token_relevance is before.token_relevance and ex.delta == before.delta
    numbers = {k: v for k, v in ex.analysis.items() if k not in ("triage", "flags")}
    assert numbers == case_metrics(case, ex)
    assert all(type(v) is float and math.isfinite(v) for v in numbers.values())
    assert {"relevance.total", "concentration.gini", "position.d0", "sink.share",
            "layer.formation", "evidence.rank_abs", "relevance.conservation"} <= set(numbers)


def test_reasoning_top_step_by_hand():
    """Steps 0 and 2 of a thinking model's reasoning in the input: the top step has the largest
    Σ r (not Σ|r|), its share is over every token's |r|; no reasoning token → no metric."""
    from harness_xai.analysis.reasoning import reasoning_metrics

    rel = np.array([1.0, -3.0, 1.0, 0.5, 0.5, 2.0, 1.0])
    seg = ["question", "reasoning", "reasoning", "think-marker", "reasoning", "reasoning", "answer"]
    idx = [None, 0, 0, None, 2, 2, None]
    got = reasoning_metrics(rel, seg, idx)
    assert got == pytest.approx({"reasoning.n_steps": 2.0, "reasoning.top_step": 2.0,
                                 "reasoning.top_step.total": 2.5,
                                 "reasoning.top_step.share": 2.5 / 9.0})
    assert reasoning_metrics(rel, ["question"] * 7, [None] * 7) == {}
    case, ex = explained(rel, segments=seg, segment_index=idx)
    assert {k: v for k, v in case_metrics(case, ex).items() if k.startswith("reasoning.")} == got


# -- 5. storage -------------------------------------------------------------------------------
def test_metrics_labels_and_evidence_are_stored(db: str):
    case, ex = make_case(n_tokens=12, evidence_positions=[3, 4])
    ex = analyse(case, ex)
    plain = make_case(doc_id=8, n_tokens=12, full=False)  # no evidence, no analysis
    with Store.open(db) as store:
        run_id = store.ensure_run(make_run())
        case_id = store.write_case(run_id, case, ex)
        plain_id = store.write_case(run_id, *plain)
    rows = dict(run_sql(db, "SELECT name, value FROM case_metrics WHERE case_id = :c",
                        {"c": case_id})[1])
    assert rows == pytest.approx({k: v for k, v in ex.analysis.items()
                                  if k not in ("triage", "flags")})
    labels = run_sql(db, "SELECT kind, label FROM case_labels WHERE case_id = :c ORDER BY kind, "
                         "label", {"c": case_id})[1]
    assert labels == sorted([("triage", ex.analysis["triage"])] +
                            [("flag", f) for f in ex.analysis["flags"]])
    marks = run_sql(db, "SELECT position, evidence FROM token_relevance WHERE case_id = :c "
                        "ORDER BY position", {"c": case_id})[1]
    assert [p for p, e in marks if e == 1] == [3, 4] and {e for _, e in marks} == {0, 1}
    assert run_sql(db, "SELECT count(*) FROM token_relevance WHERE case_id = :c AND evidence "
                       "IS NULL", {"c": plain_id})[1] == [(12,)]
    assert run_sql(db, "SELECT count(*) FROM case_metrics WHERE case_id = :c",
                   {"c": plain_id})[1] == [(0,)]


def test_aggregates_over_stored_cases(tmp_path):
    from harness_xai.analysis.aggregate import evidence_rates, triage_counts

    db = str(tmp_path / "agg.sqlite")
    top = [0.1, 0.2, 3.0, -0.3, 0.1, 0.2, 0.1, 0.4]  # evidence at 2 ranked first
    low = [1.0, 1.1, 1.2, 1.3, 0.9, 0.1, 0.1, 0.1]  # evidence at 4 ranked fifth
    with Store.open(db) as store:
        run_id = store.ensure_run(make_run())
        for doc, rel in enumerate([top, top, low]):
            case, ex = _case(rel, QUESTION, evidence=[2 if rel is top else 4], doc_id=doc,
                             doc_hash=f"h{doc}", method="attnlrp")
            store.write_case(run_id, case, analyse(case, ex))
        plain, ex = _case(top, doc_id=9, method="attnlrp")  # no evidence: not counted in the rates
        store.write_case(run_id, plain, analyse(plain, ex))
    (row,) = evidence_rates(db)
    assert (row["n_cases"], row["method"], row["task"], row["step"]) == (3, "attnlrp", "t", 3000)
    assert row["top1"] == pytest.approx(2 / 3) and row["top1_pos"] == pytest.approx(2 / 3)
    assert row["random_top1"] == pytest.approx(1 / 8) and row["mean_rank"] == pytest.approx(7 / 3)
    counts = {r["label"]: r["n_cases"] for r in triage_counts(db)}
    assert counts == {"unflagged": 3, "evidence-underweighted": 1}


@pytest.mark.parametrize("analysis, message", [
    ({"x": "text"}, "is not a number"), ({"x": True}, "is not a number"),
    ({"triage": 3}, "is not a label"), ({"flags": "a"}, "not a list"),
])
def test_bad_analysis_is_refused_before_writing(tmp_path, analysis, message):
    db = str(tmp_path / "bad.sqlite")
    case, ex = make_case(analysis=analysis)
    with Store.open(db) as store:
        run_id = store.ensure_run(make_run())
        with pytest.raises(ValueError, match=message):
            store.write_case(run_id, case, ex)
        case, ex = replace(case, evidence_positions=(len(case.tokens),)), replace(ex, analysis={})
        with pytest.raises(ValueError, match="evidence positions"):
            store.write_case(run_id, case, ex)
    assert run_sql(db, "SELECT count(*) FROM cases")[1] == [(0,)]


# -- evidence positions from evidence_span ----------------------------------------------------
class _Task:
    def doc_to_text(self, doc):
        return doc["prompt"]


@pytest.fixture(scope="module")
def tokenizer(micro_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(micro_model))


def test_evidence_span_maps_onto_the_current_questions_tokens(tokenizer):
    doc = {"prompt": " ba 09 go 73 ru 70. go", "evidence_span": [10, 12]}
    demo = " go 73 le 41. go 73\n\n"  # a demo holding the same value earlier
    context = demo + doc["prompt"]
    ids = tokenizer(context, add_special_tokens=False)["input_ids"]
    found = evidence_positions(tokenizer, _Task(), doc, context, ids)
    assert [tokenizer.decode([ids[k]]) for k in found] == [" 73"]
    assert tokenizer.decode(ids[:found[0]]).endswith(" ba 09 go")
    # left truncation: the attributed input starts at ``offset``
    assert evidence_positions(tokenizer, _Task(), doc, context, ids, offset=3) == [found[0] - 3]
    assert evidence_positions(tokenizer, _Task(), doc, context, ids, offset=found[0] + 1) == []
    # several spans; the key and the value of the record
    doc2 = {**doc, "evidence_span": [[7, 9], [10, 12]]}
    two = evidence_positions(tokenizer, _Task(), doc2, context, ids)
    assert [tokenizer.decode([ids[k]]) for k in two] == [" go", " 73"]


def test_evidence_span_edge_cases(tokenizer):
    doc = {"prompt": " ba 09 go 73. go", "evidence_span": [10, 12]}
    assert doc_spans(doc, 16) == [(10, 12)]
    for bad in ([12, 10], [0, 99], ["a", 2], [[1, 2], 3], [True, 2], "x"):
        assert doc_spans({"evidence_span": bad}, 16) == []
    assert doc_spans({}, 16) == []
    assert locate_text("Q:" + doc["prompt"].strip(), doc["prompt"]) == 1  # template trimmed
    context = "Q:" + doc["prompt"].strip()
    ids = tokenizer(context, add_special_tokens=False)["input_ids"]
    (k,) = evidence_positions(tokenizer, _Task(), doc, context, ids)
    assert tokenizer.decode([ids[k]]).strip() == "73"
    assert evidence_positions(tokenizer, _Task(), {"prompt": "x"}, context, ids) == []
    assert evidence_positions(tokenizer, _Task(), doc, "unrelated text", ids) == []


def test_run_stores_evidence_metrics_and_triage(micro_model, tmp_path):
    """A real few-shot run on the bundled kv tasks: every attributed case's evidence is the
    gold value's token in the current question (not in the demo), and it is analysed."""
    import harness_xai
    from lm_eval.tasks import TaskManager

    url = f"sqlite:///{tmp_path / 'kv.sqlite'}"
    harness_xai.evaluate(
        model="hf", model_args=f"pretrained={micro_model},dtype=float32",
        tasks=["xai_kv", "xai_kv_gen"], num_fewshot=1, task_manager=TaskManager(
            include_path=str(TASKS)), device="cpu", limit=6, attribute=True, db=url,
        method="attnlrp", progress=False)
    cases = run_sql(url, "SELECT id, task, gold_text FROM cases WHERE status = 'attributed'")[1]
    assert {t for _, t, _ in cases} == {"xai_kv", "xai_kv_gen"}
    for case_id, _, gold in cases:
        tokens = run_sql(url, "SELECT position, token, segment, evidence FROM token_relevance "
                              "WHERE case_id = :c ORDER BY position", {"c": case_id})[1]
        evidence = [(p, tok, s) for p, tok, s, e in tokens if e == 1]
        assert len(evidence) == 1 and evidence[0][1].strip() == gold.strip()
        assert evidence[0][2] == "question"
        assert evidence[0][0] > max(p for p, _, s, _ in tokens if s == "fewshot")
        metrics = dict(run_sql(url, "SELECT name, value FROM case_metrics WHERE case_id = :c",
                               {"c": case_id})[1])
        assert 1 <= metrics["evidence.rank_abs"] <= metrics["evidence.candidates"]
        (label,) = run_sql(url, "SELECT label FROM case_labels WHERE case_id = :c AND kind = "
                                "'triage'", {"c": case_id})[1]
        assert label[0] in tri.LABELS


def test_arith_run_marks_every_operand_of_the_current_sum_as_evidence(micro_model, tmp_path):
    """xai_arith docs carry evidence_span = all operands: through a real few-shot run, each
    attributed case's evidence positions are exactly the operand tokens of the current question
    (not the demo's digits, nor '+', '=' or the sum), and its evidence metrics use m = #operands."""
    import harness_xai
    from lm_eval.tasks import TaskManager

    from harness_xai.zoo import taskgen

    docs = taskgen.test_docs("xai_arith")
    url = f"sqlite:///{tmp_path / 'arith.sqlite'}"
    harness_xai.evaluate(
        model="hf", model_args=f"pretrained={micro_model},dtype=float32", tasks=["xai_arith"],
        num_fewshot=1, task_manager=TaskManager(include_path=str(TASKS)), device="cpu", limit=8,
        attribute=True, db=url, method="attnlrp", progress=False)
    cases = run_sql(url, "SELECT id, doc_id FROM cases WHERE status = 'attributed'")[1]
    assert len(cases) >= 3  # the micro model gets most sums wrong
    for case_id, doc_id in cases:
        doc = docs[doc_id]
        tokens = run_sql(url, "SELECT position, token, segment, evidence FROM token_relevance "
                              "WHERE case_id = :c ORDER BY position", {"c": case_id})[1]
        demo_end = max(p for p, _, s, _ in tokens if s == "fewshot")
        # the current question's operand tokens, found independently of the evidence code
        question = [(p, tok) for p, tok, s, _ in tokens if p > demo_end and s == "question"]
        operands = [p for p, tok in question if tok.strip().isdigit()]
        assert [tok.strip() for p, tok in question if p in operands] == \
            [str(x) for x in doc["operands"]]
        assert [p for p, _, _, e in tokens if e == 1] == operands
        assert any(tok.strip().isdigit() for p, tok, s, _ in tokens if s == "fewshot")
        metrics = dict(run_sql(url, "SELECT name, value FROM case_metrics WHERE case_id = :c",
                               {"c": case_id})[1])
        assert metrics["evidence.n"] == len(doc["operands"])
        assert metrics["evidence.random_top1"] == pytest.approx(
            len(doc["operands"]) / metrics["evidence.candidates"])
        assert 0.0 <= metrics["evidence.precision"] <= 1.0
