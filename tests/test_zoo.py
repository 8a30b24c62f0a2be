"""The bundled tasks and the zoo build: reproducible, cached, loadable like any HF model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import MICRO_SPEC

from harness_xai.zoo import DEMO_TASKS, build_model, tasks_dir
from harness_xai.zoo import build as zoo_build
from harness_xai.zoo import taskgen
from harness_xai.zoo.taskgen import TASK_NAMES, to_jsonl
from harness_xai.zoo.train import TrainSpec


def test_committed_task_data_is_regenerated_byte_for_byte():
    for task in TASK_NAMES:
        committed = (tasks_dir() / task / "test.jsonl").read_text(encoding="utf-8")
        assert committed == to_jsonl(taskgen.test_docs(task)), task


@pytest.fixture(scope="module")
def lm_eval_tasks():
    from lm_eval.tasks import TaskManager, get_task_dict

    manager = TaskManager(include_path=str(tasks_dir()))
    return get_task_dict(list(DEMO_TASKS), manager)


def test_yamls_load_through_lm_eval(lm_eval_tasks):
    assert set(DEMO_TASKS) <= set(lm_eval_tasks)
    assert lm_eval_tasks["xai_kv"].OUTPUT_TYPE == "multiple_choice"
    assert lm_eval_tasks["xai_kv_gen"].OUTPUT_TYPE == "generate_until"
    assert len(list(lm_eval_tasks["xai_arith"].test_docs())) == len(taskgen.test_docs("xai_arith"))


def test_evidence_spans_point_at_the_answer_in_lm_evals_prompt(lm_eval_tasks):
    task = lm_eval_tasks["xai_kv"]
    docs = list(task.test_docs())
    lengths = []
    for doc in docs:
        prompt = task.doc_to_text(doc)
        start, end = doc["evidence_span"]
        gold = task.doc_to_choice(doc)[task.doc_to_target(doc)]
        assert prompt[start:end] == gold
        r_start, r_end = doc["record_span"]
        assert prompt[r_start:r_end].startswith(doc["query"]) and prompt[r_start:r_end].endswith(gold)
        assert prompt.count(f" {doc['query']}") >= 2  # in the records and as the query
        lengths.append(len(prompt))
    assert max(lengths) > 4 * min(lengths)  # short and long contexts


def test_micro_build_is_deterministic_and_loads_like_a_hub_model(tmp_path, micro_model):
    from lm_eval.models.huggingface import HFLM
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    again = build_model(tmp_path, spec=TrainSpec(**MICRO_SPEC), progress=False)
    a, b = load_file(micro_model / "model.safetensors"), load_file(again / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    model = AutoModelForCausalLM.from_pretrained(again)
    assert model.config.model_type == "llama"
    lm = HFLM(pretrained=str(again), device="cpu", dtype="float32")
    assert lm.tok_encode("k03 11") == lm.tokenizer("k03 11", add_special_tokens=False)["input_ids"]


def test_cache_hit_does_not_train(micro_model, monkeypatch):
    info = (micro_model / zoo_build.BUILD_FILE).read_text()
    monkeypatch.setattr(zoo_build, "train", lambda *a, **k: pytest.fail("retrained on a cache hit"))
    assert build_model(micro_model.parent, spec=TrainSpec(**MICRO_SPEC)) == micro_model
    assert (micro_model / zoo_build.BUILD_FILE).read_text() == info
    assert json.loads(info)["spec_hash"] == zoo_build.spec_hash(TrainSpec(**MICRO_SPEC))


def test_changed_spec_rebuilds(micro_model, monkeypatch, tmp_path):
    calls = []

    def fake_train(spec, progress=True):
        calls.append(spec)
        raise RuntimeError("interrupted")

    monkeypatch.setattr(zoo_build, "train", fake_train)
    with pytest.raises(RuntimeError):
        build_model(micro_model.parent, spec=TrainSpec(**{**MICRO_SPEC, "steps": 11}))
    assert len(calls) == 1
    # the interrupted build left the cached model in place, and no temp dirs behind
    assert (micro_model / "model.safetensors").exists()
    assert [p.name for p in micro_model.parent.iterdir() if p.name.startswith(".")] == []
