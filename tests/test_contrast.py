"""Contrast cases on lm-eval's own built-in task configurations (tests/fixtures), zoo micro model.

Runs (module fixtures, a few docs each): 0-shot; 2-shot with a BOS-adding tokenizer; chat template
+ multi-turn few-shot + system instruction; left truncation to max_length=64 with a chat template
and single-turn few-shot; degenerate tasks.
Every check recomputes what lm-eval scored independently where it can.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch

from fixtures.lm_eval_tasks import TASKS, write_task, write_tasks
from harness_xai.contrast import cases_for_task
from harness_xai.records import PENDING, SEGMENTS, SKIPPED

BUNDLED = Path(__file__).resolve().parents[1] / "tasks"
GEN_KWARGS = "max_gen_toks=24"
SYSTEM = "You are a <careful> “assistant” & judge."
MC_LIKE = ("multiple_choice", "loglikelihood")
CHAT_TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
                 "{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@dataclass
class Run:
    results: dict
    captured: object
    _cases: dict = field(default_factory=dict)

    @property
    def lm(self):
        return self.captured.lm

    def samples(self, task: str) -> list[dict]:
        return self.results["samples"][task]

    def cases(self, task: str, contrast: str = "token", metric: str | None = None, prompts=True):
        key = (task, contrast, metric, prompts)
        if key not in self._cases:
            recorded = self.captured.prompts.get(task) if prompts else None
            self._cases[key] = list(cases_for_task(task, self.captured.tasks[task],
                                                   self.samples(task), self.lm, metric, contrast,
                                                   recorded))
        return self._cases[key]

    def all_cases(self):
        return [(t, c) for t in self.captured.tasks for c in self.cases(t)]


def _evaluate(model: Path, tm, tasks, model_args: str = "", limit: int = 3, **kwargs) -> Run:
    import lm_eval

    from harness_xai.lmeval_hook.evaluate import capture_evaluate

    with capture_evaluate() as captured:
        results = lm_eval.simple_evaluate(
            model="hf", model_args=f"pretrained={model},dtype=float32{model_args}", tasks=tasks,
            task_manager=tm, device="cpu", batch_size=4, limit=limit, log_samples=True,
            gen_kwargs=GEN_KWARGS, **kwargs)
    return Run(results, captured)


# --- degenerate tasks -------------------------------------------------------------------------

MC = {"output_type": "multiple_choice", "test_split": "test", "doc_to_text": "{{q}}",
      "doc_to_choice": "{{choices}}", "doc_to_target": "{{gold}}",
      "metric_list": [{"metric": "acc"}, {"metric": "acc_mutual_info"}]}
LONG = "7 8 9 10 11 12 13 14 15 16"
DEGENERATE_ROWS = [
    {"q": "Pick <one> “now”:", "choices": ["same", "same"], "gold": 1},  # identical choices
    {"q": "Count:", "choices": ["7", LONG], "gold": 1},  # prefix choices
    {"q": "Which?", "choices": ["x", "y"], "gold": 5},  # out-of-range gold
    {"q": "Which?", "choices": ["x", "y"], "gold": "zzz"},  # gold not among the choices
    {"q": "", "choices": ["a", "b"], "gold": 0},  # empty context (one of the pair is wrong)
    {"q": "", "choices": ["a", "b"], "gold": 1},
    {"q": "", "choices": ["the cat", "the dog"], "gold": 0},  # empty context, shared prefix
    {"q": "", "choices": ["the cat", "the dog"], "gold": 1},
]
MULTI_GOLD_ROWS = [{"q": f"Q{i}: pick «a» or 'b' <br>", "choices": ["a", "b", "c", "d"],
                    "gold": golds}
                   for i, golds in enumerate([[1, 2], [0, 3], [2, 3], [0, 1]] * 2)]


@pytest.fixture(scope="module")
def task_manager(tmp_path_factory):
    from lm_eval.tasks import TaskManager

    root = tmp_path_factory.mktemp("tasks")
    write_tasks(root / "builtin")
    write_task(root / "degenerate", "xd_mc", MC, {"test": DEGENERATE_ROWS})
    write_task(root / "degenerate", "xd_multi", {**MC, "metric_list": [{"metric": "acc"}]},
               {"test": MULTI_GOLD_ROWS})
    write_task(root / "degenerate", "xd_rolling",
               {"output_type": "loglikelihood_rolling", "test_split": "test", "doc_to_text": "",
                "doc_to_target": "{{text}}", "metric_list": [{"metric": "word_perplexity"}]},
               {"test": [{"text": "A <b>short</b> “text”."}, {"text": "Another one."}]})
    return TaskManager(include_path=[str(root), str(BUNDLED)], include_defaults=False)


@pytest.fixture(scope="module")
def bos_chat_model(micro_model, tmp_path_factory) -> Path:
    """The micro model with a tokenizer that prepends BOS and has a chat template."""
    from tokenizers import processors
    from transformers import AutoTokenizer

    path = tmp_path_factory.mktemp("bos") / "model"
    shutil.copytree(micro_model, path)
    tok = AutoTokenizer.from_pretrained(path)
    bos = tok.bos_token
    tok.backend_tokenizer.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A $B",
                                      special_tokens=[(bos, tok.bos_token_id)])])
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def zero_shot(micro_model, task_manager) -> Run:
    return _evaluate(micro_model, task_manager, list(TASKS), num_fewshot=0)


@pytest.fixture(scope="module")
def few_shot(bos_chat_model, task_manager) -> Run:
    return _evaluate(bos_chat_model, task_manager, list(TASKS), num_fewshot=2)


@pytest.fixture(scope="module")
def chat(bos_chat_model, task_manager) -> Run:
    return _evaluate(bos_chat_model, task_manager, list(TASKS), num_fewshot=1,
                     apply_chat_template=True, fewshot_as_multiturn=True,
                     system_instruction=SYSTEM)


@pytest.fixture(scope="module")
def truncated(bos_chat_model, task_manager) -> Run:
    """max_length=64 (BOS and template start cut off), chat template with single-turn few-shot."""
    tasks = [t for t in TASKS if t != "fx_truthfulqa_mc1"]
    return _evaluate(bos_chat_model, task_manager, tasks, model_args=",max_length=64",
                     num_fewshot=1, apply_chat_template=True, fewshot_as_multiturn=False)


@pytest.fixture(scope="module")
def degenerate(micro_model, task_manager) -> Run:
    return _evaluate(micro_model, task_manager, ["xd_mc", "xd_multi", "xd_rolling", "xai_kv_gen"],
                     limit=8)


RUNS = ("zero_shot", "few_shot", "chat", "truncated")


def _incorrect(run: Run, task: str) -> list[tuple[int, str]]:
    kind = run.captured.tasks[task].OUTPUT_TYPE
    metric = {"generate_until": "exact_match"}.get(kind, "acc")
    return sorted((s["doc_id"], s["filter"]) for s in run.samples(task) if s[metric] == 0)


# --- every run --------------------------------------------------------------------------------

@pytest.mark.parametrize("name", RUNS)
def test_one_case_per_incorrect_sample_with_exact_loglikelihoods(name, request):
    run: Run = request.getfixturevalue(name)
    n_cases = 0
    for task in run.captured.tasks:
        cases = run.cases(task)
        kind = run.captured.tasks[task].OUTPUT_TYPE
        assert sorted((c.doc_id, c.filter) for c in cases) == _incorrect(run, task), task
        for case in cases:
            n_cases += 1
            assert case.output_type == kind
            # token unless the decision-faithful rule replaced it by the decision (multiple choice)
            assert case.contrast == "token" or (
                kind == "multiple_choice" and case.built["contrast"]["rule"] == "decision-sequence")
            assert case.status in (PENDING, SKIPPED)
            if kind in MC_LIKE:  # recomputed through the model, compared to lm-eval's log
                assert case.ll_error is not None and case.ll_error <= 1e-4, (task, case.doc_id)
            if case.status == PENDING:
                n = len(case.token_ids)
                assert n > 0 and case.position is not None
                assert len(case.segments) == len(case.segment_index) == n
                assert set(case.segments) <= set(SEGMENTS)
                for label, index in zip(case.segments, case.segment_index):
                    if label == "option":
                        assert index is not None
                    elif label != "fewshot":
                        assert index is None
                if case.contrast == "token" or case.wrong_token_id is not None:
                    assert case.wrong_token_id != case.gold_token_id
    assert n_cases >= 10


def test_token_contrast_is_what_lm_eval_scored(zero_shot):
    """Independent of the HFLM methods: re-encode the way lm-eval documents it, score with a
    plain forward, compare with the logged log-likelihoods and the case's tokens."""
    run, tok = zero_shot, zero_shot.lm.tokenizer
    model = run.lm.model
    checked = 0
    for task in ("fx_arc_easy", "fx_hellaswag", "fx_mmlu_anatomy", "fx_truthfulqa_mc1"):
        samples = {s["doc_id"]: s for s in run.samples(task)}
        for case in run.cases(task):
            if case.status != PENDING or case.contrast != "token":
                continue
            sample = samples[case.doc_id]
            seqs = []
            for index in (case.pred_index, case.gold_index):
                ctx, cont = sample["arguments"][index]
                n_sp = len(ctx) - len(ctx.rstrip())
                c_ids = tok(ctx[: len(ctx) - n_sp], add_special_tokens=False)["input_ids"]
                whole = tok(ctx + cont, add_special_tokens=False)["input_ids"]
                ids = c_ids + whole[len(c_ids):]
                with torch.no_grad():
                    logp = torch.log_softmax(model(torch.tensor([ids[:-1]])).logits[0], -1)
                n_cont = len(ids) - len(c_ids)
                ll = logp[-n_cont:].gather(1, torch.tensor(ids[len(c_ids):])[:, None]).sum()
                assert float(ll) == pytest.approx(sample["filtered_resps"][index][0], abs=1e-4)
                seqs.append(ids)
            t = next(i for i, (a, b) in enumerate(zip(*seqs)) if a != b)
            assert list(case.token_ids) == seqs[0][:t] and case.position == t
            assert (case.wrong_token_id, case.gold_token_id) == (seqs[0][t], seqs[1][t])
            checked += 1
    assert checked >= 3  # the others explain the decision (test_every_multiple_choice_case_…)


