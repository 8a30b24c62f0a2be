"""Attribution and graph cost of a 7B-shaped model on one GPU; a CPU smoke mode; a memory model.

Usage:
    python bench/bench_gpu.py                    # GPU: the #15 plan below on the 7B shape, bf16,
                                                 # SDPA, ≤ ~5 min on one H200 (--budget-s)
    python bench/bench_gpu.py --smoke            # CPU, tiny shape, the same plan at small n:
                                                 # proves the script (≈ a minute)
    python bench/bench_gpu.py --project          # CPU: bytes/token of attribution and graph on a
                                                 # 7B-proportional narrow model → 7B projection
    options: --layers L --graph-full --budget-s S --json FILE (default $OUT/bench_gpu.json)

1. Model: a Llama config of Mistral-7B's shape (hidden 4096, 32 layers, 32 heads, 8 KV heads,
   MLP 14336, vocab 32000, RoPE θ 1e6, 131072 positions; ``--layers`` shrinks the depth),
   random weights built directly on the device, bf16, ``attn_implementation="sdpa"``.
2. The plan (``PLAN_GPU``: n, row, repeats; rows at n ≤ 4096 get a warm-up, longer ones run once
   after the short rows warmed the kernels; median seconds, peak memory of the first timed call;
   the JSON is rewritten after every row; a row that fails or runs out of memory is recorded
   and the plan goes on; rows that would start after ``--budget-s`` are recorded as skipped):
   - ``plain``: one forward + backward of logit[a] − logit[b] to the input embeddings
     (parameters frozen, as ``attribute`` freezes them) — the cost floor of any gradient method;
     ``plain-ckpt``: the same gradient through the engine, checkpointed (``grad-x-input``);
   - ``attnlrp``: ``harness_xai.attribute`` (one forward + one backward under the AttnLRP rules,
     internal states and heads captured), ``-nostates`` without them, ``-ckpt`` checkpointed;
   - ``batch-B`` at n = 512: one ``explain`` of B short cases (cases/s: issue #15's throughput);
     ``batch-auto``: B = what ``--xai-batch-size auto`` picks from free memory;
   - ``graph`` at 32k and 128k: ``harness_xai.graph`` streamed block by block (checkpointed
     engine pass, then one block re-run at a time), the CLI's pruning (mass 0.85, ≤ 1000 edges
     per block) with at most 1024 target rows per block (``--graph-full``: all rows over the
     node threshold). ``forwards``: block runs / blocks per call (a pre-hook on each MLP).
   ``--smoke`` runs the same plan on the tiny shape with n mapped by ``SMOKE_LENGTHS``.
   ratio = seconds / plain (or plain-ckpt) seconds at the same n. GPU peak memory:
   ``torch.cuda.max_memory_allocated`` minus the
   memory held before the call (weights); CPU: peak RSS delta (kernel high-water mark reset
   before the call, freed heap returned first), since torch's CPU allocations are invisible to
   tracemalloc. CPU modes re-run themselves with ``MALLOC_MMAP_THRESHOLD_=65536`` so every
   block above 64 KiB is its own mapping, returned to the system when freed: RSS then follows
   the live tensors (with glibc's adaptive threshold, freed blocks stay resident and the
   figures were off by ±20 %). Out-of-memory is recorded as such and the run goes on.
3. ``--project``: the same measurements on a narrow model with 7B's ratios (hidden 512, 8 heads /
   2 KV heads of 64, MLP 1792, bf16) at two lengths and two depths (2 and 4 blocks). The slope
   between the lengths is the memory per token s(L) at depth L; s(L) = α + β·L separates what
   every block keeps (β: saved activations, captured states) from what is paid once (α: the
   embeddings, the one block a checkpointed backward recomputes, the head). At fixed ratios
   activations are linear in the width, so bytes/token(7B) ≈ (4096 / 512) · (α + 32 β).
   Printed as a PROJECTION, next to the measured figures.
Output: a Markdown table on stdout (paste into bench/README.md with date and machine) and, with
``--json``, the raw records.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SHAPE_7B = dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                num_attention_heads=32, num_key_value_heads=8, vocab_size=32000,
                max_position_embeddings=131072, rope_theta=1e6)
SHAPE_NARROW = dict(hidden_size=512, intermediate_size=1792, num_hidden_layers=4,
                    num_attention_heads=8, num_key_value_heads=2, vocab_size=32000,
                    max_position_embeddings=131072, rope_theta=1e6)  # 7B's ratios, 1/8 wide
SHAPE_TINY = dict(hidden_size=64, intermediate_size=224, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=1, vocab_size=512,
                  max_position_embeddings=4096, rope_theta=1e6)


def build_model(shape: dict, device: str, dtype: torch.dtype, seed: int = 0):
    """Random-weight Llama of ``shape`` built on ``device`` (no host copy of the weights)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(**{k: v for k, v in shape.items() if k != "rope_theta"},
                         rope_parameters={"rope_type": "default", "rope_theta": shape["rope_theta"]},
                         tie_word_embeddings=False, attn_implementation="sdpa")
    with torch.device(device):
        model = LlamaForCausalLM(config).to(dtype).eval()
    with torch.no_grad():  # random init leaves norm weights at 1: perturb them
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


