"""Cost of first-error rollouts per incorrect generation (``--xai-rollouts``; issue #14 item 3).

For a random-init Llama (``--hidden``, ``--layers``), a random prompt of ``--prompt`` tokens and
a greedy generation of ``--generated`` tokens, ``contrast.rollouts.first_error`` runs with a scorer
that never accepts (the worst case: the whole budget is spent) for each batch size; the reference
is one plain greedy generation of the same length (``greedy_continue`` of one row), i.e. what
lm-eval spent producing the answer. Reported per batch size: wall time of the localiser, time
per rollout, ratio to the reference generation, interleaved, median of ``--repeats``.

    python bench/bench_rollouts.py --rollouts 32 --tokens 32 --batch-sizes 1 8 16 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def _model(hidden: int, layers: int, vocab: int, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=4 * hidden,
                         num_hidden_layers=layers, num_attention_heads=max(1, hidden // 64),
                         max_position_embeddings=4096, pad_token_id=0, eos_token_id=2)
    return LlamaForCausalLM(config).eval()


class _Ids:
    pad_token_id = 0

    @staticmethod
    def decode(ids):
        return " ".join(map(str, ids))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--prompt", type=int, default=256)
    p.add_argument("--generated", type=int, default=32)
    p.add_argument("--rollouts", type=int, default=32)
    p.add_argument("--tokens", type=int, default=32)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 16])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()

    from harness_xai.contrast.rollouts import first_error, greedy_continue

    model = _model(args.hidden, args.layers, args.vocab).to(args.device)
    prompt = torch.randint(3, args.vocab, (args.prompt,), generator=torch.Generator().manual_seed(1)).tolist()
    generated = greedy_continue(model, [prompt], args.generated, 0, ())[0]

    def sync():
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    def reference() -> float:
        sync()
        t0 = time.perf_counter()
        greedy_continue(model, [prompt], args.generated, 0, ())
        sync()
        return time.perf_counter() - t0

    def localise(batch: int) -> tuple[float, int]:
        sync()
        t0 = time.perf_counter()
        result = first_error(model, _Ids(), prompt, generated, lambda text: False, top_k=5,
                             max_rollouts=args.rollouts, max_rollout_tokens=args.tokens,
                             batch_size=batch, eos_token_id=(), pad_token_id=0)
        sync()
        return time.perf_counter() - t0, len(result.rollouts)

    reference()
    localise(args.batch_sizes[-1])  # warm-up
    ref, runs = [], {b: [] for b in args.batch_sizes}
    n_rollouts = 0
    for _ in range(args.repeats):  # interleaved
        ref.append(reference())
        for b in args.batch_sizes:
            seconds, n_rollouts = localise(b)
            runs[b].append(seconds)
    base = statistics.median(ref)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model {n_params / 1e6:.1f}M params, prompt {args.prompt}, generated {len(generated)}, "
          f"{n_rollouts} rollouts × ≤{args.tokens} tokens, device {args.device}, "
          f"reference greedy generation {base * 1e3:.1f} ms")
    print("| batch size | localiser s | ms per rollout | × reference generation |")
    print("|---|---|---|---|")
    for b, values in runs.items():
        s = statistics.median(values)
        print(f"| {b} | {s:.2f} | {1e3 * s / max(n_rollouts, 1):.1f} | {s / base:.1f} |")


if __name__ == "__main__":
    main()
