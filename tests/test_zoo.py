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


def test_arith_evidence_spans_cover_exactly_the_operands_in_lm_evals_prompt(lm_eval_tasks):
    task = lm_eval_tasks["xai_arith"]
    docs = list(task.test_docs())
    assert {len(d["evidence_span"]) for d in docs} == set(range(2, 6))  # 2–5 operands
    for doc in docs:
        prompt = task.doc_to_text(doc)
        spans = doc["evidence_span"]
        assert [prompt[s:e] for s, e in spans] == [str(x) for x in doc["operands"]]
        covered = {i for s, e in spans for i in range(s, e)}
        assert covered == {i for i, c in enumerate(prompt) if c.isdigit()}  # no '+', no '='
        assert spans == doc["operand_spans"]
        total = task.doc_to_choice(doc)[task.doc_to_target(doc)]
        assert int(total) == sum(int(prompt[s:e]) for s, e in spans)


def test_evidence_field_leaves_prompts_and_the_training_stream_alone():
    """The zoo was trained on ``train_texts`` (arith texts = ``arith_doc``'s prompt and sum). A
    span field draws nothing from the generator: the draws and every other field are still those
    of the generator the zoo was built with, so the zoo's spec hash and weights stay valid."""
    import random

    rng_a, rng_b = random.Random(3), random.Random(3)
    for _ in range(200):
        n = rng_a.randint(2, 5)
        assert n == rng_b.randint(2, 5)
        doc = taskgen.arith_doc(rng_a, n)
        expected = _arith_doc_without_evidence(rng_b, n)
        assert {k: v for k, v in doc.items() if k != "evidence_span"} == expected
    assert rng_a.random() == rng_b.random()  # both streams are at the same point


def _arith_doc_without_evidence(rng, n_operands: int) -> dict:
    """``arith_doc`` as it was before ``evidence_span`` existed (same draws, same fields)."""
    operands = [rng.randint(1, 9) for _ in range(n_operands)]
    total = sum(operands)
    pool = [total + d for d in (-2, -1, 1, 2, -10, 10) if total + d >= 0]
    choices = [str(x) for x in rng.sample(pool, 3)] + [str(total)]
    rng.shuffle(choices)
    return {"prompt": "+".join(str(x) for x in operands) + "=", "choices": choices,
            "gold": choices.index(str(total)), "target": str(total), "n_operands": n_operands,
            "operands": operands, "operand_spans": [[2 * i, 2 * i + 1] for i in range(n_operands)]}


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


def test_keys_values_and_sums_are_single_tokens_scored_as_lm_eval_scores_them(micro_model):
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=str(micro_model), device="cpu", dtype="float32")
    words = ([f" {k}" for k in taskgen.KEYS] + [f" {v:02d}" for v in range(100)]
             + [f" {v}" for v in range(60)])
    assert [w for w in words if len(lm.tok_encode(w)) != 1] == []
    doc = taskgen.test_docs("xai_kv")[0]
    ids = lm.tok_encode(doc["prompt"])
    assert lm.tokenizer.decode(ids) == doc["prompt"]
    # lm-eval's own split of context and continuation: the value is one continuation token,
    # so pred and gold differ at the first continuation position
    ctx, cont = lm._encode_pair(doc["prompt"], " " + doc["target"])
    assert ctx == ids and cont == lm.tok_encode(" " + doc["target"])


def test_training_texts_never_start_with_a_test_prompt():
    import random

    from harness_xai.zoo.train import draw_texts

    test_prompts = taskgen.test_prompts()
    assert len(test_prompts) == 2 * 160
    rng = random.Random(0)
    kv = draw_texts(rng, 400, set(), (4, 12))
    arith = draw_texts(rng, 2000, test_prompts, None)
    leaked = [t for t, _ in arith if t.rsplit(" ", 1)[0] in test_prompts]
    assert leaked == [] and len(arith) == 2000
    # the same draw without the ban does hit test prompts (81 two-operand sums only)
    unbanned = draw_texts(random.Random(0), 2000, set(), None)
    assert any(t.rsplit(" ", 1)[0] in test_prompts for t, _ in unbanned)
    assert all(t.split(". ", 1)[0].count(" ") <= 2 * 12 for t, _ in kv)  # ≤ 12 records