# -- memory ------------------------------------------------------------------------------------
def _rss(key: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key))


def peak_memory(fn, device: str) -> tuple[float, int]:
    """(seconds, peak bytes above the memory held before ``fn()``)."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        return time.perf_counter() - start, torch.cuda.max_memory_allocated() - base
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    base = _rss("VmRSS")
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start, _rss("VmHWM") - base


def measure(fn, device: str, repeats: int, warm: bool = True) -> dict:
    """Median seconds over ``repeats`` (after a warm-up unless ``warm`` is False: long rows run
    once, after the short rows warmed the kernels) and peak memory of the first one."""
    try:
        if warm:
            fn()  # warm-up (kernels, allocator)
        seconds, peak = peak_memory(fn, device)
        times = [seconds]
        for _ in range(repeats - 1):
            times.append(peak_memory(fn, device)[0])
        return {"seconds": statistics.median(times), "peak_bytes": peak}
    except torch.OutOfMemoryError:
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
        return {"seconds": None, "peak_bytes": None, "error": "out of memory"}
    except Exception as exc:  # a failing row is recorded, the plan goes on
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
        return {"seconds": None, "peak_bytes": None,
                "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"}


# -- the measured calls ------------------------------------------------------------------------
def plain(model, ids, a: int, b: int) -> None:
    frozen = [p for p in model.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    try:
        emb = model.get_input_embeddings()(ids).detach().requires_grad_(True)
        logits = model(inputs_embeds=emb, use_cache=False, logits_to_keep=1).logits[0, -1].float()
        torch.autograd.grad(logits[a] - logits[b], emb)
    finally:
        for p in frozen:
            p.requires_grad_(True)


#: graph rows: the CLI's pruning defaults, target rows capped (``--graph-full`` lifts the cap)
GRAPH_PRUNE = {"mass": 0.85, "max_edges": 1000, "max_nodes": 1024}


def make_call(model, name: str, n: int, graph_prune: dict):
    """The measured function of row ``name`` at length ``n`` (module docstring, step 2)."""
    from harness_xai import attribute

    ids = torch.randint(3, model.config.vocab_size, (1, n),
                        generator=torch.Generator().manual_seed(n)).to(model.device)
    a, b = 1, 2
    if name == "plain":
        return lambda: plain(model, ids, a, b)
    if name == "plain-ckpt":  # the plain gradient through the engine, checkpointed
        return lambda: attribute(model, None, ids, a, b, method="grad-x-input", checkpoint=True,
                                 states=False)
    if name.startswith("attnlrp"):
        return lambda: attribute(model, None, ids, a, b, method="attnlrp",
                                 checkpoint="ckpt" in name, states="nostates" not in name)
    if name == "graph":
        from harness_xai.graph import graph
        return lambda: graph(model, None, ids, a, b, method="attnlrp", prune=graph_prune)
    if name.startswith("batch"):  # cases/s of short cases: one pass of B objectives
        from harness_xai.lrp.engine import explain
        from harness_xai.records import TokenTarget
        if name == "batch-auto":  # what --xai-batch-size auto picks from free memory
            from harness_xai.distributed.memory import rows_that_fit
            size = rows_that_fit(model, n)
        else:
            size = int(name.split("-")[1]) if "-" in name else 1
        rows = torch.randint(3, model.config.vocab_size, (size, n),
                             generator=torch.Generator().manual_seed(n))
        objectives = [TokenTarget(tuple(r.tolist()), a, b) for r in rows]

        def call():
            return explain(model, objectives, "attnlrp")
        call.rows = size
        return call
    raise ValueError(name)


#: the prepared plan: (n, row, repeats); ``--smoke`` maps the lengths onto a tiny CPU model
PLAN_GPU = [(4096, "plain", 3), (4096, "attnlrp", 3), (4096, "attnlrp-nostates", 3),
            (512, "batch-1", 5), (512, "batch-8", 3), (512, "batch-auto", 3),
            (32768, "plain-ckpt", 1), (32768, "attnlrp-ckpt-nostates", 1),
            (32768, "attnlrp-ckpt", 1), (32768, "graph", 1),
            (131072, "attnlrp-ckpt-nostates", 1), (131072, "graph", 1)]
SMOKE_LENGTHS = {4096: 256, 512: 64, 32768: 512, 131072: 1024}


def count_block_runs(model) -> list[int]:
    """A pre-hook on every block's MLP (fires in checkpoint re-runs too): [runs so far]."""
    runs = [0]
    for layer in model.model.layers:
        layer.mlp.register_forward_pre_hook(lambda *_: runs.__setitem__(0, runs[0] + 1))
    return runs


