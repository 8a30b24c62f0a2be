"""First-error localiser on planted errors (issue #14, item 6): hit rate, baselines, cost per case.

Usage:
    python bench/bench_localiser.py          # builds zoo/llama-steps if needed; 100 cases
    python bench/bench_localiser.py --cases 100 --budgets 4,8,full --top-k 3 --out loc.json

1. The steps model (``zoo/llama-steps``, ``zoo.build.build_steps_model``; cached by spec hash) and
   lm-eval's own ``xai_steps`` task (``TaskManager(include_path=tasks/)``); every test doc's
   greedy generation (``contrast.rollouts.greedy_continue``, EOS or 40 tokens), scored by
   ``task_scorer`` (the task's regex filter ``#### (\\d+)`` and exact_match).
2. Planted errors (``zoo.plant.plant_cases``): on docs solved exactly as written, the operand or
   the result of a random step is replaced by a wrong number at position t* and the model
   continues greedily; kept when the sample is then incorrect.
3. Per case and budget: ``first_error(model, tokenizer, prompt, planted, score, top_k, max_rollouts
   = budget, max_rollout_tokens=40, batch_size=8, until=…)``; ``full`` = every position ×
   (top_k − 1) alternatives. The brute-force ``plant.earliest_flip`` (every position × every
   top-k alternative, no budget) gives the earliest flipping position t_min ≤ t*.
4. Rates over cases: ``exact`` (found position = t*), ``at or before`` (found ≤ t*), ``= t_min``
   (found = the brute-force earliest flip), ``found``; baselines without rollouts: a uniformly
   random generated position (expected exact rate mean(1/len), and one seeded draw per case) and
   the lowest top-1/top-2 margin position. Cost per case: rollouts, model forward calls (counted
   by a forward pre-hook: the one full-sequence forward plus every decoding step of every batched
   ``generate``), generated rollout tokens, and seconds (wall; the machine load is printed).
5. The model's own wrong answers: t_dev = the first generated token that differs from the doc's
   written-out solution; the same localiser runs, brute force and baselines are reported for them.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from harness_xai.contrast.rollouts import first_error, greedy_continue, task_scorer  # noqa: E402
from harness_xai.zoo import plant as planting  # noqa: E402
from harness_xai.zoo import tasks_dir  # noqa: E402
from harness_xai.zoo.build import build_steps_model  # noqa: E402

MAX_TOKENS = 40  # the task's max_gen_toks


class ForwardCounter:
    def __init__(self, model):
        self.calls = 0
        model.register_forward_pre_hook(self._count)

    def _count(self, module, args):
        self.calls += 1


def load(zoo: str):
    from lm_eval.tasks import TaskManager, get_task_dict
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = build_steps_model(zoo)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    task = get_task_dict(["xai_steps"], TaskManager(include_path=str(tasks_dir())))["xai_steps"]
    return path, model, tokenizer, task


def generate_all(model, tokenizer, docs, batch: int = 32) -> list[list[int]]:
    eos = tokenizer.eos_token_id
    out = []
    for start in range(0, len(docs), batch):
        rows = [tokenizer(d["prompt"], add_special_tokens=False)["input_ids"]
                for d in docs[start:start + batch]]
        out.extend(greedy_continue(model, rows, MAX_TOKENS, eos, (eos,)))
    return out


def run_case(model, tokenizer, counter, case, score, budget, top_k, until) -> dict:
    n = len(case.ids)
    max_rollouts = n * (top_k - 1) if budget == "full" else int(budget)
    before, started = counter.calls, time.perf_counter()
    result = first_error(model, tokenizer, case.prompt_ids, case.ids, score, top_k=top_k,
                         max_rollouts=max_rollouts, max_rollout_tokens=MAX_TOKENS, batch_size=8,
                         until=until, eos_token_id=tokenizer.eos_token_id)
    return {"position": result.position, "alternative": result.alternative,
            "rollouts": len(result.rollouts),
            "rollout_tokens": sum(len(r.ids) - r.position - 1 for r in result.rollouts),
            "forwards": counter.calls - before, "seconds": time.perf_counter() - started,
            "lowest_margin": min(range(n), key=lambda t: (result.margins[t], t))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--zoo", default=str(ROOT / "zoo"))
    ap.add_argument("--cases", type=int, default=100)
    ap.add_argument("--top-k", type=int, default=3)
    ap.add_argument("--budgets", default="4,8,16,full", help="max_rollouts per case; 'full' = all")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1: a tiny model; 2 ran >20× slower on a loaded machine)")
    ap.add_argument("--out", default=None, help="JSON with every case")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    load_avg = os.getloadavg()[0]
    started = time.perf_counter()
    path, model, tokenizer, task = load(args.zoo)
    build = json.loads((path / "zoo_build.json").read_text())
    until = task.config.generation_kwargs["until"]
    docs = list(task.test_docs())
    scorers = [task_scorer(task, doc) for doc in docs]
    t0 = time.perf_counter()
    gens = generate_all(model, tokenizer, docs)
    gen_seconds = time.perf_counter() - t0
    correct = [score(planting.rollout_text(tokenizer, g, until)) for g, score in zip(gens, scorers)]
    cases, skipped = planting.plant_cases(model, tokenizer, docs, gens, scorers, args.cases,
                                          args.seed, until, MAX_TOKENS)
    counter = ForwardCounter(model)
    budgets = [b.strip() for b in args.budgets.split(",")]
    rng = random.Random(args.seed + 1)
    rows = []
    for case in cases:
        score = scorers[case.doc_index]
        t0 = time.perf_counter()
        flip = planting.earliest_flip(model, tokenizer, case.prompt_ids, case.ids, score,
                                      args.top_k, MAX_TOKENS, until)
        row = {"doc": case.doc_index, "kind": case.kind, "step": case.step, "t_star": case.position,
               "length": len(case.ids), "t_min": flip.position,
               "flipping_positions": list(flip.flipping_positions),
               "brute_force_rollouts": flip.rollouts,
               "brute_force_seconds": time.perf_counter() - t0,
               "random": rng.randrange(len(case.ids)), "budgets": {}}
        for budget in budgets:
            row["budgets"][budget] = run_case(model, tokenizer, counter, case, score, budget,
                                              args.top_k, until)
        rows.append(row)
        if len(rows) % 10 == 0:
            print(f"… {len(rows)}/{len(cases)} cases ({time.perf_counter() - started:.0f}s)",
                  file=sys.stderr, flush=True)
    natural = natural_errors(model, tokenizer, counter, docs, gens, correct, scorers, budgets,
                             args.top_k, until)
    summary = summarise(rows, budgets)
    meta = {"model": str(path), "heldout_accuracy": build["stats"]["heldout_accuracy"],
            "train_seconds": build["stats"]["train_seconds"],
            "n_params": build["stats"]["n_params"],
            "test_accuracy": sum(correct) / len(docs), "docs": len(docs),
            "generation_seconds_all_docs": round(gen_seconds, 2), "cases": len(rows),
            "skipped": skipped, "top_k": args.top_k, "threads": args.threads,
            "load_average_at_start": load_avg, "load_average_at_end": os.getloadavg()[0],
            "total_seconds": round(time.perf_counter() - started, 1)}
    print_tables(meta, summary, budgets)
    print_natural(natural, budgets)
    if args.out:
        Path(args.out).write_text(json.dumps({"meta": meta, "summary": summary, "cases": rows,
                                              "natural": natural}, indent=1))
    return 0


def natural_errors(model, tokenizer, counter, docs, gens, correct, scorers, budgets, top_k,
                   until) -> list[dict]:
    """The model's own wrong answers: t_dev = the first generated token that differs from the
    doc's written-out solution (the first wrong step); the localiser is run as on planted cases."""
    rows = []
    for index, (doc, gen, ok) in enumerate(zip(docs, gens, correct)):
        if ok:
            continue
        gold = tokenizer(doc["solution"], add_special_tokens=False)["input_ids"]
        t_dev = next((i for i, (a, b) in enumerate(zip(gen, gold)) if a != b),
                     min(len(gen), len(gold)))
        prompt = tuple(tokenizer(doc["prompt"], add_special_tokens=False)["input_ids"])
        case = planting.Planted(index, "natural", -1, t_dev, -1, -1, prompt, tuple(gen), "")
        flip = planting.earliest_flip(model, tokenizer, prompt, gen, scorers[index], top_k,
                                      MAX_TOKENS, until)
        rows.append({"doc": index, "t_dev": t_dev, "length": len(gen), "t_min": flip.position,
                     "budgets": {b: run_case(model, tokenizer, counter, case, scorers[index], b,
                                             top_k, until) for b in budgets}})
    return rows


