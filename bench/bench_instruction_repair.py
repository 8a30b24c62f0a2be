"""Cost of the IFEval contrast (``contrast/instructions.py``, rule ``instruction-repair:full-target``)
on long responses: edits proposed, edits scored by the task, seconds per case.

Usage:
    python bench/bench_instruction_repair.py                # zoo model in zoo/ if built, else a micro one
    python bench/bench_instruction_repair.py --lengths 128,512,896 --out repair.json

1. lm-eval's own ``ifeval.yaml`` bound to local docs (one per instruction kind below), an HFLM on
   a zoo model (its only role: the one forward that orders the edits by Δ).
2. Per response length N (generated tokens): an English text with commas, capitals and "river",
   cut to N tokens, is the logged response; its ids are put in the generation cache as if lm-eval
   had recorded them, and the task's own ``process_results`` gives the per-instruction flags.
3. ``generation.generation_case`` per doc, timed (wall, best of 3): compliant edits → the edits in
   the model's own tokens → one forward → edits scored by the task in Δ order until one passes.
   The text is not the model's greedy output, so many edits have Δ < 0 (column ``<floor``: left
   out below the near-tie floor); a real greedy generation has Δ ≥ 0 at every position.
The kinds cover the three edit shapes: insertion at every boundary (keywords, title; also composed
with a rewrite), truncation at every boundary (end phrase, "less than N words"), one rewrite
(no commas, lowercase).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from harness_xai.contrast.case import Options  # noqa: E402
from harness_xai.contrast.generation import Generation, generation_case  # noqa: E402

KINDS = {
    "keywords:existence (insert)": (["keywords:existence"], [{"keywords": ["lantern"]}]),
    "detectable_format:title (insert)": (["detectable_format:title"], [{}]),
    "startend:end_checker (truncate)": (["startend:end_checker"],
                                        [{"end_phrase": "Any other questions?"}]),
    "number_words less than 20 (truncate)": (["length_constraints:number_words"],
                                             [{"relation": "less than", "num_words": 20}]),
    "punctuation:no_comma (rewrite)": (["punctuation:no_comma"], [{}]),
    "title + no_comma (insert, composed)": (["detectable_format:title", "punctuation:no_comma"],
                                            [{}, {}]),
}
TEXT = ("The old River runs past the Stone Mill, and every spring the village children walk along "
        "its bank, watching herons fish in the shallow water near the bridge. ")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", default="128,512,896")
    parser.add_argument("--model", default=None, help="model directory (default: zoo or micro)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    from fixtures.lm_eval_tasks import builtin_tasks_dir, write_task
    from fixtures.offline_assets import build_punkt_tab
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    build_punkt_tab()
    tmp = Path(tempfile.mkdtemp(prefix="bench-repair-"))
    model = args.model or _model(tmp)
    docs = [{"key": i, "prompt": f"Tell me about the river. ({name})", "instruction_id_list": ids,
             "kwargs": kw} for i, (name, (ids, kw)) in enumerate(KINDS.items())]
    folder = write_task(tmp / "tasks", "bench_ifeval",
                        {"include": str(builtin_tasks_dir() / "ifeval" / "ifeval.yaml")},
                        {"train": docs})
    task = TaskManager(include_path=str(folder), include_defaults=False).load(
        ["bench_ifeval"])["tasks"]["bench_ifeval"]
    lm = HFLM(pretrained=str(model), device="cpu", dtype="float32", batch_size=1)
    rows = []
    print(f"model {model}; load {os.getloadavg()[0]:.1f}")
    print(f"{'kind':40s} {'N':>5s} {'edits':>6s} {'<floor':>6s} {'scored':>6s} {'s/case':>8s}  outcome")
    for n in map(int, args.lengths.split(",")):
        text = TEXT * (n // 20 + 2)
        for i, (name, _) in enumerate(KINDS.items()):
            doc = docs[i]
            context = task.doc_to_text(doc)
            ctx_ids = lm.tok_encode(context)
            ids = lm.tok_encode(text, add_special_tokens=False)[:n]
            raw = lm.tok_decode(ids)
            results = task.process_results(doc, [raw])
            sample = {"doc_id": i, "doc": doc, "filter": "none", "target": 0, "doc_hash": str(i),
                      "prompt_hash": str(i), "target_hash": "0",
                      "arguments": [[context, {"until": [], "max_gen_toks": 1280}]],
                      "resps": [[raw]], "filtered_resps": [raw], **results}
            best, case = None, None
            for _ in range(3):
                cache = {i: Generation(ctx_ids, ids, raw)}
                start = time.perf_counter()
                case = generation_case(sample, task, "bench_ifeval", lm,
                                       Options(metric="prompt_level_strict_acc"), cache)
                took = time.perf_counter() - start
                best = took if best is None else min(best, took)
            info = case.method_params.get("contrast", {}).get("repair", {})
            outcome = case.skip_reason or f"contrast at generated token {case.method_params['contrast']['generated_prefix']}"
            row = {"kind": name, "n_generated": n, "edits": info.get("edits"),
                   "near_ties": info.get("near_ties"), "scored": info.get("verified"),
                   "seconds": round(best, 4), "outcome": outcome}
            rows.append(row)
            print(f"{name:40s} {n:5d} {row['edits']!s:>6s} {row['near_ties']!s:>6s} "
                  f"{row['scored']!s:>6s} {best:8.3f}  {outcome}")
            if args.out:
                Path(args.out).write_text(json.dumps(rows, indent=1))


def _model(tmp: Path) -> Path:
    zoo = ROOT / "zoo" / "llama"
    if (zoo / "config.json").exists():
        return zoo
    from harness_xai.zoo import build_model
    from harness_xai.zoo.train import TrainSpec

    return build_model(tmp / "zoo", spec=TrainSpec(steps=10, kv_batch=4, arith_batch=8,
                                                   tokenizer_texts=1000, kv_records=(4, 8)),
                       progress=False)


if __name__ == "__main__":
    main()