# --- segments ---------------------------------------------------------------------------------

def _text(run: Run, case, label: str, index=None) -> str:
    ids = [t for t, s, i in zip(case.token_ids, case.segments, case.segment_index)
           if s == label and (index is None or i == index)]
    return run.lm.tokenizer.decode(ids)


def test_segments_zero_shot_question_options_description(zero_shot):
    run = zero_shot
    for task, case in run.all_cases():
        if case.status == PENDING and run.captured.tasks[task].OUTPUT_TYPE != "generate_until":
            assert "fewshot" not in case.segments and "generated" not in case.segments
    mmlu = [c for c in run.cases("fx_mmlu_anatomy") if c.status == PENDING]
    assert mmlu
    docs = {s["doc_id"]: s["doc"] for s in run.samples("fx_mmlu_anatomy")}
    for case in mmlu:
        doc = docs[case.doc_id]
        assert case.segments[0] == "instruction"  # the task description comes first
        assert "multiple choice questions" in _text(run, case, "instruction")
        options = [i for s, i in zip(case.segments, case.segment_index) if s == "option"]
        assert sorted(set(options)) == [0, 1, 2, 3] and options == sorted(options)
        for i, choice in enumerate(doc["choices"]):
            assert _text(run, case, "option", i).strip() == f"{'ABCD'[i]}. {choice}"
        assert doc["question"].strip() in _text(run, case, "question")
    arc = [c for c in run.cases("fx_arc_easy") if c.status == PENDING]
    docs = {s["doc_id"]: s["doc"] for s in run.samples("fx_arc_easy")}
    for case in arc:
        assert set(case.segments) <= {"question", "continuation"}
        assert f"Question: {docs[case.doc_id]['question']}\nAnswer:" == _text(run, case, "question")