def print_natural(rows: list[dict], budgets: list[str]) -> None:
    if not rows:
        return
    n = len(rows)
    print(f"\nthe model's own errors: {n} docs; brute-force t_min == t_dev in "
          f"{sum(r['t_min'] == r['t_dev'] for r in rows)}/{n}; no flip at all in "
          f"{sum(r['t_min'] is None for r in rows)}/{n}")
    for budget in budgets:
        found = [r["budgets"][budget]["position"] for r in rows]
        hits = sum(f == r["t_dev"] for f, r in zip(found, rows))
        print(f"  budget {budget}: = t_dev {hits}/{n}, "
              f"found {sum(f is not None for f in found)}/{n}, rollouts/case "
              f"{sum(r['budgets'][budget]['rollouts'] for r in rows) / n:.1f}")
    print(f"  lowest margin = t_dev "
          f"{sum(r['budgets'][budgets[0]]['lowest_margin'] == r['t_dev'] for r in rows)}/{n}; "
          f"random expected {sum(1 / r['length'] for r in rows) / n:.3f}")


def summarise(rows: list[dict], budgets: list[str]) -> dict:
    def mean(values):
        values = list(values)
        return sum(values) / len(values) if values else float("nan")

    out = {"t_min == t*": mean(r["t_min"] == r["t_star"] for r in rows),
           "random exact (expected)": mean(1 / r["length"] for r in rows),
           "random at-or-before (expected)": mean((r["t_star"] + 1) / r["length"] for r in rows),
           "random exact (drawn)": mean(r["random"] == r["t_star"] for r in rows),
           "random at-or-before (drawn)": mean(r["random"] <= r["t_star"] for r in rows),
           "brute-force rollouts per case": mean(r["brute_force_rollouts"] for r in rows),
           "brute-force seconds per case": mean(r["brute_force_seconds"] for r in rows),
           "mean generation length": mean(r["length"] for r in rows),
           "by_budget": {}, "by_kind": {}}
    for budget in budgets:
        res = [(r, r["budgets"][budget]) for r in rows]
        out["by_budget"][budget] = {
            "exact": mean(b["position"] == r["t_star"] for r, b in res),
            "at or before": mean(b["position"] is not None and b["position"] <= r["t_star"]
                                 for r, b in res),
            "= t_min": mean(b["position"] == r["t_min"] for r, b in res),
            "found": mean(b["position"] is not None for r, b in res),
            "lowest margin exact": mean(b["lowest_margin"] == r["t_star"] for r, b in res),
            "lowest margin at or before": mean(b["lowest_margin"] <= r["t_star"] for r, b in res),
            "rollouts": mean(b["rollouts"] for _, b in res),
            "forwards": mean(b["forwards"] for _, b in res),
            "rollout tokens": mean(b["rollout_tokens"] for _, b in res),
            "seconds": mean(b["seconds"] for _, b in res)}
        for kind in planting.KINDS:
            sub = [(r, b) for r, b in res if r["kind"] == kind]
            out["by_kind"].setdefault(kind, {"cases": len(sub),
                                             "t_min == t*": mean(r["t_min"] == r["t_star"]
                                                                 for r, _ in sub)})
            out["by_kind"][kind][f"exact ({budget})"] = mean(b["position"] == r["t_star"]
                                                             for r, b in sub)
    return out


