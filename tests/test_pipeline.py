"""End to end: `harness-xai run` = `lm-eval run`; `--attribute` → one case per incorrect sample."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from harness_xai.cli import main

TASKS = Path(__file__).resolve().parents[1] / "tasks"


def _args(model: Path, out: Path, tasks: str, limit: int = 24) -> list[str]:
    return ["--model", "hf", "--model_args", f"pretrained={model},dtype=float32", "--tasks", tasks,
            "--include_path", str(TASKS), "--device", "cpu", "--batch_size", "8",
            "--limit", str(limit), "--output_path", str(out), "--log_samples"]


def _results(out: Path) -> dict:
    (path,) = out.rglob("results_*.json")
    return json.loads(path.read_text())


def _samples(out: Path, task: str) -> list[dict]:
    (path,) = [p for p in out.rglob("samples_*.jsonl")
               if re.fullmatch(rf"samples_{task}_\d.*\.jsonl", p.name)]
    return [json.loads(line) for line in path.read_text().splitlines()]


def _sql(db: Path, query: str, params: dict | None = None):
    from harness_xai.store import run_sql

    return run_sql(f"duckdb:///{db}", query, params)[1]


def test_plain_run_equals_lm_eval(micro_model, tmp_path, monkeypatch):
    from lm_eval.__main__ import cli_evaluate

    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    assert main(["run", *_args(micro_model, ours, "xai_arith,xai_kv")]) == 0
    monkeypatch.setattr(sys, "argv", ["lm-eval", "run", *_args(micro_model, theirs, "xai_arith,xai_kv")])
    cli_evaluate()
    a, b = _results(ours), _results(theirs)
    for key in ("results", "configs", "versions", "n-shot", "n-samples", "task_hashes"):
        assert a[key] == b[key], key
    assert "xai" not in a
    for task in ("xai_arith", "xai_kv"):
        assert _samples(ours, task) == _samples(theirs, task)


@pytest.fixture(scope="module")
def attributed_run(micro_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("attributed")
    db = out / "xai.duckdb"
    argv = [*_args(micro_model, out / "results", "xai_arith,xai_kv,xai_kv_gen"), "--attribute",
            "--xai-db", f"duckdb:///{db}", "--xai-no-progress"]
    assert main(["run", *argv]) == 0
    return out, db, argv


def test_one_case_per_incorrect_sample(attributed_run):
    out, db, _ = attributed_run
    results = out / "results"
    for task, metric in (("xai_arith", "acc"), ("xai_kv", "acc"), ("xai_kv_gen", "exact_match")):
        incorrect = sorted(s["doc_id"] for s in _samples(results, task) if s[metric] == 0)
        stored = [r[0] for r in _sql(db, "SELECT doc_id FROM cases WHERE task = :t ORDER BY doc_id",
                                     {"t": task})]
        assert stored == incorrect, task
    statuses = dict(_sql(db, "SELECT task, count(*) FROM cases WHERE status = 'attributed' GROUP BY task"))
    assert statuses.get("xai_arith", 0) + statuses.get("xai_kv", 0) > 0
    reasons = _sql(db, "SELECT DISTINCT skip_reason FROM cases WHERE task = 'xai_kv_gen'")
    assert not any(r and r.startswith("unsupported-output-type") for (r,) in reasons)
    (n_runs,) = _sql(db, "SELECT count(*) FROM runs")[0]
    assert n_runs == 1
    accuracy = dict(_sql(db, "SELECT task, value FROM task_results"))
    lm_acc = _results(results)["results"]
    assert accuracy["xai_arith"] == pytest.approx(lm_acc["xai_arith"]["acc,none"])


def test_stored_case_is_exactly_what_lm_eval_scored(attributed_run, micro_model):
    """Tokens = lm-eval's encoding of context + predicted choice up to the divergence; the stored
    Δℓ equals a plain forward's logit difference; layers × positions are complete."""
    from lm_eval.models.huggingface import HFLM

    out, db, _ = attributed_run
    lm = HFLM(pretrained=str(micro_model), device="cpu", dtype="float32")
    cases = _sql(db, "SELECT id, task, doc_id, position, wrong_token_id, gold_token_id, delta, "
                     "n_tokens, pred_index, gold_index FROM cases WHERE status = 'attributed' "
                     "AND task IN ('xai_arith', 'xai_kv')")
    assert cases
    samples = {(t, s["doc_id"]): s for t in ("xai_arith", "xai_kv")
               for s in _samples(out / "results", t)}
    n_layers = lm.model.config.num_hidden_layers
    for cid, task, doc_id, pos, wrong, gold, delta, n_tokens, pred_i, gold_i in cases:
        sample = samples[(task, doc_id)]
        lls = [float(r[0]) for r in sample["filtered_resps"]]
        assert pred_i == max(range(len(lls)), key=lls.__getitem__)
        args = sample["arguments"]  # saved form: {"gen_args_i": {"arg_0": ctx, "arg_1": cont}}
        ctx, cont_p = args[f"gen_args_{pred_i}"]["arg_0"], args[f"gen_args_{pred_i}"]["arg_1"]
        cont_g = args[f"gen_args_{gold_i}"]["arg_1"]
        # independent re-encoding, the way lm-eval's _encode_pair documents it
        n_sp = len(ctx) - len(ctx.rstrip())
        c, p, g = ctx[: len(ctx) - n_sp], ctx[len(ctx) - n_sp:] + cont_p, ctx[len(ctx) - n_sp:] + cont_g
        ctx_ids = lm.tokenizer(c, add_special_tokens=False)["input_ids"]
        seq_p = lm.tokenizer(c + p, add_special_tokens=False)["input_ids"]
        seq_g = lm.tokenizer(c + g, add_special_tokens=False)["input_ids"]
        assert seq_p[: len(ctx_ids)] == ctx_ids
        t = next(i for i, (x, y) in enumerate(zip(seq_p, seq_g)) if x != y)
        assert (pos, wrong, gold) == (t, seq_p[t], seq_g[t])
        ids = [r[0] for r in _sql(db, "SELECT token_id FROM token_relevance WHERE case_id = :c "
                                      "ORDER BY position", {"c": cid})]
        assert ids == seq_p[:t] and n_tokens == t
        with torch.no_grad():
            logits = lm.model(torch.tensor([ids])).logits[0, -1]
        assert delta == pytest.approx((logits[wrong] - logits[gold]).item(), abs=1e-4)
        (n_layer_rows,) = _sql(db, "SELECT count(*) FROM layer_relevance WHERE case_id = :c",
                               {"c": cid})[0]
        assert n_layer_rows == (n_layers + 1) * n_tokens