def test_answer_mask_marks_exactly_the_answers():
    import random

    from harness_xai.zoo.tokenizer import train_tokenizer
    from harness_xai.zoo.train import batch

    tok = train_tokenizer(512, 1000)
    texts = [taskgen.kv_train_text(random.Random(3), 5, 2, set()),
             taskgen.arith_train_text(random.Random(4), set())]
    ids, answer = batch(tok, texts, tok.eos_token_id)  # (B, T), (B, T-1)
    for row, (text, spans) in enumerate(texts):
        marked = [tok.decode([int(i)]) for i in ids[row, 1:][answer[row]]]
        assert marked == [text[a:b] for a, b in spans]


def test_phase_one_restarts_on_a_plateau_and_stops_at_the_target(monkeypatch):
    from harness_xai.zoo import train as zoo_train

    tiny = dict(MICRO_SPEC, steps=12, arith_steps=3, kv_attempt_steps=3, check_every=1)
    monkeypatch.setattr(zoo_train, "retrieval_accuracy", lambda *a: 0.0)
    _, _, stats = zoo_train.train(TrainSpec(**tiny), progress=False)
    assert (stats["attempts"], stats["kv_only_steps"], stats["steps"]) == (3, 3, 6)
    assert stats["seed"] == TrainSpec().seed + 2
    monkeypatch.setattr(zoo_train, "retrieval_accuracy", lambda *a: 1.0)
    _, _, stats = zoo_train.train(TrainSpec(**tiny), progress=False)
    assert (stats["attempts"], stats["kv_only_steps"], stats["steps"]) == (1, 1, 4)


# --- the zoo family: two architectures × sizes, checkpoints saved while training -----------------

FAMILY_MICRO = dict(steps=4, kv_only_steps=2, checkpoints=(0, 2, 4), kv_batch=4, arith_batch=4,
                    tokenizer_texts=1000, kv_records=(4, 8))


@pytest.fixture(scope="module")
def family_zoo(tmp_path_factory) -> Path:
    from harness_xai.zoo import build_zoo

    root = tmp_path_factory.mktemp("family")
    build_zoo(root, ["llama-s", "neox-m"], progress=False, **FAMILY_MICRO)
    return root


def test_family_checkpoints_are_hf_directories_selected_by_subfolder(family_zoo):
    from lm_eval.models.huggingface import HFLM
    from safetensors.torch import load_file
    from transformers import AutoConfig

    from harness_xai.zoo.build import checkpoints

    for name, model_type in (("llama-s", "llama"), ("neox-m", "gpt_neox")):
        root = family_zoo / name
        assert checkpoints(root) == [0, 2, 4]
        states = [json.loads((root / f"step{s}" / "trainer_state.json").read_text())
                  for s in (0, 2, 4)]
        assert [s["global_step"] for s in states] == [0, 2, 4]
        weights = [load_file(root / f"step{s}" / "model.safetensors") for s in (0, 2, 4)]
        for earlier, later in zip(weights, weights[1:]):  # every checkpoint is another state
            assert any(not torch.equal(earlier[k], later[k]) for k in earlier)
        final = load_file(root / "model.safetensors")  # the directory itself: the final model
        assert all(torch.equal(final[k], weights[-1][k]) for k in final)
        assert AutoConfig.from_pretrained(root, subfolder="step2").model_type == model_type
        lm = HFLM(pretrained=str(root), subfolder="step2", device="cpu", dtype="float32")
        loaded = {k: v for k, v in lm.model.state_dict().items() if k in weights[1]}
        assert loaded and all(torch.equal(v, weights[1][k]) for k, v in loaded.items())
    neox = AutoConfig.from_pretrained(family_zoo / "neox-m")
    assert neox.use_parallel_residual and neox.rope_parameters["partial_rotary_factor"] == 0.25


