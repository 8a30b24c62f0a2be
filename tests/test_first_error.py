"""First-error rollouts wired into the run (harness_xai/contrast/first_error.py, issue #14 item 3).

Oracles: a planted task whose only correct answer is the rollout at a known (position,
alternative), computed here independently with the same model, must be stored as the case at
exactly that position with Δ = logit[model token] − logit[alternative] > 0 (recomputed); every
incorrect sample of real lm-eval generative configs run through ``harness-xai run --xai-rollouts``
is a case or a skip with a reason, with its rollouts stored; code tasks are only rolled out when
the run may execute code. Bad flags: one line, exit 2, nothing written, no request computed."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import torch

from harness_xai.cli import main
from harness_xai.config import RunConfig
from harness_xai.errors import UserError

TASKS = Path(__file__).resolve().parents[1] / "tasks"
REASON = re.compile(r"^[a-z0-9_\-]+(:[A-Za-z0-9_@.\-]+)?$")
MAX_GEN = 6
PROGRESS = re.compile(r"^(Loading weights|Generating \w+ split)|(it|examples)/s\]\s*$")


def _sql(db: Path, query: str, params: dict | None = None):
    from harness_xai.store import run_sql

    return run_sql(f"duckdb:///{db}", query, params)[1]


def _one_line_error(argv, capsys) -> str:
    assert main(argv) == 2
    err = [e for e in capsys.readouterr().err.strip().splitlines()  # less others' progress bars
           if e.strip() and not PROGRESS.search(e)]  # (transformers' weights, datasets' splits)
    assert len(err) == 1 and err[0].startswith("harness-xai: "), err
    return err[0]


def test_bad_rollout_settings_are_refused_by_the_python_api():
    for kwargs, words in (({"rollouts": -1}, "--xai-rollouts -1"),
                          ({"rollouts": "many"}, "whole number"),
                          ({"rollout_tokens": 8}, "add --xai-rollouts N"),
                          ({"rollouts": 4, "rollout_tokens": 0}, "--xai-rollout-tokens 0"),
                          ({"rollouts": 4, "rollout_tokens": -2}, "1 or more")):
        with pytest.raises(UserError, match=re.escape(words)) as err:
            RunConfig.create(**kwargs)
        assert "\n" not in str(err.value)
    config = RunConfig.create(rollouts="12", rollout_tokens=16)
    assert (config.rollouts, config.rollout_tokens) == (12, 16)
    assert config.identity()["rollouts"] == 12 and "rollouts" not in RunConfig.create().identity()


def test_bad_rollout_flags_fail_before_anything_runs(tmp_path, capsys):
    db = tmp_path / "never.duckdb"
    base = ["run", "--model", "hf", "--model_args", f"pretrained={tmp_path}", "--tasks", "xai_kv_gen",
            "--include_path", str(TASKS), "--attribute", "--xai-db", f"duckdb:///{db}"]
    line = _one_line_error([*base, "--xai-rollouts", "-3"], capsys)
    assert "--xai-rollouts -3" in line and "0 or more" in line
    line = _one_line_error([*base, "--xai-rollout-tokens", "16"], capsys)
    assert "--xai-rollout-tokens 16" in line and "--xai-rollouts N" in line
    line = _one_line_error([*base, "--xai-rollouts", "4", "--xai-rollout-tokens", "-1"], capsys)
    assert "--xai-rollout-tokens -1" in line
    assert not db.exists()


def test_rollouts_on_non_generative_tasks_fail_before_any_request(micro_model, tmp_path, capsys,
                                                                   monkeypatch):
    from lm_eval.models.huggingface import HFLM

    calls = []
    for name in ("loglikelihood", "generate_until"):
        real = getattr(HFLM, name)
        monkeypatch.setattr(HFLM, name, lambda self, *a, _real=real, **k: calls.append(1) or _real(self, *a, **k))
    db = tmp_path / "never.duckdb"
    line = _one_line_error(["run", "--model", "hf", "--model_args", f"pretrained={micro_model}",
                            "--device", "cpu", "--include_path", str(TASKS), "--tasks",
                            "xai_arith,xai_kv", "--limit", "2", "--attribute", "--xai-db",
                            f"duckdb:///{db}", "--xai-rollouts", "8"], capsys)
    assert "no task of this run is generate_until" in line
    assert "xai_arith (multiple_choice)" in line and "--xai-rollouts" in line
    assert calls == [] and not db.exists()


# --- the planted oracle ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def planted(micro_model, tmp_path_factory):
    """A generate_until task whose one doc accepts exactly the rollout at (position p, the model's
    second choice there): computed with the model, lm-eval's own HFLM and an independent greedy
    loop, then run through `harness-xai run --attribute --xai-rollouts`."""
    from lm_eval.models.huggingface import HFLM
    from lm_eval.models.utils import postprocess_generated_text

    from fixtures.lm_eval_tasks import write_task
    from harness_xai.contrast.generation import regenerate

    lm = HFLM(pretrained=str(micro_model), device="cpu", dtype="float32", batch_size=4)
    gen_kwargs = {"until": ["\n\n\n"], "max_gen_toks": MAX_GEN, "do_sample": False}
    eos = lm.tok_decode(lm.eot_token_id, skip_special_tokens=False)
    prompts = [json.loads(line)["prompt"] for line in
               (TASKS / "xai_kv_gen" / "test.jsonl").read_text().splitlines()[:8]]
    for prompt in prompts:
        gen = regenerate(lm, prompt, dict(gen_kwargs))
        if gen is not None and len(gen.ids) == MAX_GEN and lm.eot_token_id not in gen.ids:
            break
    else:
        pytest.fail("no prompt with a full-length generation")
    with torch.no_grad():
        logits = lm.model(torch.tensor([gen.context_ids + gen.ids])).logits[0].float()
    logits = logits[len(gen.context_ids) - 1:-1]  # (MAX_GEN, vocab): position t's logits
    ranked = logits.argsort(dim=-1, descending=True)
    assert ranked[:, 0].tolist() == gen.ids  # greedy
    p = MAX_GEN // 2
    alternative = int(ranked[p, 1])
    seq, cont = gen.context_ids + gen.ids[:p] + [alternative], []
    with torch.no_grad():  # plain greedy loop (no cache, no batching)
        for _ in range(MAX_GEN - p - 1):
            nxt = int(lm.model(torch.tensor([seq])).logits[0, -1].argmax())
            if nxt == lm.eot_token_id:
                break
            cont.append(nxt)
            seq.append(nxt)
    accept = postprocess_generated_text(
        lm.tokenizer.decode(gen.ids[:p] + [alternative] + cont), ["\n\n\n", eos], None)
    assert accept != gen.text
    config = {"output_type": "generate_until", "test_split": "test", "doc_to_text": "{{prompt}}",
              "doc_to_target": "accept", "generation_kwargs": gen_kwargs,
              "metric_list": [{"metric": "exact_match", "aggregation": "mean",
                               "higher_is_better": True}]}
    folder = write_task(tmp_path_factory.mktemp("planted"), "xp_planted", config,
                        {"test": [{"prompt": prompt, "accept": accept}]})
    db = folder / "x.duckdb"
    argv = ["run", "--model", "hf", "--model_args", f"pretrained={micro_model},dtype=float32",
            "--device", "cpu", "--batch_size", "4", "--include_path", str(folder), "--tasks",
            "xp_planted", "--attribute", "--xai-db", f"duckdb:///{db}", "--xai-no-progress",
            "--xai-rollouts", str(4 * MAX_GEN)]  # every position's 4 alternatives
    assert main(argv) == 0
    return db, gen, p, alternative, logits, accept


def test_planted_first_error_is_found_at_its_position(planted):
    db, gen, p, alternative, logits, accept = planted
    (row,) = _sql(db, "SELECT id, status, position, wrong_token_id, gold_token_id, delta, n_tokens, "
                      "method_params FROM cases")
    case_id, status, position, wrong, gold, delta, n_tokens, params = row
    built = json.loads(params)["contrast"]
    assert status == "attributed" and built["rule"] == "first-error:rollout"
    assert built["generated_prefix"] == p and built["first_error"]["position"] == p
    assert position == n_tokens == len(gen.context_ids) + p  # input: prompt + the model's prefix
    assert (wrong, gold) == (gen.ids[p], alternative)
    want = float(logits[p, gen.ids[p]] - logits[p, alternative])
    assert delta > 0 and delta == pytest.approx(want, rel=1e-4, abs=1e-5)
    tokens = [t for (t,) in _sql(db, "SELECT token_id FROM token_relevance WHERE case_id = :c "
                                     "ORDER BY position", {"c": case_id})]
    assert tokens == gen.context_ids + gen.ids[:p]
    rollouts = _sql(db, "SELECT position, alternative_token_id, rank, correct, text FROM rollouts "
                        "WHERE case_id = :c ORDER BY rollout", {"c": case_id})
    hits = [r for r in rollouts if r[3] == 1]
    assert hits == [(p, alternative, 1, 1, accept)]
    before = [r for r in rollouts if r[0] < p]
    assert {r[0] for r in before} == set(range(p)) and len(before) == 4 * p  # all tried, all wrong


# --- real generative configs through the CLI ------------------------------------------------------

GENERATIVE = ("fx_gsm8k", "fx_ifeval", "fx_humaneval", "fx_minerva_math_algebra")


@pytest.fixture(scope="module")
def rollout_run(micro_model, tmp_path_factory):
    from fixtures.generative_run import task_manager
    from fixtures.lm_eval_tasks import write_tasks

    folder = tmp_path_factory.mktemp("rollout_tasks")
    task_manager(folder)  # GENERATIVE_TASKS (+ offline code_eval and punkt assets)
    write_tasks(folder)  # TASKS (fx_gsm8k)
    db = folder / "x.duckdb"
    out = folder / "out"
    os.environ["HF_ALLOW_CODE_EVAL"] = "1"
    argv = ["run", "--model", "hf", "--model_args", f"pretrained={micro_model},dtype=float32",
            "--device", "cpu", "--batch_size", "4", "--include_path", str(folder), "--tasks",
            ",".join(GENERATIVE), "--limit", "3", "--gen_kwargs", "max_gen_toks=12",
            "--confirm_run_unsafe_code", "--output_path", str(out), "--log_samples",
            "--attribute", "--xai-db", f"duckdb:///{db}", "--xai-no-progress",
            "--xai-rollouts", "6", "--xai-rollout-tokens", "8"]
    assert main(argv) == 0
    return db


def test_every_incorrect_generation_has_a_case_or_a_reasoned_skip_and_its_rollouts(rollout_run):
    db = rollout_run
    incorrect = _sql(db, "SELECT task, doc_id, filter FROM doc_outcomes WHERE correct = 0 "
                         "ORDER BY 1, 2, 3")
    cases = _sql(db, "SELECT task, doc_id, filter, status, skip_reason, delta, method_params, id "
                     "FROM cases ORDER BY 1, 2, 3")
    assert [c[:3] for c in cases] == [tuple(r) for r in incorrect] and incorrect
    n_rolled = 0
    for task, _, _, status, reason, delta, params, case_id in cases:
        built = json.loads(params)["contrast"]
        if status == "skipped":
            assert reason and REASON.match(reason), reason
            assert not reason.startswith("no-reference-answer")  # rollouts were tried or said why
        first = built["first_error"]
        n = _sql(db, "SELECT count(*), max(n_tokens) FROM rollouts WHERE case_id = :c",
                 {"c": case_id})[0]
        if built.get("rule") == "first-error:rollout":
            assert status == "attributed" and delta > 0 and first["found"]
        else:
            assert first["found"] is False and first["fallback"] == f"first-error-fallback:{first['reason']}"
            assert first["reason"] in ("no_flip_within_budget", "empty_generation",
                                       "regeneration-mismatch", "scorer-disagrees"), first
        if n[0]:
            n_rolled += 1
            assert n[0] <= 6 and n[1] <= 8  # --xai-rollouts 6, --xai-rollout-tokens 8
    assert n_rolled >= len(GENERATIVE) - 1
    tasks_rolled = {t for (t,) in _sql(db, "SELECT DISTINCT c.task FROM rollouts r JOIN cases c "
                                           "ON c.id = r.case_id")}
    assert {"fx_ifeval", "fx_humaneval"} <= tasks_rolled  # reference-free metrics are rolled out


def test_code_tasks_roll_out_only_when_the_run_may_execute_code(generative_run):
    """Without lm-eval's confirm_run_unsafe_code / HF_ALLOW_CODE_EVAL no rollout runs model code:
    the case keeps its reference-solution contrast and says why no rollout ran; with them the unit
    tests score every rollout."""
    from harness_xai.contrast import task_cases

    name = "fx_humaneval"
    task, samples, lm = generative_run.tasks[name], generative_run.samples[name], generative_run.lm
    refused = task_cases(name, task, samples, lm, rollouts=4, allow_code=False)
    assert refused.cases
    for case in refused.cases:
        assert case.rollouts == ()
        assert case.built["contrast"]["first_error"]["fallback"] == \
            "first-error-fallback:code-eval-not-allowed"
        assert case.status == "pending" or case.skip_reason in ("generation-ended",
                                                                "gold-answer-is-prefix")
    allowed = task_cases(name, task, samples, lm, rollouts=4, rollout_tokens=4, allow_code=True)
    assert sum(len(c.rollouts) for c in allowed.cases) > 0
    for case in allowed.cases:
        assert len(case.rollouts) <= 4 and all(r.n_tokens <= 4 for r in case.rollouts)
        assert case.status == "pending" or case.skip_reason in ("generation-ended",
                                                                "gold-answer-is-prefix")