def test_second_identical_run_adds_nothing(attributed_run, monkeypatch):
    out, db, argv = attributed_run
    tables = ("runs", "task_results", "doc_outcomes", "cases", "token_relevance", "layer_relevance")
    before = {t: sorted(map(repr, _sql(db, f"SELECT * FROM {t}"))) for t in tables}
    calls = []
    import harness_xai.pipeline as pipeline

    real = pipeline.explain_objectives  # the engine's one forward+backward
    monkeypatch.setattr(pipeline, "explain_objectives",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    assert main(["run", *argv]) == 0
    after = {t: sorted(map(repr, _sql(db, f"SELECT * FROM {t}"))) for t in tables}
    assert calls == []  # zero attribution passes
    assert after == before


def _outcomes_match_samples_and_cases(db_url: str, task: str, samples: list[dict], metric: str | None):
    """doc_outcomes of ``task``: one row per logged sample with its doc_hash and ``metric`` value;
    correct = 0 exactly for the stored cases (attributed or skipped), per (doc_id, filter);
    ``metric`` None: no notion of correct (every row NULL). Returns the rows."""
    from harness_xai.store import run_sql

    rows = run_sql(db_url, "SELECT doc_id, doc_hash, filter, metric, value, correct FROM doc_outcomes "
                           "WHERE task = :t ORDER BY doc_id, filter", {"t": task})[1]
    (n_samples,) = run_sql(db_url, "SELECT n_samples FROM task_results WHERE task = :t", {"t": task})[1][0]
    assert len(rows) == n_samples == len(samples) > 0, task
    by_key = {(s["doc_id"], s["filter"]): s for s in samples}
    assert {(r[0], r[2]) for r in rows} == set(by_key), task
    cases = set(run_sql(db_url, "SELECT doc_id, filter FROM cases WHERE task = :t", {"t": task})[1])
    for doc_id, doc_hash, filter_, used, value, correct in rows:
        sample = by_key[(doc_id, filter_)]
        assert doc_hash == sample["doc_hash"], task
        if metric is None:
            assert correct is None and value is None, task
            continue
        assert used == metric and value == float(sample[metric]), task
        assert correct == (0 if sample[metric] == 0 else 1), task
        assert (correct == 0) == ((doc_id, filter_) in cases), (task, doc_id, filter_)
    assert {(r[0], r[2]) for r in rows if r[5] == 0 or metric is None} == cases, task
    # every case joins its outcome row by the full unit key
    (unjoined,) = run_sql(db_url, "SELECT count(*) FROM cases AS c LEFT JOIN doc_outcomes AS o ON o.run_id = "
                                  "c.run_id AND o.task = c.task AND o.doc_id = c.doc_id AND o.doc_hash = "
                                  "c.doc_hash AND o.filter = c.filter WHERE c.task = :t AND o.doc_id IS NULL",
                          {"t": task})[1][0]
    assert unjoined == 0, task
    return rows


def test_doc_outcomes_record_every_sample(attributed_run):
    """Correct and incorrect documents alike: one doc_outcomes row per logged sample; correct = 0
    exactly for the documents that became cases."""
    out, db, _ = attributed_run
    n_correct = 0
    for task, metric in (("xai_arith", "acc"), ("xai_kv", "acc"), ("xai_kv_gen", "exact_match")):
        # the module's identical second run (if it ran first) logged the same samples again
        paths = sorted(p for p in (out / "results").rglob("samples_*.jsonl")
                       if re.fullmatch(rf"samples_{task}_\d.*\.jsonl", p.name))
        samples = [json.loads(line) for line in paths[0].read_text().splitlines()]
        rows = _outcomes_match_samples_and_cases(f"duckdb:///{db}", task, samples, metric)
        n_correct += sum(r[5] == 1 for r in rows)
    assert n_correct > 0  # correct documents are recorded too


@pytest.fixture(scope="module")
def fixture_tasks(tmp_path_factory):
    """lm-eval's gsm8k (two filters) and arc_easy on local data, plus a perplexity task."""
    from lm_eval.tasks import TaskManager

    from fixtures.lm_eval_tasks import write_task, write_tasks

    root = tmp_path_factory.mktemp("fixture_tasks")
    write_tasks(root / "builtin")
    write_task(root / "own", "xp_rolling",
               {"output_type": "loglikelihood_rolling", "test_split": "test", "doc_to_text": "",
                "doc_to_target": "{{text}}", "metric_list": [{"metric": "word_perplexity"}]},
               {"test": [{"text": "A <b>short</b> text."}, {"text": "Another one."}]})
    return TaskManager(include_path=str(root), include_defaults=False)


def test_doc_outcomes_per_filter_acc_norm_and_perplexity(micro_model, fixture_tasks, tmp_path):
    """One row per (document, filter) for a two-filter generation task; --xai-metric
    fx_arc_easy=acc_norm decides correct for that task as it decides its cases (the others keep
    their primary metric); perplexity: correct NULL."""
    import harness_xai

    db = f"sqlite:///{tmp_path / 'o.sqlite'}"
    results = harness_xai.evaluate(
        model="hf", model_args=f"pretrained={micro_model},dtype=float32",
        tasks=["fx_gsm8k", "fx_arc_easy", "xp_rolling"], task_manager=fixture_tasks, device="cpu",
        limit=4, num_fewshot=0, gen_kwargs="max_gen_toks=8", attribute=True, db=db,
        metric="fx_arc_easy=acc_norm", progress=False)
    samples = results["samples"]
    gsm = _outcomes_match_samples_and_cases(db, "fx_gsm8k", samples["fx_gsm8k"], "exact_match")
    assert {r[2] for r in gsm} == {"strict-match", "flexible-extract"}
    assert len(gsm) == 2 * len({r[0] for r in gsm})
    # acc and acc_norm disagree on some document, so deciding by acc would break the match
    assert any(s["acc"] != s["acc_norm"] for s in samples["fx_arc_easy"])
    _outcomes_match_samples_and_cases(db, "fx_arc_easy", samples["fx_arc_easy"], "acc_norm")
    rolling = _outcomes_match_samples_and_cases(db, "xp_rolling", samples["xp_rolling"], None)
    assert {r[3] for r in rolling} == {"word_perplexity"}
    # the summary counts every task by its deciding metric, and the counts add up
    by_task, xai = results["xai"]["by_task"], results["xai"]
    assert {t: c["metric"] for t, c in by_task.items()} == {
        "fx_gsm8k": "exact_match", "fx_arc_easy": "acc_norm", "xp_rolling": "word_perplexity"}
    for task, counts in by_task.items():
        assert counts["samples"] == len(samples[task])
        n_cases = sum(1 for r in _outcomes_rows(db, task) if r[5] == 0)
        if task != "xp_rolling":
            assert counts["incorrect"] == counts["cases"] + sum(counts["skipped"].values()) == n_cases
    assert by_task["xp_rolling"]["unscored"] == {"metric_not_numeric": 2}
    assert by_task["xp_rolling"]["skipped"] == {"no-contrast:loglikelihood_rolling": 2}
    assert sum(c["cases"] + sum(c["skipped"].values()) for c in by_task.values()) == xai["incorrect"]
    assert sum(c["cases"] for c in by_task.values()) == xai["attributed"] + xai["left"]


def _outcomes_rows(db_url: str, task: str):
    from harness_xai.store import run_sql

    return run_sql(db_url, "SELECT doc_id, doc_hash, filter, metric, value, correct FROM doc_outcomes "
                           "WHERE task = :t", {"t": task})[1]


def test_python_api_evaluate(micro_model, tmp_path):
    import harness_xai
    from lm_eval.tasks import TaskManager

    db = tmp_path / "api.sqlite"
    results = harness_xai.evaluate(
        model="hf", model_args=f"pretrained={micro_model},dtype=float32", tasks=["xai_arith"],
        task_manager=TaskManager(include_path=str(TASKS)), device="cpu", limit=16,
        log_samples=False, attribute=True, db=f"sqlite:///{db}", method="cp-lrp", progress=False)
    assert "samples" not in results  # the caller did not ask for samples
    xai = results["xai"]
    from harness_xai.store import run_sql

    _, rows = run_sql(f"sqlite:///{db}", "SELECT count(*), min(method), max(method) FROM cases "
                                         "WHERE status = 'attributed'")
    assert rows[0][0] == xai["attributed"] and rows[0][1:] in ((None, None), ("cp-lrp", "cp-lrp"))
    assert xai["incorrect"] == round((1 - results["results"]["xai_arith"]["acc,none"]) * 16)


def _one_line_error(argv, capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("harness-xai: ")
    return err[0]


def test_bad_input_is_one_line_exit_2_nothing_written(micro_model, tmp_path, capsys):
    db = tmp_path / "never.duckdb"
    base = ["run", "--model", "hf", "--device", "cpu", "--include_path", str(TASKS),
            "--attribute", "--xai-db", f"duckdb:///{db}"]
    line = _one_line_error([*base, "--model_args", f"pretrained={tmp_path}/missing",
                            "--tasks", "xai_arith"], capsys)
    assert "model directory not found" in line and "missing" in line
    line = _one_line_error([*base, "--model_args", f"pretrained={micro_model}",
                            "--tasks", "xai_nosuchtask"], capsys)
    assert "unknown task" in line and "xai_nosuchtask" in line
    line = _one_line_error([*base, "--model_args", f"pretrained={micro_model}",
                            "--tasks", "xai_arith", "--xai-method", "attnlrpp"], capsys)
    assert "did you mean 'attnlrp'" in line
    line = _one_line_error(["run", "--model", "dummy", "--tasks", "xai_arith", "--attribute",
                            "--xai-db", f"duckdb:///{db}"], capsys)
    assert "--model hf" in line
    assert not db.exists()


def test_missing_model_dir_from_a_real_process(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "harness_xai", "run", "--model", "hf", "--model_args",
         f"pretrained={tmp_path}/nope", "--tasks", "xai_arith", "--device", "cpu", "--attribute",
         "--xai-db", f"duckdb:///{tmp_path}/x.duckdb"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "model directory not found" in proc.stderr
    assert not (tmp_path / "x.duckdb").exists()


def test_graph_faithfulness_states_reach_the_store(micro_model, tmp_path):
    """--xai-graph --xai-faithfulness with cp-lrp: every attributed case carries its internal
    states, heads, deletion curve and a pruned graph, and they agree with the engine."""
    from harness_xai import attribute, graph

    db = tmp_path / "x.duckdb"
    argv = [*_args(micro_model, tmp_path / "res", "xai_kv", limit=16), "--attribute",
            "--xai-db", f"duckdb:///{db}", "--xai-no-progress", "--xai-method", "cp-lrp",
            "--xai-graph", "--xai-graph-edges", "50", "--xai-faithfulness"]
    assert main(["run", *argv]) == 0
    ids = [r[0] for r in _sql(db, "SELECT id FROM cases WHERE status = 'attributed' ORDER BY id")]
    assert ids
    n_graphs = _sql(db, "SELECT count(*) FROM graphs")[0][0]
    n_curves = _sql(db, "SELECT count(DISTINCT case_id) FROM faithfulness")[0][0]
    assert n_graphs == n_curves == len(ids)
    assert _sql(db, "SELECT count(*) FROM cases WHERE status = 'attributed' AND aopc IS NULL")[0][0] == 0
    assert _sql(db, "SELECT max(n_edges) FROM graphs")[0][0] <= 50 * 2  # 2 blocks
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(micro_model, dtype=torch.float32)
    case_id = ids[0]
    token_ids = [r[0] for r in _sql(db, "SELECT token_id FROM token_relevance WHERE case_id = :c "
                                        "ORDER BY position", {"c": case_id})]
    wrong, gold = _sql(db, "SELECT wrong_token_id, gold_token_id FROM cases WHERE id = :c",
                       {"c": case_id})[0]
    ref = attribute(model, None, token_ids, wrong, gold, method="cp-lrp")
    for kind in ("mid", "attn", "mlp"):
        rows = _sql(db, "SELECT layer, position, relevance FROM state_relevance WHERE case_id = :c "
                        "AND kind = :k ORDER BY layer, position", {"c": case_id, "k": kind})
        got = torch.zeros_like(ref.states[kind])
        for layer, pos, rel in rows:
            got[layer - 1, pos] = rel
        torch.testing.assert_close(got, ref.states[kind], rtol=1e-5, atol=1e-6)
    heads = _sql(db, "SELECT layer, head, sum(relevance) FROM head_relevance WHERE case_id = :c "
                     "GROUP BY layer, head ORDER BY layer, head", {"c": case_id})
    want = ref.heads.sum(-1)  # (n_layers, n_heads)
    assert len(heads) == want.numel()
    for layer, head, total in heads:
        assert abs(total - float(want[layer - 1, head])) <= 1e-4 * max(1.0, abs(float(want[layer - 1, head])))
    g = graph(model, None, token_ids, wrong, gold, method="cp-lrp",
              prune={"mass": 0.85, "max_edges": 50}).to_record()
    stored = _sql(db, "SELECT count(*), sum(weight) FROM graph_edges WHERE case_id = :c", {"c": case_id})[0]
    assert stored[0] == len(g.weight)
    assert abs(stored[1] - float(g.weight.sum())) <= 1e-4 * max(1.0, abs(float(g.weight.sum())))


@pytest.mark.parametrize("method", ["grad-x-input", "integrated-gradients"])
def test_every_method_runs_from_the_cli(micro_model, tmp_path, method):
    """`--xai-method` reaches the engine: stored relevance equals harness_xai.attribute's."""
    from transformers import AutoModelForCausalLM

    from harness_xai import attribute

    db = tmp_path / "m.duckdb"
    argv = [*_args(micro_model, tmp_path / "res", "xai_arith", limit=12), "--attribute",
            "--xai-db", f"duckdb:///{db}", "--xai-no-progress", "--xai-method", method]
    assert main(["run", *argv]) == 0
    rows = _sql(db, "SELECT id, method, wrong_token_id, gold_token_id, method_params FROM cases "
                    "WHERE status = 'attributed' ORDER BY id")
    assert rows and {r[1] for r in rows} == {method}
    case_id, _, wrong, gold, params = rows[0]
    if method == "integrated-gradients":
        assert json.loads(params)["steps"] > 0
    tokens = _sql(db, "SELECT token_id, relevance FROM token_relevance WHERE case_id = :c "
                      "ORDER BY position", {"c": case_id})
    model = AutoModelForCausalLM.from_pretrained(micro_model, dtype=torch.float32)
    ref = attribute(model, None, [t for t, _ in tokens], wrong, gold, method=method)
    got = torch.tensor([r for _, r in tokens], dtype=torch.float32)
    torch.testing.assert_close(got, ref.tokens.float(), rtol=1e-4, atol=1e-5)


def test_bad_metric_choices_fail_before_any_request(micro_model, tmp_path, capsys, monkeypatch):
    """A --xai-metric the task lacks, a threshold on a binary metric, a task the run does not
    evaluate: one line, exit 2, no store, and lm-eval computed no request."""
    from lm_eval.models.huggingface import HFLM

    calls = []
    for name in ("loglikelihood", "generate_until"):
        real = getattr(HFLM, name)
        monkeypatch.setattr(HFLM, name, lambda self, *a, _real=real, **k: calls.append(1) or _real(self, *a, **k))
    db = tmp_path / "never.duckdb"
    base = ["run", "--model", "hf", "--model_args", f"pretrained={micro_model}", "--device", "cpu",
            "--include_path", str(TASKS), "--tasks", "xai_arith,xai_kv_gen", "--limit", "2",
            "--attribute", "--xai-db", f"duckdb:///{db}"]

    def _one_line_error(argv, capsys):  # the model is loaded first: transformers' own bar
        assert main(argv) == 2
        err = [e for e in capsys.readouterr().err.strip().splitlines()
               if not e.startswith("Loading weights")]
        assert len(err) == 1 and err[0].startswith("harness-xai: ")
        return err[0]

    line = _one_line_error([*base, "--xai-metric", "bleu"], capsys)
    assert "'bleu' is not a metric of task" in line and "supported:" in line
    line = _one_line_error([*base, "--xai-metric", "xai_kv_gen=acc"], capsys)
    assert "'acc'" in line and "'xai_kv_gen'" in line and "supported: exact_match" in line
    line = _one_line_error([*base, "--xai-threshold", "0.5"], capsys)
    assert "binary" in line and "--xai-threshold 0.5" in line
    line = _one_line_error([*base, "--xai-metric", "xai_nosuch=acc"], capsys)
    assert "'xai_nosuch'" in line and "tasks: xai_arith, xai_kv_gen" in line
    assert calls == [] and not db.exists()


def test_summary_line_names_tasks_metrics_and_counts():
    """The one-line summary names every task with its deciding metric and counts; asdict of the
    summary is plain JSON (results["xai"])."""
    import harness_xai.pipeline as pipeline

    summary = pipeline.RunSummary(db="duckdb:///x", run_id=1, method="attnlrp", incorrect=3,
                                  attributed=2, skipped={"near-tie": 1},
                                  by_task={"t1": {"metric": "acc", "samples": 5, "incorrect": 3,
                                                  "cases": 2, "skipped": {"near-tie": 1},
                                                  "unscored": {"no_threshold": 1}}})
    line = summary.line()
    assert "\n" not in line and "t1 acc: 3 incorrect = 2 cases + 1 skipped, 1 unscored" in line
    assert json.loads(json.dumps(dataclasses.asdict(summary))) == dataclasses.asdict(summary)


# -- lm-eval's own generations instead of regenerations (issue #15) -----------------------------
GEN_TASKS = ("fx_gsm8k", "xai_kv_gen", "xai_kv_gen_stop")


@pytest.fixture(scope="module")
def generation_capture(micro_model, tmp_path_factory):
    """A GSM8K-like fixture (lm-eval's gsm8k.yaml, 5-shot, "Question:" stop sequences, regex
    filters), the bundled generative task and a variant of it that stops at the first "3" (rows
    of one batch stop at different steps), batched, under ``capture_evaluate``."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    from fixtures.lm_eval_tasks import write_tasks
    from harness_xai.lmeval_hook.evaluate import capture_evaluate

    root = write_tasks(tmp_path_factory.mktemp("gen_capture"))
    (root / "xai_kv_gen_stop.yaml").write_text(
        f"include: {TASKS / 'xai_kv_gen' / 'xai_kv_gen.yaml'}\ntask: xai_kv_gen_stop\n"
        "generation_kwargs: {until: ['3'], do_sample: false}\n")
    tm = TaskManager(include_path=[str(root), str(TASKS)], include_defaults=False)
    with capture_evaluate() as captured:
        results = lm_eval.simple_evaluate(
            model="hf", model_args=f"pretrained={micro_model},dtype=float32",
            tasks=list(GEN_TASKS), task_manager=tm, device="cpu", batch_size=4, limit=10,
            log_samples=True, gen_kwargs="max_gen_toks=24")
    return results, captured


def test_recorded_generations_are_the_regenerated_ids(generation_capture):
    """Oracle: for every logged generation, the recorded ids (cut where the row alone would have
    stopped) equal a one-document regeneration's exact context ids, generated ids and text."""
    from harness_xai.contrast.generation import regenerate
    from harness_xai.lmeval_hook.generations import eos_ids, exact_generation

    results, captured = generation_capture
    lm = captured.lm
    assert "_model_generate" not in vars(lm) and "add_partial" not in vars(lm.cache_hook)  # restored
    compared = cut = 0
    for task in GEN_TASKS:
        for sample in results["samples"][task]:
            context, gen_kwargs = sample["arguments"][0]
            raw = sample["resps"][0][0]
            records = captured.prompts[task][context].generations
            assert records and all(r.context == context for r in records)
            found = exact_generation(lm, records, context, raw)
            assert found is not None, (task, sample["doc_id"])
            cut += any(len(r.ids(lm.tokenizer, eos_ids(lm))) < len(r.generated) for r in records)
            again = regenerate(lm, context, gen_kwargs)
            if again.text != raw:  # a batch-dependent numerical flip: nothing to compare
                continue
            assert found == (again.context_ids, again.ids, again.text), (task, sample["doc_id"])
            compared += 1
    assert compared >= 20 and cut >= 3  # the cut after a stop sequence was exercised


def test_recorded_generation_must_decode_to_the_logged_response(generation_capture):
    """A record whose ids do not post-process to the logged response (or another context's) is
    refused: the caller regenerates, and skips ``regeneration-mismatch`` if that differs too."""
    import dataclasses as dc

    import numpy as np

    from harness_xai.lmeval_hook.generations import exact_generation

    results, captured = generation_capture
    sample = results["samples"]["xai_kv_gen"][0]
    context, raw = sample["arguments"][0][0], sample["resps"][0][0]
    (record, *_) = captured.generations[context]
    lm = captured.lm
    assert exact_generation(lm, [record], context, raw) is not None
    assert exact_generation(lm, [record], context + " ", raw) is None  # another context
    assert exact_generation(lm, [record], context, raw + "x") is None  # another response
    other = lm.tok_encode(" zebra quokka" * 8, add_special_tokens=False)  # ids that say otherwise
    tampered = dc.replace(record, generated=np.asarray(other, dtype=np.int64))
    assert exact_generation(lm, [tampered], context, raw) is None


def test_cases_from_recorded_generations_need_no_regeneration(generation_capture, monkeypatch):
    """Cases built from the recorded ids are the cases a regeneration builds, without one model
    call; without records (e.g. lm-eval's request cache) the regeneration fallback runs."""
    import copy as cp

    import harness_xai.contrast.generation as generation
    from harness_xai.contrast import cases_for_task

    results, captured = generation_capture
    calls = []
    real = generation.regenerate

    def counted(*args, **kwargs):
        calls.append(args[1])
        return real(*args, **kwargs)

    monkeypatch.setattr(generation, "regenerate", counted)
    n_pending = 0
    for task in GEN_TASKS:
        samples, obj = results["samples"][task], captured.tasks[task]
        calls.clear()
        recorded = list(cases_for_task(task, obj, samples, captured.lm, prompts=captured.prompts[task]))
        assert calls == []
        bare = {ctx: cp.copy(rec) for ctx, rec in captured.prompts[task].items()}
        for rec in bare.values():
            rec.generations = []
        regenerated = list(cases_for_task(task, obj, samples, captured.lm, prompts=bare))
        assert calls and len(calls) == len(set(calls))  # one regeneration per failed document
        assert [dataclasses.asdict(c) for c in recorded] == [dataclasses.asdict(c) for c in regenerated]
        n_pending += sum(c.status == "pending" for c in recorded)
    assert n_pending >= 1