def print_tables(meta: dict, s: dict, budgets: list[str]) -> None:
    print(f"model {meta['model']}: {meta['n_params']} params, trained {meta['train_seconds']}s; "
          f"test exact_match {meta['test_accuracy']:.2f} on {meta['docs']} docs; "
          f"{meta['cases']} planted cases (skipped: {meta['skipped']}); top-k {meta['top_k']}; "
          f"load {meta['load_average_at_start']:.1f}→{meta['load_average_at_end']:.1f}; "
          f"total {meta['total_seconds']}s")
    print(f"\nbrute force: t_min == t* in {s['t_min == t*']:.2f} of cases; "
          f"{s['brute-force rollouts per case']:.1f} rollouts, "
          f"{s['brute-force seconds per case']:.2f} s per case; "
          f"mean generation length {s['mean generation length']:.1f} tokens\n")
    print("| method | budget | exact (= t*) | at or before t* | = t_min | found | rollouts/case "
          "| forwards/case | rollout tokens/case | s/case |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for budget in budgets:
        b = s["by_budget"][budget]
        print(f"| localiser | {budget} | {b['exact']:.2f} | {b['at or before']:.2f} | "
              f"{b['= t_min']:.2f} | {b['found']:.2f} | {b['rollouts']:.1f} | {b['forwards']:.1f} "
              f"| {b['rollout tokens']:.1f} | {b['seconds']:.3f} |")
    b = s["by_budget"][budgets[0]]
    print(f"| lowest margin | 0 | {b['lowest margin exact']:.2f} | "
          f"{b['lowest margin at or before']:.2f} | – | 1.00 | 0 | 1 | 0 | – |")
    print(f"| random position (expected) | 0 | {s['random exact (expected)']:.3f} | "
          f"{s['random at-or-before (expected)']:.2f} | – | 1.00 | 0 | 0 | 0 | – |")
    print(f"| random position (one draw per case) | 0 | {s['random exact (drawn)']:.2f} | "
          f"{s['random at-or-before (drawn)']:.2f} | – | 1.00 | 0 | 0 | 0 | – |")
    print("\nby planted kind:")
    for kind, k in s["by_kind"].items():
        print(f"  {kind}: {k}")


if __name__ == "__main__":
    sys.exit(main())