def test_segments_few_shot_and_bos(few_shot):
    run = few_shot
    bos = run.lm.tokenizer.bos_token_id
    seen_fewshot = 0
    for task, case in run.all_cases():
        if case.status != PENDING:
            continue
        assert case.token_ids[0] == bos and case.segments[0] == "special"
        if task == "fx_truthfulqa_mc1" or "fewshot" not in case.segments:
            continue
        seen_fewshot += 1
        demos = [i for s, i in zip(case.segments, case.segment_index) if s == "fewshot"]
        assert sorted(set(demos)) == [0, 1] and demos == sorted(demos)
        first_question = case.segments.index("question")
        assert max(k for k, s in enumerate(case.segments) if s == "fewshot") < first_question
    assert seen_fewshot >= 5
    # the demos are the documents lm-eval sampled for that context
    task = run.captured.tasks["fx_arc_easy"]
    for case in run.cases("fx_arc_easy"):
        record = run.captured.prompts["fx_arc_easy"][case.prompt]
        if case.status == PENDING:
            for j, fs_doc in enumerate(record.fewshot_docs):
                assert task.doc_to_text(fs_doc) in _text(run, case, "fewshot", j)


def test_segments_chat_template(chat):
    run = chat
    markup = 0
    for task, case in run.all_cases():
        if case.status != PENDING:
            continue
        assert case.segments[0] == "special"  # the template's BOS
        assert _text(run, case, "instruction").startswith(SYSTEM)
        special = _text(run, case, "special")
        assert "<|im_start|>" in special and "<|im_start|>" not in _text(run, case, "question")
        markup += 1
        if run.captured.tasks[task].OUTPUT_TYPE == "generate_until":
            tail = case.segments[case.segments.index("question"):]
            assert "generated" in tail or case.built["contrast"]["generated_prefix"] == 0
    assert markup >= 8


def test_segments_without_recorded_prompts_fall_back(few_shot):
    run = few_shot
    cases = run.cases("fx_hellaswag", prompts=False)
    recorded = {c.doc_id: c for c in run.cases("fx_hellaswag")}
    for case in cases:
        if case.status != PENDING:
            continue
        labels = dict(zip(range(len(case.segments)), case.segments))
        truth = recorded[case.doc_id]
        for k, label in labels.items():
            if truth.segments[k] == "fewshot":
                assert label == "fewshot" and case.segment_index[k] is None
            else:
                assert label == truth.segments[k]