def run_plan(model, plan, device: str, graph_prune: dict, budget_s: float, json_path,
             header: dict) -> list[dict]:
    """Each row measured, printed and appended to ``json_path`` as it goes; rows that would
    start after ``budget_s`` seconds are recorded as skipped."""
    started = time.perf_counter()
    runs = count_block_runs(model)
    blocks = model.config.num_hidden_layers
    records, base = [], {}
    for n, name, repeats in plan:
        rec = {"n": n, "call": name}
        if time.perf_counter() - started > budget_s:
            rec.update(seconds=None, peak_bytes=None, error="skipped (time budget)")
        else:
            fn = make_call(model, name, n, graph_prune)
            if name.startswith("batch"):  # cases per pass (batch-auto: from free memory)
                rec["rows"] = fn.rows
            runs[0] = 0
            rec.update(measure(fn, device, repeats, warm=n <= 4096))
            rec["forwards"] = runs[0] / blocks / (repeats + (n <= 4096))
        if name in ("plain", "plain-ckpt") and rec.get("seconds"):
            base[n] = rec["seconds"]
        rec["ratio"] = rec["seconds"] / base[n] if rec.get("seconds") and base.get(n) else None
        if name.startswith("batch") and rec.get("seconds"):
            rec["cases_per_s"] = rec["rows"] / rec["seconds"]
        rec["bytes_per_token"] = rec["peak_bytes"] / n if rec.get("peak_bytes") else None
        records.append(rec)
        print(_row(rec), flush=True)
        if json_path:
            Path(json_path).write_text(json.dumps({**header, "records": records}, indent=1))
    return records


def run(shape: dict, device: str, dtype: torch.dtype, attr_lengths, graph_lengths,
        repeats: int) -> list[dict]:
    """``--project``: every call at each length (attribution and graph)."""
    model = build_model(shape, device, dtype)
    plan = [(n, name, repeats) for n in sorted(set(attr_lengths) | set(graph_lengths))
            for name in (("plain", "attnlrp", "attnlrp-ckpt", "attnlrp-ckpt-nostates")
                         if n in attr_lengths else ("plain",))
            + (("graph",) if n in graph_lengths else ())]
    records = run_plan(model, plan, device, {"mass": 0.85, "max_edges": 1000}, float("inf"),
                       None, {})
    n_params = sum(p.numel() for p in model.parameters())
    for rec in records:
        rec.update(params=n_params, dtype=str(dtype).replace("torch.", ""), device=device)
    return records


def _fmt_bytes(x) -> str:
    return "—" if x is None else f"{x / 2**30:.2f} GiB" if x >= 2**30 else f"{x / 2**20:.1f} MiB"


def _row(rec: dict) -> str:
    sec = rec["error"] if rec.get("error") else f"{rec['seconds']:.3f}"
    ratio = "" if rec.get("ratio") is None else f"{rec['ratio']:.2f}"
    extra = (f"{rec['cases_per_s']:.1f} cases/s" if rec.get("cases_per_s")
             else f"{rec['forwards']:.2f}" if rec.get("forwards") is not None else "")
    return (f"| {rec['n']} | {rec['call']} | {sec} | {ratio} | {_fmt_bytes(rec['peak_bytes'])} "
            f"| {extra} |")


