"""Attribution cost relative to one plain forward + backward (same model, same input).

Usage: python bench/bench_attribution.py [--lengths 256 1024 4096] [--repeats 3]
Prints one row per (method, length): seconds (median of repeats), the plain forward+backward
seconds measured in the same run, and their ratio. Results are written down in bench/README.md.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from harness_xai import attribute


def plain_forward_backward(model, ids):
    emb = model.get_input_embeddings()(ids).detach().requires_grad_(True)
    logits = model(inputs_embeds=emb, use_cache=False, logits_to_keep=1).logits[0, -1]
    torch.autograd.grad(logits[1] - logits[2], emb)


def timed(fn, repeats):
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lengths", type=int, nargs="+", default=[256, 1024, 4096])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    args = parser.parse_args()
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=2048, hidden_size=args.hidden, intermediate_size=4 * args.hidden,
                         num_hidden_layers=args.layers, num_attention_heads=8, num_key_value_heads=4,
                         max_position_embeddings=max(args.lengths) + 1,
                         attn_implementation="sdpa")
    model = LlamaForCausalLM(config).eval()
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads, hidden {args.hidden}, "
          f"{args.layers} layers")
    print("method        n_tokens  attribute_s  plain_fwd_bwd_s  ratio")
    for n in args.lengths:
        ids = torch.randint(0, 2048, (1, n))
        base = timed(lambda: plain_forward_backward(model, ids), args.repeats)
        for method in ("attnlrp", "cp-lrp", "grad-x-input"):
            t = timed(lambda: attribute(model, None, ids, 1, 2, method=method), args.repeats)
            print(f"{method:<13} {n:>8}  {t:>11.4f}  {base:>15.4f}  {t / base:>5.2f}")


if __name__ == "__main__":
    main()