# --- per output type --------------------------------------------------------------------------

def test_winogrande_first_differing_prediction(zero_shot, chat):
    checked = 0
    for run in (zero_shot, chat):
        samples = {s["doc_id"]: s for s in run.samples("fx_winogrande")}
        for case in run.cases("fx_winogrande"):
            assert case.status == PENDING  # no skip: a near-tie never decides a winogrande doc here
            if case.built["contrast"]["rule"] == "decision-sequence":
                assert case.built["contrast"]["replaced"] in ("same-predictions-both-contexts",
                                                             "token-disagrees")
                continue
            assert case.built["contrast"]["rule"] == "first-differing-prediction"
            j = case.built["contrast"]["continuation_position"]
            argmax = []
            for index in (case.pred_index, case.gold_index):
                ctx, cont = samples[case.doc_id]["arguments"][index]
                c_ids, cont_ids = run.lm._encode_pair(ctx, cont)
                ids = c_ids + cont_ids[:j]
                if index == case.pred_index:
                    assert list(case.token_ids) == ids
                with torch.no_grad():
                    argmax.append(int(run.lm.model(torch.tensor([ids])).logits[0, -1].argmax()))
            assert argmax == [case.wrong_token_id, case.gold_token_id]
            doc = samples[case.doc_id]["doc"]
            assert _text(run, case, "option").strip() == doc[f"option{case.pred_index + 1}"]
            checked += 1
    assert checked >= 1


def test_lambada_first_non_greedy_target_token(zero_shot, truncated):
    for run in (zero_shot, truncated):
        samples = {s["doc_id"]: s for s in run.samples("fx_lambada_openai")}
        cases = run.cases("fx_lambada_openai")
        assert cases
        for case in cases:
            gap = case.built["contrast"]["greedy_gap"]  # log p(greedy) − log p(target) at j
            assert case.status == (PENDING if gap >= 1e-4 else SKIPPED)
            if case.status == SKIPPED:
                assert case.skip_reason == "near-tie"
                continue
            ctx, target = samples[case.doc_id]["arguments"][0]
            c_ids, t_ids = run.lm._encode_pair(ctx, target)
            j = case.built["contrast"]["target_position"]
            full = c_ids + t_ids  # lm-eval's window: full[-(max_length + 1):][:-1]
            start = max(0, len(full) - (run.lm.max_length + 1))
            assert list(case.token_ids) == full[start:len(c_ids) + j]
            assert case.built["contrast"]["truncated_tokens"] == start
            assert case.gold_token_id == t_ids[j]
            with torch.no_grad():
                logits = run.lm.model(torch.tensor([case.token_ids])).logits[0]
            assert int(logits[-1].argmax()) == case.wrong_token_id
            lp = torch.log_softmax(logits[-1].double(), -1)
            assert float(lp[case.wrong_token_id] - lp[case.gold_token_id]) == \
                pytest.approx(gap, abs=1e-5)
            n = len(case.token_ids)
            for k in range(j):  # the target tokens before j were the greedy ones
                assert int(logits[n - j + k - 1].argmax()) == t_ids[k]


def test_gsm8k_generation_contrast(zero_shot, chat):
    from harness_xai.contrast.generation import locate_answer

    rules = set()
    for run in (zero_shot, chat):
        task = run.captured.tasks["fx_gsm8k"]
        samples = {(s["doc_id"], s["filter"]): s for s in run.samples("fx_gsm8k")}
        for case in run.cases("fx_gsm8k"):
            sample = samples[(case.doc_id, case.filter)]
            raw = sample["resps"][0][0]
            info = case.built.get("contrast", {})
            if case.status != PENDING:
                assert case.skip_reason in ("gold-answer-is-prefix", "generation-ended")
                continue
            rules.add(info["rule"])
            n_ctx = case.segments.index("generated") if "generated" in case.segments \
                else len(case.token_ids)
            generated = list(case.token_ids[n_ctx:])
            assert len(generated) == info["generated_prefix"]
            with torch.no_grad():  # the model's own greedy tokens, by plain HF generation
                out = run.lm.model.generate(torch.tensor([case.token_ids[:n_ctx]]),
                                            max_new_tokens=len(generated) + 1, do_sample=False,
                                            pad_token_id=0)[0, n_ctx:].tolist()
            assert out == generated + [case.wrong_token_id]
            k = info["answer_token"]
            if info["rule"] == "invalid-extraction:full-target":
                assert sample["filtered_resps"][0] == "[invalid]" and k == 0
                gold_text = " " + sample["target"] if not case.prompt[-1].isspace() \
                    else sample["target"]
            else:
                ensemble = next(f for f in task._filters if f.name == case.filter)
                span = locate_answer(raw, sample["filtered_resps"][0], ensemble)
                assert span[0] == info["answer_start"]
                assert sample["target"].endswith(case.gold_text)  # "#### 18" → "18"
                gold_text = raw[len(run.lm.tok_decode(generated[:k])):span[0]] + case.gold_text
            gold_ids = run.lm.tok_encode(gold_text, add_special_tokens=False)
            assert gold_ids[: len(generated) - k + 1] == generated[k:] + [case.gold_token_id]
    assert "invalid-extraction:full-target" in rules  # strict-match: the model never says ####


