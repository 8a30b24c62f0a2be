"""Attribution graphs: fast vs reference time, peak memory vs n, longest context (CPU).

Usage:
    python bench/bench_graph.py                                   # full run (quiet machine)
    python bench/bench_graph.py --lengths 256 512 --fast-only 1024 --memory 512 1024 \
        --longest 2048 --ref-passes 2 --repeats 1                  # reduced check
    python bench/bench_graph.py --lengths --fast-only --memory --longest --ratio 4096 \
        --ratio-blocks 16 --old-tree /tmp/old                      # issue #15's memory bar only

Model: a ~5M-parameter Llama config (hidden 256, 4 blocks, 8 heads / 4 kv-heads, MLP 1024,
vocab 2048; random weights, SDPA, fp32) — the shape bench_attribution.py uses.
1. Time at each ``--lengths`` n (median of ``--repeats``, interleaved): a plain forward+backward
   to the embeddings (``fb``), the fast graph unpruned (dense n×n per block) and pruned (paper
   defaults), and the reference (definition: ⌈n/B⌉ block re-runs of B copies per block, B =
   ``--batch``). The reference is timed on its setup plus ``--ref-passes`` passes per block
   (0 = all) and extrapolated linearly to all passes (every pass of a block has the same shape,
   so the same cost); the rows it did compute are compared with the fast graph (max relative
   error). Wall seconds and process-CPU seconds are both printed: on a shared machine the CPU
   seconds are the steadier measure. ``--fast-only`` lengths: fast pruned graph and fb only.
2. Memory: peak RSS delta (VmHWM after − VmRSS before, high-water mark reset, malloc_trim) of
   the fast pruned graph with a fixed edge budget (``--edge-budget`` edges per block) at each
   ``--memory`` n; ``per token`` and the growth ratio show whether it is linear in n.
3. Longest context: fast pruned graph (same budget) at each ``--longest`` n in order, until one
   fails (out of memory) or exceeds ``--time-limit`` seconds; the last that completed is printed.
4. Memory ratio (issue #15), one fresh subprocess per measurement (``--measure``): peak RSS of the
   call above the RSS just before it (``/proc/self/clear_refs`` resets the high-water mark after
   a warm-up at n = 64; ``resource.getrusage`` peak printed beside it; ``MALLOC_MMAP_THRESHOLD_``
   = 64 KiB so freed tensors leave the RSS) on a ``--ratio-blocks``
   model at each ``--ratio`` n: checkpointed attribution (``explain(…, states=False,
   checkpoint=True)``, the bar's denominator), plain attribution, the streamed graph (pruned,
   edge budget, checkpointed engine pass — ``graph``'s default) and the same with
   ``checkpoint=False``; ``--old-tree DIR`` adds the graph of another checkout (e.g. ``git
   archive`` of the commit before streaming) for the before/after row. Block runs are counted
   with a pre-hook on every block's MLP (fires in checkpoint re-runs too): ``block runs / L`` is
   the number of model forwards the call costs.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch

from harness_xai.graph import Prune, graph
from harness_xai.graph.reference import reference_edges
from harness_xai.lrp import adapter_for, lrp

_LIBC = ctypes.CDLL("libc.so.6")


def _status(key: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key))


def peak_rss_delta(fn) -> tuple[int, object]:
    """(bytes of peak RSS during ``fn()`` above the RSS just before, fn's result)."""
    _LIBC.malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    base = _status("VmRSS")
    result = fn()
    return _status("VmHWM") - base, result


def clocked(fn) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def timed(fns: dict, repeats: int) -> dict[str, tuple[float, float]]:
    """Median (wall, CPU) seconds of each function, repeats interleaved (fairer under load)."""
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            runs[name].append(clocked(fn))
    return {name: (statistics.median(w for w, _ in r), statistics.median(c for _, c in r))
            for name, r in runs.items()}


def make_model(context: int, blocks: int = 4):
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    config = AutoConfig.for_model("llama", vocab_size=2048, hidden_size=256, num_hidden_layers=blocks,
                                  intermediate_size=1024, num_attention_heads=8,
                                  num_key_value_heads=4, max_position_embeddings=context,
                                  tie_word_embeddings=False)
    config._attn_implementation = "sdpa"
    return AutoModelForCausalLM.from_config(config).eval()


def ids_of(n: int) -> torch.Tensor:
    return torch.randint(3, 2048, (1, n), generator=torch.Generator().manual_seed(n))


def plain_fb(model, ids) -> None:
    emb = model.get_input_embeddings()(ids).detach().requires_grad_(True)
    logits = model(inputs_embeds=emb, use_cache=False, logits_to_keep=1).logits[0, -1]
    torch.autograd.grad(logits[1] - logits[2], emb)


def reference_estimate(model, ids, batch: int, passes: int, dense: list[torch.Tensor]):
    """((wall, CPU) seconds extrapolated to the full reference, max rel. error vs fast)."""
    n = ids.shape[1]
    timings: dict = {}
    with torch.enable_grad(), lrp(model, "attnlrp"):
        _, edges, _ = reference_edges(model, adapter_for(model), ids, 1, 2, batch=batch,
                                      max_passes=passes or None, timings=timings)
    total_passes = -(-n // batch)
    wall, cpu = timings["setup"]
    for per_pass in timings["passes"].values():
        wall += statistics.mean(w for w, _ in per_pass) * total_passes
        cpu += statistics.mean(c for _, c in per_pass) * total_passes
    err = 0.0
    for ref, fast in zip(edges, dense):
        rows = min(n, (passes or total_passes) * batch)
        scale = fast[:rows].abs().max().item() or 1.0
        err = max(err, (ref[:rows] - fast[:rows]).abs().max().item() / scale)
    return (wall, cpu), err


def speed(args, model) -> None:
    print("## 1. time (s, wall / CPU); speedup = reference / fast (dense); ratio = x / fb")
    print("     n      fb wall/cpu    fast-dense      fast-pruned     reference (extrap.)  "
          "speedup w/c     fast/fb c   max rel err")
    prune = Prune()
    for n in args.lengths:
        ids = ids_of(n)
        holder = {}
        runs = {"fb": lambda: plain_fb(model, ids),
                "dense": lambda: holder.__setitem__("g", graph(model, None, ids, 1, 2)),
                "pruned": lambda: graph(model, None, ids, 1, 2, prune=prune)}
        plain_fb(model, ids)  # warm-up
        t = timed(runs, args.repeats)
        (rw, rc), err = reference_estimate(model, ids, args.batch, args.ref_passes,
                                           holder["g"].edges)
        fw, fc = t["dense"]
        print(f"{n:>6}  {t['fb'][0]:>6.2f}/{t['fb'][1]:<6.2f}  {fw:>6.2f}/{fc:<6.2f}  "
              f"{t['pruned'][0]:>6.2f}/{t['pruned'][1]:<6.2f}  {rw:>9.1f}/{rc:<9.1f}  "
              f"{rw / fw:>6.0f}/{rc / fc:<6.0f}  {fc / t['fb'][1]:>8.2f}  {err:>10.1e}",
              flush=True)
    for n in args.fast_only:
        ids = ids_of(n)
        t = timed({"fb": lambda: plain_fb(model, ids),
                   "pruned": lambda: graph(model, None, ids, 1, 2, prune=prune)}, args.repeats)
        print(f"{n:>6}  {t['fb'][0]:>6.2f}/{t['fb'][1]:<6.2f}  {'-':>13}  "
              f"{t['pruned'][0]:>6.2f}/{t['pruned'][1]:<6.2f}  (fast only; pruned/fb CPU "
              f"{t['pruned'][1] / t['fb'][1]:.2f})", flush=True)


def memory(args, model) -> None:
    print(f"\n## 2. peak RSS delta of the fast pruned graph, edge budget {args.edge_budget}/block")
    print("     n   peak_MiB   KiB/token   growth vs previous n")
    prune = Prune(max_edges=args.edge_budget)
    previous = None
    for n in args.memory:
        ids = ids_of(n)
        peak, g = peak_rss_delta(lambda: graph(model, None, ids, 1, 2, prune=prune))
        growth = f"{peak / previous[1]:.2f}x for {n / previous[0]:.1f}x n" if previous else ""
        print(f"{n:>6}  {peak / 2**20:>9.1f}  {peak / n / 1024:>10.1f}   {growth}  "
              f"(edges {g.metrics['n_edges']})", flush=True)
        previous = (n, peak)


def longest(args, model) -> None:
    print(f"\n## 3. longest context (fast pruned graph, budget {args.edge_budget}/block, "
          f"time limit {args.time_limit:.0f}s)")
    prune = Prune(max_edges=args.edge_budget)
    best = None
    for n in args.longest:
        ids = ids_of(n)
        try:
            start = time.perf_counter()
            peak, g = peak_rss_delta(lambda: graph(model, None, ids, 1, 2, prune=prune))
            seconds = time.perf_counter() - start
        except (RuntimeError, MemoryError) as exc:
            print(f"{n:>6}  failed: {str(exc).splitlines()[0][:100]}")
            break
        print(f"{n:>6}  {seconds:>8.1f}s  peak {peak / 2**30:.2f} GiB  edges "
              f"{g.metrics['n_edges']}  mass_kept {g.metrics['mass_kept']:.3f}", flush=True)
        best = n
        if seconds > args.time_limit:
            print(f"        (over the time limit; stopping)")
            break
    print(f"longest completed: {best}")


KINDS = ("attr-ckpt", "attr", "graph", "graph-nockpt")


def measure(kind: str, n: int, blocks: int, budget: int) -> dict:
    """One measurement in this (fresh) process: peak RSS above the pre-call RSS, seconds, block
    runs (module docstring, section 4)."""
    from harness_xai.lrp.engine import explain
    from harness_xai.records import TokenTarget

    model = make_model(n + 1, blocks)
    runs = [0]
    for layer in model.model.layers:
        layer.mlp.register_forward_pre_hook(lambda *_: runs.__setitem__(0, runs[0] + 1))
    prune = Prune(max_edges=budget)

    def call(ids):
        objective = TokenTarget(tuple(ids[0].tolist()), 1, 2)
        if kind == "attr-ckpt":
            return explain(model, [objective], "attnlrp", states=False, checkpoint=True)
        if kind == "attr":
            return explain(model, [objective], "attnlrp", states=False)
        if kind == "graph-nockpt":
            return graph(model, None, ids, 1, 2, prune=prune, checkpoint=False)
        return graph(model, None, ids, 1, 2, prune=prune)  # the default (streamed, checkpointed)

    call(ids_of(64))  # warm-up: lazy inits, kernels
    runs[0] = 0
    ids = ids_of(n)
    _LIBC.malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the high-water mark (VmHWM and getrusage's peak) to the RSS now
    base = _status("VmRSS")
    start = time.perf_counter()
    result = call(ids)
    seconds = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    edges = result.metrics["n_edges"] if hasattr(result, "metrics") else None
    return {"kind": kind, "n": n, "blocks": blocks, "peak": _status("VmHWM") - base,
            "getrusage_peak": usage - base, "seconds": seconds, "block_runs": runs[0],
            "forwards": runs[0] / blocks, "edges": edges, "rss_before": base}


def ratio(args) -> None:
    print(f"\n## 4. peak memory (MiB above the RSS before the call; subprocess each), "
          f"{args.ratio_blocks} blocks, edge budget {args.edge_budget}/block")
    print("     n  kind           peak_MiB  (getrusage)  vs attr-ckpt  forwards  seconds  edges")
    trees = [(kind, None) for kind in args.kinds] + (
        [("graph", args.old_tree)] if args.old_tree else [])
    for n in args.ratio:
        base = None
        for kind, tree in trees:
            # every block above 64 KiB its own mapping, returned when freed: RSS follows the
            # live tensors (glibc's adaptive threshold keeps freed blocks resident)
            env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
            if tree:
                env["PYTHONPATH"] = tree
            cmd = [sys.executable, os.path.abspath(__file__), "--measure", kind, "--n", str(n),
                   "--ratio-blocks", str(args.ratio_blocks), "--edge-budget", str(args.edge_budget)]
            done = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if done.returncode:
                print(f"{n:>6}  {kind:<13}  failed: {done.stderr.strip().splitlines()[-1][:100]}")
                continue
            r = json.loads(done.stdout.strip().splitlines()[-1])
            base = r["peak"] if kind == "attr-ckpt" else base
            label = kind + (" (old)" if tree else "")
            print(f"{n:>6}  {label:<13}  {r['peak'] / 2**20:>8.1f}  "
                  f"{r['getrusage_peak'] / 2**20:>11.1f}  "
                  f"{r['peak'] / base if base else float('nan'):>10.2f}  {r['forwards']:>8.2f}  "
                  f"{r['seconds']:>7.1f}  {r['edges'] if r['edges'] is not None else '-'}",
                  flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lengths", type=int, nargs="*", default=[512, 2048])
    parser.add_argument("--fast-only", type=int, nargs="*", default=[8192])
    parser.add_argument("--memory", type=int, nargs="*", default=[1024, 2048, 4096, 8192])
    parser.add_argument("--longest", type=int, nargs="*", default=[16384, 32768])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8, help="reference: target rows per pass")
    parser.add_argument("--ref-passes", type=int, default=8,
                        help="reference passes timed per block (0 = all)")
    parser.add_argument("--edge-budget", type=int, default=20000)
    parser.add_argument("--time-limit", type=float, default=1800.0)
    parser.add_argument("--ratio", type=int, nargs="*", default=[4096],
                        help="section 4: lengths of the peak-memory comparison")
    parser.add_argument("--ratio-blocks", type=int, default=16)
    parser.add_argument("--old-tree", help="section 4: PYTHONPATH of a checkout to compare")
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS),
                        help="section 4: which calls to measure")
    parser.add_argument("--measure", choices=KINDS, help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.n, args.ratio_blocks, args.edge_budget)))
        return
    context = max([*args.lengths, *args.fast_only, *args.memory, *args.longest, 1]) + 1
    model = make_model(context)
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cpus, "
          f"{time.strftime('%Y-%m-%d')}; llama {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M "
          f"params; load average {os.getloadavg()[0]:.1f}")
    if args.lengths or args.fast_only:
        speed(args, model)
    if args.memory:
        memory(args, model)
    if args.longest:
        longest(args, model)
    if args.ratio:
        ratio(args)


if __name__ == "__main__":
    main()
