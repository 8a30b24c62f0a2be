"""Evidence recovery on the trained zoo: how often each attribution method ranks the evidence first.

Usage:
    python bench/bench_evidence.py            # 6 models × steps 0,300,540 × 3 methods × 2 tasks
    python bench/bench_evidence.py --models llama-l --steps 540 --methods attnlrp,cp-lrp --limit 40
    python bench/bench_evidence.py --methods attnlrp,cp-lrp,grad-x-input,integrated-gradients \
        --out evidence.json

For every zoo model (``--models``) × checkpoint (``--steps``) × task (``--tasks``: ``xai_kv``,
``xai_arith``) × doc (the first ``--limit`` test docs of the task, via lm-eval's own task objects):

1. Context = ``task.doc_to_text(doc)`` (the prompt lm-eval scores; zero-shot), ids = its encoding
   without special tokens (the zoo tokenizer adds none, as in lm-eval's HFLM). Every choice is one
   token (``target_delimiter + choice``); one forward gives their logits at the last position.
2. The answer is the argmax choice (lm-eval's ``acc``: single-token continuations share the
   normaliser). Contrast: a WRONG answer is explained as the pipeline does (target = the
   predicted token, foil = the gold token); a CORRECT one as target = gold token, foil = the
   runner-up choice.
3. ``harness_xai.attribute(model, tokenizer, ids, target, foil, method, states=False)`` per method.
4. Evidence positions from the doc's ``evidence_span`` with the project's mapping
   (``contrast.evidence.evidence_positions``): xai_kv = the queried record's value (the stored
   definition); ``value+key`` = the doc's ``record_span`` (key and value of the queried record,
   an extra column, never stored); ``top-1 token`` = the earlier input positions holding the
   token the model ranks first over its whole vocabulary (a diagnostic for wrong answers: the
   record value the model actually retrieved, often not among the choices; cases where that
   token does not occur in the input are left out); xai_arith = every operand.
5. Metrics per case from ``analysis.evidence.evidence_recovery`` (the stored per-case metrics):
   ``evidence.top1`` (best evidence token ranked first by |R|), ``evidence.rank_abs``,
   ``evidence.precision`` (share of evidence among the m top-|R| tokens: all operands on top),
   and the exact random baseline ``evidence.random_top1`` = m / N. No token is special here (no
   BOS), so every token is a candidate.
6. Rates = means over the cases of a group (task, model, step, correct/incorrect, method);
   printed as markdown tables (``correct / incorrect`` in each cell, ``–`` for an empty group)
   and written with the per-case values to ``--out`` (JSON). A last diagnostic table: how often
   the top-|R| token is the LAST input token (the query key / ``=``; random 1/N).
Checked against the pipeline: for the wrong answers of llama-l step 540 on xai_kv (0-shot,
attnlrp) the per-case ranks and shares equal those ``harness-xai run`` stored (demo store).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from harness_xai import attribute  # noqa: E402
from harness_xai.analysis.evidence import evidence_recovery  # noqa: E402
from harness_xai.contrast.evidence import FIELD, evidence_positions  # noqa: E402

MODELS = ("llama-s", "llama-m", "llama-l", "neox-s", "neox-m", "neox-l")
METHODS = ("attnlrp", "cp-lrp", "grad-x-input")
SHORT = {"attnlrp": "AttnLRP", "cp-lrp": "CP-LRP", "grad-x-input": "grad×input",
         "integrated-gradients": "IG"}
#: evidence variants: name → (doc field read as the evidence span, tasks it applies to);
#: "top-1 token" is computed per case (not a doc field)
VARIANTS = {"value": (FIELD, ("xai_kv", "xai_arith")), "value+key": ("record_span", ("xai_kv",)),
            "top-1 token": (None, ("xai_kv",))}


def load_tasks(names: list[str]) -> dict[str, Any]:
    """lm-eval task objects of the bundled tasks (their own docs, prompts, choices, targets)."""
    from lm_eval.tasks import TaskManager, get_task_dict

    from harness_xai.zoo import tasks_dir

    return get_task_dict(names, TaskManager(include_path=str(tasks_dir())))


def task_items(task, limit: int | None) -> list[dict[str, Any]]:
    """Step 1 without the model: context, choices and gold index of the first ``limit`` docs."""
    items = []
    delimiter = task.config.target_delimiter
    for doc_id, doc in enumerate(task.test_docs()):
        if limit is not None and doc_id >= limit:
            break
        items.append({"doc_id": doc_id, "doc": doc, "context": task.doc_to_text(doc),
                      "continuations": [delimiter + c for c in task.doc_to_choice(doc)],
                      "gold": int(task.doc_to_target(doc))})
    return items


def choice_ids(tokenizer, continuations: list[str]) -> list[int] | None:
    """The single token of each continuation, or ``None`` if one is several tokens."""
    ids = [tokenizer(c, add_special_tokens=False)["input_ids"] for c in continuations]
    return [i[0] for i in ids] if all(len(i) == 1 for i in ids) else None


def contrast(logits: torch.Tensor, choices: list[int], gold: int) -> tuple[int, int, int]:
    """Step 2: (predicted choice, target id, foil id) from the last-position logits (vocab,)."""
    scores = logits[choices]  # (n_choices,)
    pred = int(torch.argmax(scores))
    if pred != gold:
        return pred, choices[pred], choices[gold]
    runner_up = max((i for i in range(len(choices)) if i != gold), key=lambda i: float(scores[i]))
    return pred, choices[gold], choices[runner_up]


def bench_checkpoint(path: Path, tasks: dict[str, Any], items: dict[str, list[dict]],
                     methods: list[str]) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Steps 1–5 on one checkpoint: per-case records and accuracy per task."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    cases, accuracy = [], {}
    for name, task_list in items.items():
        correct_n = 0
        for item in task_list:
            ids = tokenizer(item["context"], add_special_tokens=False)["input_ids"]
            choices = choice_ids(tokenizer, item["continuations"])
            if choices is None:
                continue
            with torch.no_grad():
                logits = model(torch.tensor([ids])).logits[0, -1].float()  # (vocab,)
            pred, target, foil = contrast(logits, choices, item["gold"])
            correct = pred == item["gold"]
            correct_n += correct
            evidence = {}
            for variant, (field, applies) in VARIANTS.items():
                if name in applies and field in item["doc"]:
                    doc = {**item["doc"], FIELD: item["doc"][field]}
                    evidence[variant] = evidence_positions(tokenizer, tasks[name], doc,
                                                           item["context"], ids)
            if name == "xai_kv":  # diagnostic: where the model's free top-1 token sits
                top = int(torch.argmax(logits))
                evidence["top-1 token"] = [k for k, t in enumerate(ids[:-1]) if t == top]
            for method in methods:
                rel = attribute(model, tokenizer, ids, target, foil, method,
                                states=False).tokens.numpy()  # (n,)
                record = {"task": name, "doc_id": item["doc_id"], "correct": correct,
                          "method": method, "n_tokens": len(ids),
                          "last_top": bool(np.argmax(np.abs(rel)) == len(ids) - 1)}
                for variant, positions in evidence.items():
                    metrics = evidence_recovery(rel, positions, [])
                    record[variant] = {k.removeprefix("evidence."): v for k, v in metrics.items()
                                       if k != "evidence.norm"}
                cases.append(record)
        accuracy[name] = correct_n / max(1, len(task_list))
    return cases, accuracy


def summarise(cases: list[dict[str, Any]]) -> dict[tuple, dict[str, float]]:
    """Step 6: (task, model, step, correct, method, variant) → case count ``n`` and the mean of
    each metric (``m`` = evidence tokens per case, ``random_last`` = 1/N)."""
    groups: dict[tuple, list[dict[str, float]]] = defaultdict(list)
    for c in cases:
        for variant in VARIANTS:
            if c.get(variant):
                groups[(c["task"], c["model"], c["step"], c["correct"], c["method"],
                        variant)].append({**c[variant], "m": c[variant]["n"],
                                          "last_top": float(c["last_top"]),
                                          "random_last": 1.0 / c[variant]["candidates"]})
    names = ("top1", "rank_abs", "precision", "random_top1", "random_precision", "candidates",
             "m", "last_top", "random_last")
    return {key: {"n": len(rows), **{m: float(np.mean([r[m] for r in rows])) for m in names}}
            for key, rows in groups.items()}


def _cell(summary, key_base: tuple, method: str, variant: str, metric: str) -> str:
    vals = []
    for correct in (True, False):
        row = summary.get((*key_base[:3], correct, method, variant))
        vals.append("–" if row is None else f"{100 * row[metric]:.1f}")
    return " / ".join(vals)


def table(summary, accuracy, models, steps, methods, task: str, variant: str,
          metric: str = "top1", random_metric: str = "random_top1") -> str:
    """One markdown table: rows model × step, cells ``correct / incorrect`` in percent."""
    head = ["model", "step", "acc", "n ✓ / ✗", "random"] + [SHORT.get(m, m) for m in methods]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for model in models:
        for step in steps:
            base = (task, model, step)
            ns = [summary.get((*base, c, methods[0], variant), {}).get("n", 0)
                  for c in (True, False)]
            if not any(ns):
                continue
            acc = accuracy.get((model, step), {}).get(task)
            cells = [model, str(step), "–" if acc is None else f"{100 * acc:.1f}",
                     f"{ns[0]} / {ns[1]}", _cell(summary, base, methods[0], variant,
                                                 random_metric)]
            cells += [_cell(summary, base, m, variant, metric) for m in methods]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def pooled(summary, methods, task, variant, metric="top1", random_metric="random_top1") -> str:
    """Rates pooled over models and steps, per step and answer (a compact trend line)."""
    acc: dict[tuple, list[float]] = defaultdict(list)
    for (t, _model, step, correct, method, v), row in summary.items():
        if t == task and v == variant:
            acc[(step, correct, method)].append((row[metric], row["n"]))
            if method == methods[0]:
                acc[(step, correct, "random")].append((row[random_metric], row["n"]))
    steps = sorted({k[0] for k in acc})
    head = ["step", "answers", "n", "random"] + [SHORT.get(m, m) for m in methods]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for step in steps:
        for correct in (True, False):
            cols = []
            for m in ["random", *methods]:
                pairs = acc.get((step, correct, m), [])
                n = sum(w for _, w in pairs)
                cols.append("–" if not n else f"{100 * sum(v * w for v, w in pairs) / n:.1f}")
            n = sum(w for _, w in acc.get((step, correct, methods[0]), []))
            lines.append(f"| {step} | {'correct' if correct else 'incorrect'} | {n} | "
                         + " | ".join(cols) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--zoo", default=str(ROOT / "zoo"), help="zoo directory (built)")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--steps", default="0,300,540", help="checkpoint steps")
    parser.add_argument("--methods", default=",".join(METHODS),
                        help="attribution methods (integrated-gradients: ~33× the cost)")
    parser.add_argument("--tasks", default="xai_kv,xai_arith")
    parser.add_argument("--limit", type=int, default=None, help="first N test docs per task")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--out", default=None, help="write summary and per-case values (JSON)")
    args = parser.parse_args(argv)
    models = [m for m in args.models.split(",") if m]
    steps = [int(s) for s in args.steps.split(",") if s]
    methods = [m for m in args.methods.split(",") if m]
    task_names = [t for t in args.tasks.split(",") if t]
    torch.set_num_threads(args.threads)
    zoo = Path(args.zoo)
    missing = [f"{m}/step{s}" for m in models for s in steps
               if not (zoo / m / f"step{s}" / "config.json").is_file()]
    if missing:
        parser.error(f"not in the zoo at {zoo}: {', '.join(missing)} (build it with "
                     "`harness-xai zoo build`)")
    tasks = load_tasks(task_names)
    items = {name: task_items(tasks[name], args.limit) for name in task_names}
    started = time.perf_counter()
    cases: list[dict[str, Any]] = []
    accuracy: dict[tuple, dict[str, float]] = {}
    for model in models:
        for step in steps:
            t0 = time.perf_counter()
            found, acc = bench_checkpoint(zoo / model / f"step{step}", tasks, items, methods)
            for c in found:
                c.update(model=model, step=step)
            cases += found
            accuracy[(model, step)] = acc
            print(f"# {model} step{step}: acc " + ", ".join(f"{t} {a:.2f}" for t, a in acc.items())
                  + f" ({time.perf_counter() - t0:.1f}s)", file=sys.stderr, flush=True)
    seconds = time.perf_counter() - started
    summary = summarise(cases)
    limit = f"first {args.limit} docs" if args.limit else "all docs"
    print(f"Evidence ranked first by |R| (evidence.top1, %), cells = correct / incorrect answers; "
          f"{limit} per task; {len(cases)} attributions in {seconds:.0f}s\n")
    for task in task_names:
        for variant, (_, applies) in VARIANTS.items():
            if task not in applies:
                continue
            label = {"xai_kv": {"value": "queried value", "value+key": "queried value + key",
                                "top-1 token": "the earlier occurrences of the token the "
                                               "model ranks FIRST over its whole vocabulary "
                                               "(cases where it occurs)"},
                     "xai_arith": {"value": "all operands"}}[task][variant]
            print(f"### {task}: evidence = {label} (top1)\n")
            print(table(summary, accuracy, models, steps, methods, task, variant) + "\n")
            print(f"pooled over models:\n\n{pooled(summary, methods, task, variant)}\n")
    if "xai_arith" in task_names:
        print("### xai_arith: share of operands among the m top-|R| tokens (evidence.precision, "
              "mean %; m = number of operands, random = m/N)\n")
        print(table(summary, accuracy, models, steps, methods, "xai_arith", "value",
                    "precision", "random_precision") + "\n")
    for task in task_names:
        print(f"### {task}: the top-|R| token is the LAST input token (the query key / '='), "
              "% of cases; random = 1/N\n")
        print(pooled(summary, methods, task, "value", "last_top", "random_last") + "\n")
    if args.out:
        blob = {"config": {**vars(args), "host_cpus": os.cpu_count(), "torch": torch.__version__,
                           "seconds": round(seconds, 1)},
                "accuracy": [{"model": m, "step": s, **a} for (m, s), a in accuracy.items()],
                "summary": [dict(zip(("task", "model", "step", "correct", "method", "variant"),
                                     k), **v) for k, v in summary.items()],
                "cases": cases}
        Path(args.out).write_text(json.dumps(blob, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