def test_generation_answer_span_on_bundled_task(degenerate):
    run = degenerate
    cases = [c for c in run.cases("xai_kv_gen")]
    spans = [c for c in cases if c.built["contrast"]["rule"] == "answer-span"]
    assert spans
    tok = run.lm.tokenizer
    for case in spans:  # the contrast is between the digits of the two values
        k = case.built["contrast"]["answer_token"]
        n_ctx = len(case.token_ids) - case.built["contrast"]["generated_prefix"]
        said = tok.decode(case.token_ids[n_ctx + k:])
        wrong, gold = ((said + tok.decode([t])).strip()
                       for t in (case.wrong_token_id, case.gold_token_id))
        assert case.pred_text.startswith(wrong) and case.gold_text.startswith(gold)
        assert wrong != gold and case.pred_text != case.gold_text


def test_several_gold_answers_take_the_closest(degenerate):
    run, task = degenerate, degenerate.captured.tasks["xai_kv_gen"]
    case = next(c for c in run.cases("xai_kv_gen")
                if c.built["contrast"]["rule"] == "answer-span")
    sample = copy.deepcopy(next(s for s in run.samples("xai_kv_gen") if s["doc_id"] == case.doc_id))
    golds = [g for g in ("07", "93", "41", case.gold_text) if g != case.pred_text]
    sample["target"] = golds
    (multi,) = cases_for_task("xai_kv_gen", task, [sample], run.lm)
    gaps = {}
    for gold in golds:
        one = copy.deepcopy(sample)
        one["target"] = gold
        (single,) = cases_for_task("xai_kv_gen", task, [one], run.lm)
        with torch.no_grad():
            logits = run.lm.model(torch.tensor([single.token_ids])).logits[0, -1]
        gaps[gold] = float(logits[single.wrong_token_id] - logits[single.gold_token_id])
    assert multi.gold_text == min(gaps, key=gaps.get)


def test_locate_answer_follows_the_filters():
    from lm_eval.filters import build_filter_ensemble

    from harness_xai.contrast.generation import locate_answer

    strict = build_filter_ensemble("strict", [["regex", {"regex_pattern": r"#### (\-?[0-9\.\,]+)"}],
                                              ["take_first", None]])
    flexible = build_filter_ensemble("flex", [["regex", {"group_select": -1, "regex_pattern":
                                                         r"(-?[$0-9.,]{2,})|(-?[0-9]+)"}],
                                              ["take_first", None]])
    raw = "She has 12 eggs, sells 9 for $18.\n#### 18"
    assert locate_answer(raw, "18", strict) == (len(raw) - 2, len(raw))
    assert locate_answer(raw, "18", flexible) == (len(raw) - 2, len(raw))
    raw = "It is 7 or 42 <b>or</b> 5"
    assert locate_answer(raw, "5", flexible) == (len(raw) - 1, len(raw))
    assert locate_answer(raw, "[invalid]", strict) is None


# --- options: metric, sequence mode -----------------------------------------------------------

def test_acc_norm_decides_when_asked(zero_shot):
    run = zero_shot
    for task in ("fx_arc_easy", "fx_hellaswag"):
        cases = run.cases(task, metric="acc_norm")
        wrong = sorted(s["doc_id"] for s in run.samples(task) if s["acc_norm"] == 0)
        assert sorted(c.doc_id for c in cases) == wrong
        samples = {s["doc_id"]: s for s in run.samples(task)}
        for case in cases:
            assert case.metric == "acc_norm"
            sample = samples[case.doc_id]
            choices = run.captured.tasks[task].doc_to_choice(sample["doc"])
            lls = [r[0] for r in sample["filtered_resps"]]
            assert case.pred_index == int(np.argmax([ll / len(c) for ll, c in zip(lls, choices)]))
    from harness_xai.errors import UserError

    with pytest.raises(UserError, match="'acc_norm' is not a metric of task 'fx_mmlu_anatomy'; "
                                        "supported: acc$"):
        run.cases("fx_mmlu_anatomy", metric="acc_norm")  # mmlu logs acc only


