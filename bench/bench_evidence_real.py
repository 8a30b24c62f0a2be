"""Evidence recovery on real long-context formats: RULER niah_single_1 and babilong qa1 through
lm-eval's own task YAMLs, with a tiny Llama trained here to do them (issue #14 item 5).

Usage:
    nice -n 10 python bench/bench_evidence_real.py                 # train (cached) + measure
    python bench/bench_evidence_real.py --n-test 40 --methods attnlrp --out real.json
    nice -n 10 python bench/bench_evidence_real.py --cpu-budget 600 --wall-budget 1680 \
        --more 780 --n-test 60                                    # bench/README, run 2

1. Docs: ``harness_xai.zoo.longctx`` generates docs in the datasets' schemas (RULER: ``input``,
   ``outputs``, ``length``, ``max_length``, ``gen_prefix``; babilong: ``input``, ``question``,
   ``target``); the test docs (``--n-test`` per task, seed ``TEST_SEED``) are written as JSONL and
   bound to lm-eval's built-in ``ruler/niah_single_1.yaml`` / ``babilong/babilong_qa1.yaml`` by
   ``tests/fixtures/lm_eval_tasks.write_tasks`` (template, few-shot, gen_prefix, metric: lm-eval's).
2. Model: ``longctx.train_lm`` on fresh training docs whose prompts come from the same lm-eval task
   objects (``fewshot_context``), capped at ``--cpu-budget`` CPU / ``--wall-budget`` wall seconds;
   ``--more S`` continues that model for S more wall seconds; cached under ``--cache`` (key: spec,
   sizes, budgets, seed).
3. Per test doc (``task.build_all_requests``: the context lm-eval builds, its generation kwargs):
   ids = the context's encoding without special tokens (as HFLM), greedy decoding of the same ids
   up to ``max_gen_toks`` or ``<|endoftext|>`` (HFLM stops at EOS), scored by the task's own
   ``process_results`` (RULER: the doc's ``max_length`` metric "4096", babilong: ``acc``).
4. Contrast on the token sequences: gold = the encoding of ``context + longctx.continuation``
   (the answer the model was taught, with ``<|endoftext|>``). WRONG: the first position k where
   the generation differs from gold; input = ids + generation[:k], target = the model's token,
   foil = the gold token. CORRECT: k = the first gold token of the answer value (the number; the
   location), input = ids + gold[:k], target = gold token, foil = the runner-up token there.
5. ``harness_xai.attribute(model, tok, input, target, foil, method, states=False)`` per method.
6. Evidence = the production mapping of ``contrast.case.set_evidence`` for docs without
   ``evidence_span``: ``answer.needle_spans(doc, context)`` (RULER's needle sentence, babilong's
   supporting fact) → ``contrast.evidence.sentence_positions``; metrics from
   ``analysis.evidence.evidence_recovery`` (top1, rank_abs, precision = share of evidence among
   the m top-|R| tokens; random baseline m/N; N = every input token, as in the pipeline where no
   token is special).
7. Tables: per task × correct/incorrect × method (top1 · precision · rank against the random
   baseline), and where the top-|R| token lies (the last input token, the answer value inside
   the evidence sentence, the rest of that sentence, the generated answer prefix, the question,
   elsewhere). For babilong's wrong answers that name a place: recovery of the fact stating the
   place the model answered (what it read instead).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from harness_xai import attribute  # noqa: E402
from harness_xai.analysis.evidence import evidence_recovery  # noqa: E402
from harness_xai.contrast.answer import needle_spans  # noqa: E402
from harness_xai.contrast.evidence import sentence_positions  # noqa: E402
from harness_xai.zoo import longctx  # noqa: E402
from harness_xai.zoo.train import TrainSpec  # noqa: E402

METHODS = ("attnlrp", "cp-lrp", "grad-x-input")
SHORT = {"attnlrp": "AttnLRP", "cp-lrp": "CP-LRP", "grad-x-input": "grad×input"}
#: kind → (fixture task, its test split)
TASKS = {"niah": ("fx_niah_single_1", "test"), "babilong": ("fx_babilong_qa1", "qa1")}
TEST_SEED = 20261204
#: haystack sizes (RULER: noise repeats of ~20 words; babilong: filler sentences); train ⊇ test
TRAIN_SIZES = {"niah": (1, 10), "babilong": (2, 20)}
TEST_SIZES = {"niah": (4, 10), "babilong": (8, 20)}
SPEC = TrainSpec(hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, intermediate_size=256, vocab_size=1024, steps=700,
                 lr=2e-3, warmup=30, threads=1)


def load_tasks(dest: Path, data: dict[str, Path]) -> dict[str, Any]:
    """lm-eval task objects of the two built-in YAMLs bound to ``data[kind]`` (JSONL)."""
    from lm_eval.tasks import TaskManager, get_task_dict
    from fixtures.lm_eval_tasks import GENERATIVE_TASKS, write_tasks

    names = {TASKS[k][0]: k for k in data}
    write_tasks(dest, tasks={n: GENERATIVE_TASKS[n] for n in names},
                overrides={n: {"dataset_kwargs": {"data_files": {TASKS[k][1]: str(data[k])}}}
                           for n, k in names.items()})
    loaded = get_task_dict(list(names), TaskManager(include_path=str(dest)))
    return {names[n]: task for n, task in loaded.items()}


def score(task, doc: dict, generation: str) -> float:
    """The task's primary metric for one generation (RULER: the doc's length key)."""
    metrics = task.process_results(doc, [generation])
    return float(metrics[str(doc["max_length"])] if "max_length" in doc else metrics["acc"])


def trained_model(cache: Path, tasks: dict[str, Any], budget: float, wall: float | None,
                  seed: int, retrain: bool, more: float | None = None):
    """The cached model of these budgets (trained if missing); ``more`` = continue it for that
    many more wall-clock seconds (its own cache entry)."""
    if more:
        model, tok, stats = trained_model(cache, tasks, budget, wall, seed, retrain)
        path = cache / f"model-{_key(budget, wall, seed)}-more{int(more)}"
        if (path / "stats.json").is_file() and not retrain:
            return _load(path)
        model.train()
        model, tok, extra = longctx.train_lm(
            lambda kind, doc: longctx.lm_eval_context(tasks[kind], doc), SPEC, TRAIN_SIZES,
            cpu_budget_s=float("inf"), wall_budget_s=more, seed=seed + 1, init=(model, tok))
        extra = {**extra, "steps": stats["steps"] + extra["steps"],
                 "train_cpu_seconds": stats["train_cpu_seconds"] + extra["train_cpu_seconds"],
                 "phases": [stats, extra]}
        return _save(path, model, tok, extra)
    path = cache / f"model-{_key(budget, wall, seed)}"
    if (path / "stats.json").is_file() and not retrain:
        return _load(path)
    model, tok, stats = longctx.train_lm(
        lambda kind, doc: longctx.lm_eval_context(tasks[kind], doc), SPEC, TRAIN_SIZES,
        cpu_budget_s=budget, wall_budget_s=wall, seed=seed)
    return _save(path, model, tok, stats)


def _key(budget: float, wall: float | None, seed: int) -> str:
    return hashlib.sha256(json.dumps([SPEC.as_dict(), TRAIN_SIZES, budget, wall, seed, 1],
                                     sort_keys=True).encode()).hexdigest()[:12]


def _load(path: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return (AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval(),
            AutoTokenizer.from_pretrained(path), json.loads((path / "stats.json").read_text()))


def _save(path: Path, model, tok, stats: dict):
    model.save_pretrained(path)
    tok.save_pretrained(path)
    (path / "stats.json").write_text(json.dumps(stats, indent=1))
    return model.eval(), tok, stats


def greedy(model, ids: list[int], max_new: int, eos: int) -> list[int]:
    """Greedy decoding of ``ids`` (KV cache), stopping after ``eos`` or ``max_new`` tokens."""
    out, past, inp = [], None, torch.tensor([ids])
    with torch.no_grad():
        for _ in range(max_new):
            res = model(input_ids=inp, past_key_values=past, use_cache=True)
            past, nxt = res.past_key_values, int(res.logits[0, -1].argmax())
            out.append(nxt)
            if nxt == eos:
                break
            inp = torch.tensor([[nxt]])
    return out


def contrast(model, tok, kind: str, doc: dict, context: str, ids: list[int], gen: list[int],
             correct: bool) -> dict[str, Any] | None:
    """Step 4: attributed input, target, foil (None: no differing token within the budget)."""
    cont = longctx.continuation(kind, doc) + longctx.EOT
    enc = tok(context + cont, add_special_tokens=False, return_offsets_mapping=True)
    if enc["input_ids"][:len(ids)] != ids:
        return None  # the gold continuation does not tokenize after the context's own ids
    gold, offsets = enc["input_ids"][len(ids):], enc["offset_mapping"][len(ids):]
    if correct:
        value = doc["outputs"][0] if kind == "niah" else doc["target"]
        at = len(context) + cont.rindex(value)
        k = next(i for i, (s, e) in enumerate(offsets) if e > at)
        prefix = ids + gold[:k]
        with torch.no_grad():
            logits = model(torch.tensor([prefix])).logits[0, -1]
        logits[gold[k]] = -float("inf")
        return {"input": prefix, "target": gold[k], "foil": int(logits.argmax()), "k": k,
                "at_value": True, "own_prefix": gen[:k] == gold[:k]}
    k = next((i for i, (g, o) in enumerate(zip(gen, gold)) if g != o), None)
    if k is None:
        return None
    value = doc["outputs"][0] if kind == "niah" else doc["target"]
    at = len(context) + cont.rindex(value)
    value_k = next(i for i, (s, e) in enumerate(offsets) if e > at)
    return {"input": ids + gen[:k], "target": gen[k], "foil": gold[k], "k": k,
            "at_value": k >= value_k, "own_prefix": True}


def where_top(top: int, evidence: list[int], value_pos: list[int], n_ctx: int,
              question_start: int, n_input: int) -> str:
    if top == n_input - 1:
        return "last token"
    if top in value_pos:
        return "value"
    if top in evidence:
        return "evidence"
    if top >= n_ctx:
        return "answer prefix"
    return "question" if top >= question_start else "elsewhere"


def bench(model, tok, tasks: dict[str, Any], methods: list[str]) -> tuple[list, dict]:
    cases, accuracy = [], {}
    eos = tok.eos_token_id
    for kind, task in tasks.items():
        task.build_all_requests(limit=None, rank=0, world_size=1)
        right = 0
        for inst in task.instances:
            doc, context = inst.doc, inst.args[0]
            ids = tok(context, add_special_tokens=False)["input_ids"]
            gen = greedy(model, ids, inst.args[1]["max_gen_toks"], eos)
            text = tok.decode([t for t in gen if t != eos])
            correct = score(task, doc, text) == 1.0
            right += correct
            c = contrast(model, tok, kind, doc, context, ids, gen, correct)
            record = {"task": kind, "doc_id": inst.doc_id, "correct": correct,
                      "generation": text, "n_context": len(ids)}
            if c is None:
                cases.append({**record, "skipped": "no differing token"})
                continue
            spans = list(needle_spans(doc, context))
            evidence = sentence_positions(tok, context, ids, spans, 0, len(c["input"]))
            value = doc["outputs"][0] if kind == "niah" else doc["target"]
            value_spans = [(s + context[s:e].rindex(value), s + context[s:e].rindex(value)
                            + len(value)) for s, e in spans if value in context[s:e]]
            value_pos = sentence_positions(tok, context, ids, value_spans, 0, len(c["input"]))
            q_at = context.rindex("What are all" if kind == "niah" else "Where is")
            q_start = next(i for i, (s, e) in enumerate(
                tok(context, add_special_tokens=False, return_offsets_mapping=True)
                ["offset_mapping"]) if e > q_at)
            alt = []  # babilong, wrong place: the fact stating the place the model answered
            pred = tok.decode([c["target"]]).strip()
            if kind == "babilong" and not correct and pred in longctx.PLACES:
                spans_alt = needle_spans({"target": pred, "question": doc["question"]}, context)
                alt = sentence_positions(tok, context, ids, list(spans_alt), 0, len(c["input"]))
            record.update(k=c["k"], at_value=c["at_value"], own_prefix=c["own_prefix"],
                          n_tokens=len(c["input"]), evidence_n=len(evidence),
                          target=tok.decode([c["target"]]), foil=tok.decode([c["foil"]]))
            for method in methods:
                rel = attribute(model, tok, c["input"], c["target"], c["foil"], method,
                                states=False).tokens.numpy()  # (n,)
                metrics = evidence_recovery(rel, evidence, [])
                top = int(np.argmax(np.abs(rel)))
                if alt:
                    got = evidence_recovery(rel, alt, [])
                    record_alt = {"alt_top1": got["evidence.top1"],
                                  "alt_random": got["evidence.random_top1"]}
                else:
                    record_alt = {}
                cases.append({**record, **record_alt, "method": method,
                              "top_at": where_top(top, evidence, value_pos, len(ids), q_start,
                                                   len(c["input"])),
                              **{k.removeprefix("evidence."): v for k, v in metrics.items()}})
        accuracy[kind] = right / max(1, len(task.instances))
        print(f"# {kind}: accuracy {accuracy[kind]:.3f} on {len(task.instances)} docs",
              file=sys.stderr, flush=True)
    return cases, accuracy


def tables(cases: list[dict], accuracy: dict, methods: list[str]) -> str:
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for c in cases:
        if "method" in c and c.get("n"):
            groups[(c["task"], c["correct"], c["method"])].append(c)
    head = ["task", "answers", "n", "m / N", "random top1 · prec · rank"] + [
        f"{SHORT[m]} top1 · prec · rank" for m in methods]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for kind in accuracy:
        for correct in (True, False):
            rows = groups.get((kind, correct, methods[0]), [])
            if not rows:
                lines.append(f"| {kind} | {'correct' if correct else 'incorrect'} | 0 |"
                             + " – |" * (len(head) - 3))
                continue
            mean = lambda rs, f: float(np.mean([r[f] for r in rs]))  # noqa: E731
            cells = [kind, "correct" if correct else "incorrect", str(len(rows)),
                     f"{mean(rows, 'n'):.1f} / {mean(rows, 'candidates'):.0f}",
                     f"{100 * mean(rows, 'random_top1'):.1f} · "
                     f"{100 * mean(rows, 'random_precision'):.1f} · "
                     f"{mean(rows, 'random_rank'):.1f}"]
            for m in methods:
                rs = groups[(kind, correct, m)]
                cells.append(f"{100 * mean(rs, 'top1'):.1f} · {100 * mean(rs, 'precision'):.1f}"
                             f" · {mean(rs, 'rank_abs'):.1f}")
            lines.append("| " + " | ".join(cells) + " |")
    where = ["last token", "value", "evidence", "answer prefix", "question", "elsewhere"]
    lines += ["", "Where the top-|R| token lies (% of cases; last token = the explained "
              "position's input token; value = the number / location inside the evidence "
              "sentence; evidence = the rest of that sentence; answer prefix = generated tokens "
              "before the explained one; question = the question (+ RULER's gen_prefix)):", "",
              "| task | answers | method | " + " | ".join(where) + " |",
              "|" + "---|" * (3 + len(where))]
    for (kind, correct, m), rs in sorted(groups.items(), key=lambda x: (x[0][0], not x[0][1],
                                                                        methods.index(x[0][2]))):
        cells = [f"{100 * np.mean([r['top_at'] == w for r in rs]):.0f}" for w in where]
        lines.append(f"| {kind} | {'correct' if correct else 'incorrect'} | {SHORT[m]} | "
                     + " | ".join(cells) + " |")
    alts = {m: [c for c in cases if c.get("method") == m and "alt_top1" in c] for m in methods}
    if alts[methods[0]]:
        lines += ["", "babilong, incorrect answers naming a place: evidence = the fact stating "
                  "the place the MODEL answered (top1 %; random m/N "
                  f"{100 * np.mean([c['alt_random'] for c in alts[methods[0]]]):.1f} %, "
                  f"n = {len(alts[methods[0]])}): " + ", ".join(
                      f"{SHORT[m]} {100 * np.mean([c['alt_top1'] for c in rs]):.1f}"
                      for m, rs in alts.items())]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cache", default=str(ROOT / "bench" / ".cache" / "longctx"))
    parser.add_argument("--n-test", type=int, default=60, help="test docs per task")
    parser.add_argument("--cpu-budget", type=float, default=600.0, help="training CPU seconds")
    parser.add_argument("--wall-budget", type=float, default=None,
                        help="also stop training after this many wall-clock seconds")
    parser.add_argument("--more", type=float, default=None,
                        help="continue the cached model for this many more wall-clock seconds")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--retrain", action="store_true")
    parser.add_argument("--train-only", action="store_true")
    parser.add_argument("--out", default=None, help="write per-case values (JSON)")
    args = parser.parse_args(argv)
    methods = [m for m in args.methods.split(",") if m]
    unknown = [m for m in methods if m not in SHORT]
    if unknown:
        parser.error(f"unknown method(s) {', '.join(unknown)}: supported {', '.join(SHORT)}")
    torch.set_num_threads(args.threads)
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    (cache / ".gitignore").write_text("*\n")  # models and data stay out of git
    data = {kind: longctx.write_jsonl(
        cache / "data" / f"{kind}.jsonl",
        longctx.make_docs(kind, args.n_test, TEST_SEED + i, TEST_SIZES[kind]))
        for i, kind in enumerate(TASKS)}
    tasks = load_tasks(Path(tempfile.mkdtemp(prefix="longctx-tasks-")), data)
    model, tok, stats = trained_model(cache, tasks, args.cpu_budget, args.wall_budget,
                                     args.seed, args.retrain, args.more)
    print(f"# model: {stats['n_params']} params, {stats['steps']} steps, "
          f"{stats['train_cpu_seconds']} cpu-s, loss {stats['final_loss']}", file=sys.stderr)
    if args.train_only:
        return 0
    started = time.perf_counter()
    cases, accuracy = bench(model, tok, tasks, methods)
    skipped = sum(1 for c in cases if "skipped" in c)
    print(f"model {stats['n_params'] / 1e6:.2f}M params, {stats['steps']} steps "
          f"({stats['train_cpu_seconds']:.0f} CPU-s); accuracy (task metric) "
          + ", ".join(f"{k} {100 * a:.1f} %" for k, a in accuracy.items())
          + f"; {args.n_test} docs per task; {skipped} skipped; "
          f"{time.perf_counter() - started:.0f}s\n")
    print("Evidence recovery (mean over cases): top1 = the evidence sentence holds the top-|R| "
          "token (%), prec = share of evidence among the m top-|R| tokens (%), rank = rank of "
          "the best evidence token by |R|; random = m/N, m/N, (N+1)/(m+1)\n")
    print(tables(cases, accuracy, methods))
    if args.out:
        Path(args.out).write_text(json.dumps(
            {"config": {**vars(args), "host_cpus": os.cpu_count(), "torch": torch.__version__},
             "model": stats, "accuracy": accuracy, "cases": cases}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