def project(shallow: list[dict], deep: list[dict], depths: tuple[int, int], width: int,
            target: dict) -> list[str]:
    """Per call: bytes/token slope at two depths → α + β·L → scaled to ``target`` (module doc)."""
    def slope(records, call):
        pts = sorted((r["n"], r["peak_bytes"]) for r in records
                     if r["call"] == call and r["peak_bytes"])
        return (pts[-1][1] - pts[0][1]) / (pts[-1][0] - pts[0][0]) if len(pts) > 1 else None

    lines = []
    for call in dict.fromkeys(r["call"] for r in deep):
        s0, s1 = slope(shallow, call), slope(deep, call)
        if s0 is None or s1 is None:
            continue
        beta = (s1 - s0) / (depths[1] - depths[0])
        alpha = s0 - beta * depths[0]
        per_token = target["hidden_size"] / width * (alpha + beta * target["num_hidden_layers"])
        lines.append(f"| {call} | {s0 / 1024:.1f} / {s1 / 1024:.1f} KiB | {alpha / 1024:.1f} KiB | "
                     f"{beta / 1024:.1f} KiB | {per_token / 2**20:.2f} MiB | "
                     f"{_fmt_bytes(per_token * 4096)} | {_fmt_bytes(per_token * 32768)} | "
                     f"{_fmt_bytes(per_token * 131072)} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", "--tiny", action="store_true", dest="smoke",
                        help="CPU smoke run of the GPU plan on a tiny shape")
    parser.add_argument("--project", action="store_true",
                        help="CPU: bytes/token on a 7B-proportional narrow model → 7B projection")
    parser.add_argument("--attr-lengths", type=int, nargs="+", default=None)
    parser.add_argument("--graph-lengths", type=int, nargs="+", default=None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--layers", type=int, default=None, help="override the depth")
    parser.add_argument("--graph-full", action="store_true",
                        help="graph rows without the target-row cap (max_nodes)")
    parser.add_argument("--budget-s", type=float, default=270.0,
                        help="rows that would start later than this are skipped (default 270)")
    parser.add_argument("--json", default=None,
                        help="raw records, rewritten after every row (default: $OUT/bench_gpu.json "
                             "when $OUT is set)")
    opts = parser.parse_args(argv)
    json_path = opts.json or (os.path.join(os.environ["OUT"], "bench_gpu.json")
                              if os.environ.get("OUT") else None)
    if (opts.smoke or opts.project) and os.environ.get("MALLOC_MMAP_THRESHOLD_") != "65536":
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}  # glibc reads it at start-up
        os.execve(sys.executable, [sys.executable, os.path.abspath(__file__),
                                   *(sys.argv[1:] if argv is None else argv)], env)
    if opts.project:
        device, dtype, shape = "cpu", torch.bfloat16, dict(SHAPE_NARROW)
    elif opts.smoke:
        device, dtype, shape = "cpu", torch.float32, dict(SHAPE_TINY)
    else:
        if not torch.cuda.is_available():
            print("no GPU: run with --smoke (the plan on a tiny CPU model) or --project (CPU "
                  "memory model)", file=sys.stderr)
            return 2
        device, dtype, shape = "cuda", torch.bfloat16, dict(SHAPE_7B)
    if opts.layers:
        shape["num_hidden_layers"] = opts.layers
    machine = (torch.cuda.get_device_name() if device == "cuda"
               else f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
                    f"{torch.get_num_threads()} threads")
    print(f"# bench_gpu {datetime.datetime.now():%Y-%m-%d %H:%M} — {machine}; torch "
          f"{torch.__version__}; shape {shape}; {dtype}", flush=True)
    print("| n | call | seconds | ratio to plain | peak memory | forwards / cases/s |\n"
          "|---|---|---|---|---|---|", flush=True)
    header = {"machine": machine, "shape": shape, "date": str(datetime.date.today())}
    if opts.project:
        attr = opts.attr_lengths or [1024, 4096]
        graphs = opts.graph_lengths or [1024, 2048]
        records = run(shape, device, dtype, attr, graphs, max(1, opts.repeats))
        depths = (2, shape["num_hidden_layers"])
        print(f"\n(again at depth {depths[0]}, for the per-block term)")
        shallow = run({**shape, "num_hidden_layers": depths[0]}, device, dtype, attr, graphs,
                      max(1, opts.repeats))
        for rec in shallow:
            rec["layers"] = depths[0]
        print("\nPROJECTION to the 7B shape (memory per token = width ratio × (α + 32·β)):")
        print(f"| call | measured / token (L={depths[0]} / L={depths[1]}) | α once | β per block "
              "| 7B / token | 7B at 4k | 7B at 32k | 7B at 128k |")
        print("|---|---|---|---|---|---|---|---|")
        print("\n".join(project(shallow, records, depths, shape["hidden_size"], SHAPE_7B)))
        if json_path:
            Path(json_path).write_text(json.dumps({**header, "records": records + shallow},
                                                  indent=1))
        return 0
    plan = PLAN_GPU if device == "cuda" else [(SMOKE_LENGTHS[n], name, min(r, 2))
                                              for n, name, r in PLAN_GPU]
    prune = ({k: v for k, v in GRAPH_PRUNE.items() if k != "max_nodes"} if opts.graph_full
             else dict(GRAPH_PRUNE))
    model = build_model(shape, device, dtype)
    header["params"] = sum(p.numel() for p in model.parameters())
    if device == "cuda":
        header["weights_bytes"] = torch.cuda.memory_allocated()
    run_plan(model, plan, device, prune, opts.budget_s, json_path, header)
    return 0


if __name__ == "__main__":
    sys.exit(main())