def test_sequence_mode_explains_the_decision(zero_shot):
    from harness_xai.lrp import explain
    from harness_xai.records import SequenceTarget

    run = zero_shot
    model = run.lm.model
    done = set()
    for task in ("fx_arc_easy", "fx_winogrande", "fx_lambada_openai", "fx_gsm8k"):
        for case in run.cases(task, contrast="sequence"):
            assert case.contrast == "sequence"
            if case.status != PENDING or task in done:
                continue
            assert isinstance(case.objective, SequenceTarget)
            assert case.objective.wrong_ids[:-1] == case.token_ids
            (result,) = explain(model, [case.objective], "attnlrp")
            assert result.tokens.shape == (len(case.token_ids),)
            assert result.layers.shape == (model.config.num_hidden_layers + 1,
                                           len(case.token_ids))
            params = result.params
            assert len(params["gold_relevance"]) == len(params["gold_tokens"])
            if task in ("fx_arc_easy", "fx_winogrande"):
                assert result.delta == pytest.approx(case.ll_pred - case.ll_gold, abs=1e-4)
                assert result.delta > 0
            done.add(task)
    assert done == {"fx_arc_easy", "fx_winogrande", "fx_lambada_openai", "fx_gsm8k"}


# --- decision-faithful multiple choice (issue #14, item 2) -------------------------------------

MC_FIXTURES = ("fx_arc_easy", "fx_hellaswag", "fx_winogrande", "fx_mmlu_anatomy",
               "fx_truthfulqa_mc1")


@pytest.mark.parametrize("metric", ["acc", "acc_norm"])
def test_every_multiple_choice_case_favours_the_chosen_answer(zero_shot, metric):
    """The engine's Δ on every pending case is > 0 (the explained quantity favours the answer
    lm-eval chose); a token contrast whose token favoured the gold answer was replaced by the
    decision (Δ = decision Δ, computed independently from the logged log-likelihoods)."""
    from harness_xai.lrp import explain

    run, model = zero_shot, zero_shot.lm.model
    deltas, rules = [], {}
    for task in MC_FIXTURES:
        if metric == "acc_norm" and "acc_norm" not in run.samples(task)[0]:
            continue
        choices = run.captured.tasks[task].doc_to_choice
        samples = {s["doc_id"]: s for s in run.samples(task)}
        for case in run.cases(task, metric=metric):
            info = case.built["contrast"]
            if case.status != PENDING:
                assert case.skip_reason in ("near-tie", "tie-with-gold", "identical-choices",
                                            "identical-sequences", "diverge-at-first-token"), case
                continue
            (result,) = explain(model, [case.objective], "attnlrp")
            deltas.append(result.delta)
            rules[info["rule"]] = rules.get(info["rule"], 0) + 1
            assert result.delta > 0, (task, case.doc_id, info, result.delta)
            if info["rule"] == "decision-sequence":
                sample = samples[case.doc_id]
                lls = [r[0] for r in sample["filtered_resps"]]
                texts = choices(sample["doc"])
                norm = [1.0 / len(texts[i]) if metric == "acc_norm" else 1.0
                        for i in (case.pred_index, case.gold_index)]
                want = norm[0] * lls[case.pred_index] - norm[1] * lls[case.gold_index]
                assert result.delta == pytest.approx(want, abs=1e-4)
                assert info["replaced"] != "token-disagrees" or info["replaced_token_delta"] <= 1e-4
            elif case.contrast == "token":
                assert result.delta == pytest.approx(info["token_delta"], abs=1e-4)
    assert len(deltas) >= 5 and all(d > 0 for d in deltas)
    assert rules.get("decision-sequence", 0) >= 1, rules  # the rule is exercised on real formats


def test_near_tie_is_a_skip_not_an_explanation(zero_shot):
    run, task = zero_shot, "fx_arc_easy"
    arc = run.captured.tasks[task]
    sample = copy.deepcopy(next(s for s in run.samples(task) if arc.doc_to_target(s["doc"]) > 0))
    gold = arc.doc_to_target(sample["doc"])
    lls = [-3.0] * len(sample["filtered_resps"])
    lls[0], lls[gold] = -1.5, -1.5 - 5e-5  # choice 0 wins by less than the floor
    sample["filtered_resps"] = [(x, False) for x in lls]
    sample["acc"] = 0.0
    (case,) = cases_for_task(task, arc, [sample], run.lm)
    assert case.status == SKIPPED and case.skip_reason == "near-tie"
    assert isinstance(case.built["contrast"]["decision_delta"], float)  # recomputed, recorded


# --- degenerate situations --------------------------------------------------------------------