def test_family_build_is_cached_deterministic_and_independent_of_jobs(family_zoo, tmp_path,
                                                                      monkeypatch):
    from safetensors.torch import load_file

    from harness_xai.zoo import build as zoo_build
    from harness_xai.zoo import build_zoo

    again = build_zoo(tmp_path, ["llama-s", "neox-m"], jobs=2, progress=False, **FAMILY_MICRO)
    for name, path in again.items():
        for step in (0, 2, 4):
            a = load_file(family_zoo / name / f"step{step}" / "model.safetensors")
            b = load_file(path / f"step{step}" / "model.safetensors")
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), (name, step)
    monkeypatch.setattr(zoo_build, "_build_family_model",
                        lambda *a: pytest.fail("retrained on a cache hit"))
    assert build_zoo(tmp_path, ["llama-s"], progress=False, **FAMILY_MICRO) == {
        "llama-s": tmp_path / "llama-s"}


def test_interrupted_family_build_leaves_the_cached_one(family_zoo, monkeypatch):
    from harness_xai.zoo import build_zoo
    from harness_xai.zoo import family

    before = (family_zoo / "llama-s" / "zoo_build.json").read_text()

    def interrupted(spec, tokenizer, on_checkpoint, progress=True):
        raise RuntimeError("interrupted")

    monkeypatch.setattr(family, "train_family", interrupted)
    with pytest.raises(RuntimeError):
        build_zoo(family_zoo, ["llama-s"], progress=False, **{**FAMILY_MICRO, "lr": 2e-3})
    assert (family_zoo / "llama-s" / "zoo_build.json").read_text() == before
    assert [p.name for p in family_zoo.iterdir() if p.name.startswith(".")] == []


def test_phase_one_restart_keeps_only_the_accepted_attempts_checkpoints(monkeypatch):
    from harness_xai.zoo import family
    from harness_xai.zoo.tokenizer import train_tokenizer

    tok = train_tokenizer(512, 1000)
    spec = family.family_spec("llama-m", **{**FAMILY_MICRO, "kv_attempts": 3})
    saved: list[tuple[int, dict]] = []
    monkeypatch.setattr(family, "retrieval_accuracy", lambda *a: 0.0)
    stats = family.train_family(spec, tok, lambda s, m, i: saved.append((s, i)), progress=False)
    assert [a["seed"] for a in stats["attempts"]] == [spec.seed, spec.seed + 1, spec.seed + 2]
    assert [s for s, _ in saved] == [0, 2, 4] and stats["seed"] == spec.seed + 2
    saved.clear()
    monkeypatch.setattr(family, "retrieval_accuracy", lambda *a: 1.0)
    stats = family.train_family(spec, tok, lambda s, m, i: saved.append((s, i)), progress=False)
    assert len(stats["attempts"]) == 1 and [s for s, _ in saved] == [0, 2, 4]


def test_family_spec_rejects_bad_names_and_grids():
    from harness_xai.errors import UserError
    from harness_xai.zoo.family import ZOO_MODELS, family_spec

    assert len(ZOO_MODELS) == 6 and {n.split("-")[0] for n in ZOO_MODELS} == {"llama", "neox"}
    sizes = [family_spec(f"llama-{s}") for s in "sml"]
    assert [(s.hidden_size, s.num_hidden_layers) for s in sizes] == sorted(
        (s.hidden_size, s.num_hidden_layers) for s in sizes)
    with pytest.raises(UserError, match="unknown zoo model"):
        family_spec("gpt-xl")
    with pytest.raises(UserError, match="checkpoints"):
        family_spec("llama-s", checkpoints=(0, 100))  # the last one must be the final step
