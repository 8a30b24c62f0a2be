"""harness_xai.zoo.longctx: RULER niah_single_1 / babilong qa1 docs in the datasets' schemas, run
through lm-eval's own task YAMLs (the docs of bench/bench_evidence_real.py)."""

from __future__ import annotations

import json
import random
import re

import pytest

from fixtures.lm_eval_tasks import DATA, GENERATIVE_TASKS, write_tasks
from harness_xai.zoo import longctx

#: kind → (fixture task, split, fixture data file)
KINDS = {"niah": ("fx_niah_single_1", "test", "niah_single_1/test.jsonl"),
         "babilong": ("fx_babilong_qa1", "qa1", "babilong_qa1/qa1.jsonl")}


def _facts(text: str) -> list[tuple[str, str]]:
    """(name, place) of every bAbI qa1 sentence of a babilong input, in order."""
    verbs = "|".join(re.escape(v) for v in longctx.VERBS)
    return re.findall(rf"\b([A-Z][a-z]+) (?:{verbs}) the (\w+)\.", text)


def test_docs_have_the_datasets_schemas_and_answers():
    """Same keys and value types as the fixture rows of the real datasets; RULER: one 7-digit
    needle in the newline-joined noise haystack, named by the query; babilong: the target is the
    LAST place the asked person moved to (recomputed from the facts)."""
    for kind, (_, _, rel) in KINDS.items():
        real = json.loads((DATA / rel).read_text().splitlines()[0])
        docs = longctx.make_docs(kind, 50, seed=3, size=(2, 12))
        for doc in docs:
            assert set(doc) == set(real)
            assert {k: type(v) for k, v in doc.items()} == {k: type(v) for k, v in real.items()}
            if kind == "niah":
                (value,) = doc["outputs"]
                assert re.fullmatch(r"[1-9]\d{6}", value)
                key = re.search(r"for (\S+) mentioned", doc["gen_prefix"]).group(1)
                needle = longctx.NEEDLE.format(key=key, value=value)
                lines = doc["input"].split("\n")
                assert lines[1:-1].count(needle) == 1
                assert set(lines[1:-1]) == {needle, longctx.NOISE}
                assert doc["input"].count(value) == 1
                assert doc["input"].endswith(f"numbers for {key} mentioned in the provided text?")
            else:
                name = doc["question"].removeprefix("Where is ").removesuffix("?")
                last = [place for who, place in _facts(doc["input"]) if who == name]
                assert last and doc["target"] == last[-1]
    # the docs vary: the question and answer are not constant
    assert len({d["target"] for d in longctx.make_docs("babilong", 50, 3, (2, 12))}) > 2


@pytest.mark.slow
def test_docs_go_through_lm_eval_real_yamls(tmp_path):
    """Bound to lm-eval's own ruler/niah_single_1.yaml and babilong/babilong_qa1.yaml: the context
    lm-eval builds is the real template (RULER: input + gen_prefix; babilong: the YAML's
    description, its two few-shot examples, then input and question), ``lm_eval_context`` (the
    training prompts) equals it, the task's own metric scores the taught continuation correct and
    another answer wrong, and the needle / supporting fact found as evidence is the planted one."""
    from lm_eval.tasks import TaskManager, get_task_dict

    from harness_xai.contrast.answer import needle_spans

    data = {kind: longctx.write_jsonl(tmp_path / "data" / f"{kind}.jsonl",
                                      longctx.make_docs(kind, 8, seed=5, size=(2, 8)))
            for kind in KINDS}
    write_tasks(tmp_path / "tasks", tasks={KINDS[k][0]: GENERATIVE_TASKS[KINDS[k][0]]
                                           for k in KINDS},
                overrides={KINDS[k][0]: {"dataset_kwargs": {"data_files": {KINDS[k][1]: str(p)}}}
                           for k, p in data.items()})
    tasks = get_task_dict([v[0] for v in KINDS.values()],
                          TaskManager(include_path=str(tmp_path / "tasks")))
    rng = random.Random(0)
    for kind, (name, _, _) in KINDS.items():
        task = tasks[name]
        task.build_all_requests(limit=None, rank=0, world_size=1)
        assert len(task.instances) == 8
        for inst in task.instances:
            doc, context = inst.doc, inst.args[0]
            assert longctx.lm_eval_context(task, doc) == context
            if kind == "niah":
                assert context == doc["input"] + " " + doc["gen_prefix"]
                metric, wrong = str(doc["max_length"]), " " + str(
                    (int(doc["outputs"][0]) + 1) % 10 ** 7)
            else:
                config = task.config.fewshot_config
                shots = config["samples"] if isinstance(config, dict) else config.samples
                expected = task.config.description + "".join(
                    f"{s['input']}\n{s['question']} {s['target']}\n\n" for s in shots) + (
                    f"{doc['input'].strip()}\n{doc['question'].strip()}")
                assert context == expected
                metric = "acc"
                other = rng.choice([p for p in longctx.PLACES if p != doc["target"]])
                wrong = longctx.continuation(kind, {**doc, "target": other})
            assert task.process_results(doc, [longctx.continuation(kind, doc)])[metric] == 1.0
            assert task.process_results(doc, [wrong])[metric] == 0.0
            (start, end), = needle_spans(doc, context)
            fact = context[start:end]
            if kind == "niah":
                assert fact == longctx.NEEDLE.format(
                    key=doc["gen_prefix"].split()[5], value=doc["outputs"][0])
            else:
                asked = doc["question"].split()[-1].rstrip("?")
                facts = re.findall(r"[A-Z][^.]*\.", doc["input"])
                assert fact == [f for f in facts if f.startswith(asked + " ")][-1]
                assert start > context.rindex("\n\n")  # the doc's own fact, not a few-shot one


@pytest.mark.slow
def test_train_lm_learns_the_format_on_lm_eval_prompts():
    """A few steps on the real templates (RULER's, rendered here as lm-eval does for the doc
    schema: input + " " + gen_prefix): the answer loss falls, and the tokenizer encodes the
    continuation after the context's own ids (the contrast of the bench relies on it)."""
    from harness_xai.zoo.train import TrainSpec

    spec = TrainSpec(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                     num_key_value_heads=1, intermediate_size=64, vocab_size=400, steps=30,
                     lr=3e-3, warmup=5, threads=1)
    model, tok, stats = longctx.train_lm(lambda kind, doc: doc["input"] + " " + doc["gen_prefix"],
                                         spec, {"niah": (1, 2)}, batch_size=4, progress=False)
    assert stats["steps"] == 30
    first = stats["first_loss"]["niah"]
    assert stats["final_loss"]["niah"] < 0.7 * first
    doc = longctx.make_docs("niah", 1, seed=9, size=(2, 2))[0]
    ctx = doc["input"] + " " + doc["gen_prefix"]
    ids = tok(ctx, add_special_tokens=False)["input_ids"]
    full = tok(ctx + longctx.continuation("niah", doc) + longctx.EOT,
               add_special_tokens=False)["input_ids"]
    assert full[:len(ids)] == ids and full[-1] == tok.eos_token_id