def test_degenerate_multiple_choice_reasons(degenerate):
    run = degenerate
    samples = {s["doc_id"]: s for s in run.samples("xd_mc")}
    assert len(samples[0]["arguments"]) == 4  # acc_mutual_info's unconditional requests...
    reasons = {c.doc_id: c.skip_reason for c in run.cases("xd_mc")}
    assert reasons[0] == "identical-choices"
    lls = [r[0] for r in samples[1]["filtered_resps"][:2]]
    assert lls[0] > lls[1] and reasons[1] is None  # prefix choices: the decision is explained
    prefix = next(c for c in run.cases("xd_mc") if c.doc_id == 1)
    assert prefix.status == PENDING and prefix.contrast == "sequence"
    assert prefix.built["contrast"]["rule"] == "decision-sequence"
    assert prefix.built["contrast"]["replaced"] == "prefix-sequences"
    assert reasons[2] == "gold-out-of-range"
    assert reasons[3] == "gold-not-in-choices"
    empty = [c for c in run.cases("xd_mc") if c.doc_id in (4, 5)]  # one of the pair is wrong
    assert len(empty) == 1 and empty[0].status == PENDING
    assert empty[0].built["contrast"]["replaced"] in ("empty-context", "token-disagrees")
    shared = [c for c in run.cases("xd_mc") if c.doc_id in (6, 7)]
    assert len(shared) == 1 and shared[0].status == PENDING  # " the" before the divergence
    assert shared[0].segments[0] == "special" and shared[0].token_ids[0] == run.lm.prefix_token_id
    assert set(shared[0].segments[1:]) == {"continuation"}
    for case in run.cases("xd_mc"):  # ...are filtered out: ll_error over the real choices
        assert case.ll_error is not None and case.ll_error <= 1e-4
    by_doc = {c.doc_id: c for c in run.cases("xd_mc", contrast="sequence")}
    assert by_doc[1].status == PENDING  # prefix choices are fine for the sequence contrast


def test_several_golds_take_the_best_scoring_gold(degenerate):
    run = degenerate
    samples = {s["doc_id"]: s for s in run.samples("xd_multi")}
    cases = run.cases("xd_multi")
    assert cases and sorted(c.doc_id for c in cases) == [d for d, _ in _incorrect(run, "xd_multi")]
    for case in cases:
        golds = samples[case.doc_id]["doc"]["gold"]
        lls = [r[0] for r in samples[case.doc_id]["filtered_resps"]]
        assert case.gold_index == max(golds, key=lambda i: lls[i]) and case.pred_index not in golds


def test_ties_and_regeneration_mismatch_are_recorded(zero_shot):
    run, task = zero_shot, "fx_arc_easy"
    arc = run.captured.tasks[task]
    sample = copy.deepcopy(next(s for s in run.samples(task) if arc.doc_to_target(s["doc"]) > 0))
    sample["filtered_resps"] = [(-1.5, False)] * len(sample["filtered_resps"])  # all equal:
    sample["acc"] = 0.0  # lm-eval's argmax takes choice 0, the gold is another one
    (case,) = cases_for_task(task, arc, [sample], run.lm)
    assert case.status == SKIPPED and case.skip_reason == "tie-with-gold"
    assert case.pred_index == 0 and case.gold_index == arc.doc_to_target(sample["doc"])
    gen = copy.deepcopy(next(s for s in run.samples("fx_gsm8k") if s["exact_match"] == 0))
    gen["resps"] = [["something the model never said"]]
    (case,) = cases_for_task("fx_gsm8k", run.captured.tasks["fx_gsm8k"], [gen], run.lm)
    assert case.status == SKIPPED and case.skip_reason == "regeneration-mismatch"


def test_context_longer_than_max_length_is_left_truncated(truncated):
    run = truncated
    assert run.lm.max_length == 64
    n = 0
    for task, case in run.all_cases():
        if case.status != PENDING:
            continue
        assert len(case.token_ids) <= 64
        info = case.built["contrast"]
        if run.captured.tasks[task].OUTPUT_TYPE in MC_LIKE:
            n += info["truncated_tokens"] > 0
            assert case.ll_error <= 1e-4
    assert n >= 5


def test_loglikelihood_rolling_is_skipped_with_reason(degenerate):
    cases = degenerate.cases("xd_rolling")
    assert len(cases) == 2
    assert {c.skip_reason for c in cases} == {"no-contrast:loglikelihood_rolling"}


# --- pipeline wiring --------------------------------------------------------------------------

