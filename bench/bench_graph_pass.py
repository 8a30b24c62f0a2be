"""``--xai-graph`` per case: one forward+backward (now) vs attribution then graph (before).

Usage:
    python bench/bench_graph_pass.py                       # n = 128 512 2048, 5 repeats
    python bench/bench_graph_pass.py --lengths 256 --repeats 3

Model: the ~5M-parameter Llama of bench_attribution.py / bench_graph.py (hidden 256, 4 blocks,
8 heads / 4 kv-heads, MLP 1024, vocab 2048; random weights, SDPA, fp32).
Per length n, interleaved, median of ``--repeats`` (wall and process-CPU seconds):
- ``attribute``: one case without a graph (``explain`` with states and heads);
- ``before``: what a case with ``--xai-graph`` cost until issue #13 — ``attribute`` (states,
  heads), then ``harness_xai.graph`` (its own forward and backward) and pruning;
- ``one pass``: what it costs now — ``explain(…, trace=True)`` (states, heads and the graph's
  capture in one forward and one backward), then ``graph_from_trace`` and pruning.
Model forwards are counted with a forward pre-hook on the model (a checkpointed forward re-run
would count too): ``before`` runs 2 per case, ``one pass`` 1. The two paths' relevance and edges
are compared (they must be equal to the bit).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

import harness_xai
from harness_xai.graph import graph_from_trace
from harness_xai.lrp import explain
from harness_xai.records import TokenTarget


def model_5m():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=2048, hidden_size=256, intermediate_size=1024,
                         num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=4,
                         max_position_embeddings=16384, tie_word_embeddings=False,
                         attn_implementation="sdpa")
    return LlamaForCausalLM(config).eval()


def clocked(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lengths", type=int, nargs="+", default=[128, 512, 2048])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model = model_5m()
    forwards = [0]
    model.register_forward_pre_hook(lambda *a, **k: forwards.__setitem__(0, forwards[0] + 1))
    print(f"torch {torch.__version__}, {args.threads} threads, "
          f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters")
    print("| n | attribute s | before: attribute + graph s | one pass s | one pass / before "
          "| forwards before / one pass | equal |")
    print("|---|---|---|---|---|---|---|")
    for n in args.lengths:
        ids = torch.randint(3, 2048, (n,), generator=torch.Generator().manual_seed(n)).tolist()
        objective = TokenTarget(ids, 5, 7)

        def attribute_only():
            return explain(model, [objective], "attnlrp")[0]

        def before():
            a = harness_xai.attribute(model, None, ids, 5, 7)
            g = harness_xai.graph(model, None, ids, 5, 7, prune=True).to_record()
            return a, g

        def one_pass():
            (a,) = explain(model, [objective], "attnlrp", trace=True)
            return a, graph_from_trace(a.trace, "attnlrp", True, objective).to_record()

        times = {"attribute": [], "before": [], "one": []}
        counts = {}
        results = {}
        one_pass()  # warm-up
        for _ in range(args.repeats):
            for name, fn in (("attribute", attribute_only), ("before", before), ("one", one_pass)):
                forwards[0] = 0
                wall, _, out = clocked(fn)
                counts[name] = forwards[0]
                times[name].append(wall)
                results[name] = out
        (a0, g0), (a1, g1) = results["before"], results["one"]
        equal = (torch.equal(a0.layers, a1.layers) and torch.equal(a0.heads, a1.heads)
                 and all(np.array_equal(getattr(g0, f), getattr(g1, f))
                         for f in ("weight", "source_position", "target_position",
                                   "node_relevance")))
        med = {k: statistics.median(v) for k, v in times.items()}
        print(f"| {n} | {med['attribute']:.3f} | {med['before']:.3f} | {med['one']:.3f} "
              f"| {med['one'] / med['before']:.2f} | {counts['before']} / {counts['one']} "
              f"| {'yes' if equal else 'NO'} |", flush=True)


if __name__ == "__main__":
    main()
