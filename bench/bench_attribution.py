"""Attribution cost relative to one plain gradient (same model, same input), and memory.

Usage:
    python bench/bench_attribution.py                      # full run (n = 512, 2048, 8192)
    python bench/bench_attribution.py --lengths 256 1024 --repeats 1 --project-at 256 512  # quick

1. Time: for a ~5M-parameter Llama and GPT-NeoX config (random weights, SDPA, fp32, CPU,
   torch's default threads), the median over ``--repeats`` (after one warm-up call each) of: a
   plain forward + backward to the embeddings (``plain``), and ``attribute`` with attnlrp
   (internal states on; off: ``-nostates``; gradient checkpointing: ``-ckpt``), cp-lrp,
   grad-x-input. Ratio = method seconds / plain seconds (goal ≤ 1.3). ``plain`` keeps the
   parameters' requires_grad (as a user's plain gradient would); ``attribute`` switches it off.
2. Memory (on the first timed repeat): peak resident set size (RSS) *delta* of one call:
   ``VmHWM`` after it minus ``VmRSS`` before it, with the high-water mark reset first
   (``echo 5 > /proc/self/clear_refs``) and free heap pages handed back to the OS
   (``malloc_trim(0)``), so buffers reused from an earlier call count again. torch's CPU
   allocations are invisible to tracemalloc, hence RSS. Linux only.
3. Linear memory: ``mem(8192) / mem(2048)`` ≈ 4 means O(n) (an n×n attention matrix per head
   would add 16× growth terms).
5. States overhead (``--states``, issue #15): for the ~5M Llama at ``--states-lengths`` (default
   512 and 2048), plain gradient vs attnlrp without states vs with states (mid/attn/mlp/heads),
   both also checkpointed; ratios states/no-states and each vs plain, median of ``--repeats``
   interleaved, plus the peak RSS delta. Goal on the GPU: states ≤ 1.15× plain at 4k.
6. Batch size auto (``--states``): the rows ``--xai-batch-size auto`` picks per pass for that model
   at each length (``distributed.memory.rows_that_fit`` with the free memory now) and the
   estimate vs the measured peak of a pass of that many rows (capped at 8 here).
4. Largest n: attnlrp peak RSS delta (without and with ``checkpoint=True``) measured at the two
   ``--project-at`` lengths for the zoo model's shape and a ~100M-parameter Llama config; a
   straight line through them gives bytes/token; n_max = (budget − intercept) / slope with
   budget = MemAvailable at start. This is a PROJECTION from measured memory-per-token (printed
   as such); the model's own context (max_position_embeddings) is printed next to it.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import statistics
import time

import torch

from harness_xai import attribute

_LIBC = ctypes.CDLL("libc.so.6")


def _status(key: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key))


def peak_rss_delta(fn) -> int:
    """Bytes: peak RSS during ``fn()`` minus RSS just before (kernel high-water mark)."""
    _LIBC.malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    base = _status("VmRSS")
    fn()
    return _status("VmHWM") - base


def timed(fns: dict, repeats: int) -> tuple[dict[str, float], dict[str, int]]:
    """Median seconds and peak RSS delta (bytes, first timed repeat) of each function; the
    repeats interleave the functions (fairer when the machine's load changes)."""
    for fn in fns.values():
        fn()  # warm-up
    times: dict[str, list[float]] = {name: [] for name in fns}
    memory: dict[str, int] = {}
    for repeat in range(repeats):
        for name, fn in fns.items():
            def run(fn=fn, name=name):
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
            if repeat == 0:
                memory[name] = peak_rss_delta(run)
            else:
                run()
    return {name: statistics.median(t) for name, t in times.items()}, memory


def plain_gradient(model, ids):
    emb = model.get_input_embeddings()(ids).detach().requires_grad_(True)
    logits = model(inputs_embeds=emb, use_cache=False, logits_to_keep=1).logits[0, -1]
    torch.autograd.grad(logits[1] - logits[2], emb)


def make(family: str, hidden: int, layers: int, inter: int, vocab: int, heads: int,
         kv_heads: int, context: int):
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    extra = {"num_key_value_heads": kv_heads} if family != "gpt_neox" else {}
    config = AutoConfig.for_model(family, vocab_size=vocab, hidden_size=hidden,
                                  num_hidden_layers=layers, intermediate_size=inter,
                                  num_attention_heads=heads, max_position_embeddings=context,
                                  tie_word_embeddings=False, **extra)
    config._attn_implementation = "sdpa"
    return AutoModelForCausalLM.from_config(config).eval()


def n_params(model) -> float:
    return sum(p.numel() for p in model.parameters()) / 1e6


def speed(args) -> None:
    print("## 1-3. time ratio vs plain gradient (median, interleaved), peak RSS delta (MiB)")
    print("family    params  n_tokens  method          seconds  ratio  peak_MiB")
    for family in ("llama", "gpt_neox"):
        model = make(family, 256, 4, 1024, 2048, 8, 4, max(args.lengths) + 1)
        label = f"{family:<9} {n_params(model):>5.1f}M"
        peaks: dict[int, int] = {}
        for n in args.lengths:
            ids = torch.randint(3, 2048, (1, n), generator=torch.Generator().manual_seed(n))
            runs = {"plain": lambda: plain_gradient(model, ids)}
            for method in ("attnlrp", "cp-lrp", "grad-x-input"):
                runs[method] = lambda m=method: attribute(model, None, ids, 1, 2, method=m)
            runs["attnlrp-nostates"] = lambda: attribute(model, None, ids, 1, 2, states=False)
            runs["attnlrp-ckpt"] = lambda: attribute(model, None, ids, 1, 2, checkpoint=True)
            seconds, memory = timed(runs, args.repeats)
            for name in runs:
                print(f"{label} {n:>8}  {name:<16} {seconds[name]:>7.3f}  "
                      f"{seconds[name] / seconds['plain']:>5.2f}  {memory[name] / 2**20:>8.1f}",
                      flush=True)
            peaks[n] = memory["attnlrp"]
        if len(peaks) > 1:
            (a, ma), (b, mb) = min(peaks.items()), max(peaks.items())
            print(f"{label} attnlrp memory growth n={a}→{b}: ×{mb / max(ma, 1):.2f} for "
                  f"×{b / a:.0f} tokens (linear: ×{b / a:.0f}, n×n attention: "
                  f"×{(b / a) ** 2:.0f})")


def available() -> int:
    with open("/proc/meminfo") as f:
        info = dict(line.split(":") for line in f)
    return int(info["MemAvailable"].split()[0]) * 1024


def projection(args) -> None:
    budget = available()
    a, b = args.project_at
    print(f"\n## 4. largest n (PROJECTION from attnlrp peak RSS delta at n={a} and n={b}; "
          f"budget = MemAvailable = {budget / 2**30:.1f} GiB)")
    print("model                  params  MiB@a   MiB@b   KiB/token  projected_n_max  context")
    from harness_xai.zoo.train import TrainSpec
    zoo = TrainSpec()
    shapes = {"zoo llama-tiny": ("llama", zoo.hidden_size, zoo.num_hidden_layers,
                                 zoo.intermediate_size, zoo.vocab_size, zoo.num_attention_heads,
                                 zoo.num_key_value_heads, zoo.max_position_embeddings),
              "llama ~100M": ("llama", 768, 12, 2048, 8192, 12, 4, 32768)}
    for label, shape in shapes.items():
        model = make(*shape[:-1], max(shape[-1], b + 1))
        for ckpt in (False, True):
            mem = []
            for n in (a, b):
                ids = torch.randint(3, shape[4], (1, n), generator=torch.Generator().manual_seed(n))
                mem.append(peak_rss_delta(lambda: attribute(model, None, ids, 1, 2,
                                                            checkpoint=ckpt)))
            slope = (mem[1] - mem[0]) / (b - a)
            n_max = f"{int((budget - (mem[0] - slope * a)) / slope):,}" if slope > 0 else "n/a"
            name = label + (" ckpt" if ckpt else "")
            print(f"{name:<22} {n_params(model):>5.1f}M {mem[0] / 2**20:>6.1f}  "
                  f"{mem[1] / 2**20:>6.1f}  {slope / 1024:>9.1f}  {n_max:>15}  {shape[-1]}",
                  flush=True)
        del model


def states_overhead(args) -> None:
    from harness_xai.distributed import memory
    from harness_xai.lrp import explain
    from harness_xai.records import TokenTarget

    print(f"\n## 5. states overhead (load average {os.getloadavg()[0]:.1f}; median of "
          f"{args.repeats}, interleaved)")
    print("n_tokens  call                    seconds  vs_plain  peak_MiB")
    model = make("llama", 256, 4, 1024, 2048, 8, 4, max(args.states_lengths) + 1)
    for n in args.states_lengths:
        ids = torch.randint(3, 2048, (1, n), generator=torch.Generator().manual_seed(n))
        runs = {"plain": lambda: plain_gradient(model, ids),
                "attnlrp no states": lambda: attribute(model, None, ids, 1, 2, states=False),
                "attnlrp states": lambda: attribute(model, None, ids, 1, 2),
                "ckpt no states": lambda: attribute(model, None, ids, 1, 2, states=False,
                                                    checkpoint=True),
                "ckpt states": lambda: attribute(model, None, ids, 1, 2, checkpoint=True)}
        seconds, mem = timed(runs, args.repeats)
        for name in runs:
            ratio = seconds[name] / seconds["plain"]
            print(f"{n:>8}  {name:<22} {seconds[name]:>8.3f}  {ratio:>8.2f}"
                  f"  {mem[name] / 2**20:>8.1f}", flush=True)
        plain_states = seconds["attnlrp states"] / seconds["attnlrp no states"]
        ckpt_states = seconds["ckpt states"] / seconds["ckpt no states"]
        print(f"{n:>8}  states / no states: {plain_states:.2f} (checkpointed {ckpt_states:.2f})")
    print("\n## 6. --xai-batch-size auto: rows per pass, estimate vs measured peak")
    print("n_tokens  auto_rows  measured_rows  estimate_MiB  measured_MiB  ratio")
    for n in args.states_lengths:
        rows = memory.rows_that_fit(model, n)
        r = min(rows, 8)
        items = [TokenTarget(torch.randint(3, 2048, (n - i,)).tolist(), 1, 2) for i in range(r)]
        measured = peak_rss_delta(lambda: explain(model, items, "attnlrp"))
        estimate = memory.pass_bytes(model, n, r)
        print(f"{n:>8}  {rows:>9}  {r:>13}  {estimate / 2**20:>12.0f}  {measured / 2**20:>12.0f}"
              f"  {estimate / measured:>5.2f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[512, 2048, 8192])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--project-at", type=int, nargs=2, default=[1024, 4096])
    parser.add_argument("--states", action="store_true",
                        help="only sections 5-6: states overhead and batch size auto")
    parser.add_argument("--states-lengths", type=int, nargs="+", default=[512, 2048])
    args = parser.parse_args()
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{os.cpu_count()} cpus, {time.strftime('%Y-%m-%d')}")
    start = time.perf_counter()
    if args.states:
        states_overhead(args)
        print(f"# total {time.perf_counter() - start:.0f} s")
        return
    speed(args)
    projection(args)
    print(f"# total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