def test_pipeline_stores_segments_and_counts_skips(micro_model, task_manager, tmp_path):
    import harness_xai
    from harness_xai.store import run_sql

    db = f"sqlite:///{tmp_path / 'x.sqlite'}"
    results = harness_xai.evaluate(
        model="hf", model_args=f"pretrained={micro_model},dtype=float32",
        tasks=["xd_mc", "fx_winogrande"], task_manager=task_manager, device="cpu", limit=8,
        attribute=True, db=db, method="cp-lrp", contrast="sequence", progress=False)
    xai = results["xai"]
    _, rows = run_sql(db, "SELECT skip_reason, count(*) FROM cases WHERE status = 'skipped' "
                          "GROUP BY skip_reason")
    assert dict(rows) == xai["skipped"] and "gold-out-of-range" in xai["skipped"]
    _, rows = run_sql(db, "SELECT DISTINCT contrast, output_type FROM cases")
    assert rows == [("sequence", "multiple_choice")]
    _, rows = run_sql(db, "SELECT c.task, t.segment, count(*) FROM cases c JOIN token_relevance t "
                          "ON t.case_id = c.id GROUP BY c.task, t.segment")
    segments = {(task, seg) for task, seg, _ in rows}
    assert ("fx_winogrande", "option") in segments and ("fx_winogrande", "question") in segments
    assert xai["attributed"] >= 1


def test_cli_rejects_bad_contrast_options(tmp_path, capsys):
    from harness_xai.cli import main

    db = tmp_path / "never.duckdb"
    for flag, value, word in (("--xai-contrast", "tokens", "contrast"),
                              ("--xai-threshold", "high", "not a number"),
                              ("--xai-metric", "=acc", "TASK=VALUE"),
                              ("--xai-reasoning-steps", "paragraph", "sentence, line")):
        assert main(["run", "--model", "hf", "--model_args", "pretrained=x", "--tasks", "x",
                     "--attribute", "--xai-db", str(db), flag, value]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and word in err[0] and value in err[0]
    assert not db.exists()


def test_prompt_recorder_leaves_tasks_unchanged(zero_shot):
    for task in zero_shot.captured.tasks.values():
        assert "fewshot_context" not in vars(task)
        sampler = getattr(task, "sampler", None)
        assert sampler is None or "sample" not in vars(sampler)
    assert json.dumps([c.segments for _, c in zero_shot.all_cases()])  # plain JSON-able labels


# --- the extension point ------------------------------------------------------------------------

def test_register_contrast_drives_cases_for_task():
    """A builder registered for an output type is what ``cases_for_task`` calls, with one cache
    per task; its draft comes out frozen with its tokens decoded."""
    from types import SimpleNamespace

    from harness_xai.contrast import CONTRAST_BUILDERS, new_case, register_contrast
    from harness_xai.records import Case

    seen = []

    def builder(sample, task, task_name, lm, options, cache):
        cache.setdefault("n", 0)
        cache["n"] += 1
        seen.append(cache["n"])
        assert not sample["ok"]  # called for the incorrect samples only
        draft = new_case(sample, task_name, "my_type", options.metric_name, options.contrast)
        draft.token_ids, draft.wrong_token_id, draft.gold_token_id = [3, 4], 5, 6
        return draft

    register_contrast("my_type", builder)
    try:
        task = SimpleNamespace(OUTPUT_TYPE="my_type", higher_is_better=lambda: {"acc": True})
        lm = SimpleNamespace(tokenizer=SimpleNamespace(decode=lambda ids: f"<{ids[0]}>"))
        samples = [dict(doc_id=i, doc_hash=f"h{i}", prompt_hash="p", target_hash="t",
                        filter="none", ok=i % 2 == 0, acc=float(i % 2 == 0)) for i in range(4)]
        cases = list(cases_for_task("mine", task, samples, lm))
        assert seen == [1, 2]
        assert {c.metric for c in cases} == {"acc"}
        assert [c.doc_id for c in cases] == [1, 3] and all(isinstance(c, Case) for c in cases)
        assert cases[0].tokens == ("<3>", "<4>") and cases[0].wrong_token == "<5>"
        with pytest.raises(dataclasses.FrozenInstanceError):
            cases[0].doc_id = 9
    finally:
        CONTRAST_BUILDERS.unregister("my_type")


def test_readme_contrast_example_registers_and_runs(zero_shot):
    """The README's "adding a contrast kind" block, executed as written: it replaces the
    generation builder (overwrite=True) and, on prompts lm-eval did not cut, gives the same
    cases as the built-in."""
    import re

    from harness_xai.contrast import CONTRAST_BUILDERS, register_contrast

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = next(b for b in re.findall(r"```python\n(.*?)```", readme, re.S)
                 if "register_contrast(" in b)
    builtin = CONTRAST_BUILDERS.get("generate_until")
    run = zero_shot
    want = [(c.doc_id, c.status, c.token_ids) for c in run.cases("fx_gsm8k")]
    try:
        exec(compile(block, "README.md", "exec"), {})
        assert CONTRAST_BUILDERS.get("generate_until") is not builtin
        got = list(cases_for_task("fx_gsm8k", run.captured.tasks["fx_gsm8k"],
                                  run.samples("fx_gsm8k"), run.lm))
        assert [(c.doc_id, c.status, c.token_ids) for c in got] == want
    finally:
        register_contrast("generate_until", builtin, overwrite=True)
