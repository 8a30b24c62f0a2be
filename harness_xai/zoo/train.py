"""Train the zoo's tiny Llama on the synthetic tasks, on CPU, deterministically.

1. Fix every seed (``torch.manual_seed``; the data come from ``random.Random(seed)``) and the
   thread count, so the same spec gives bit-identical weights.
2. Train the tokenizer (``tokenizer.train_tokenizer``) and build a ``LlamaConfig`` model
   (grouped-query attention, untied embeddings, SDPA attention).
3. Each step draws ``kv_batch`` retrieval texts (a test-format prompt, its answer, then every other
   key of the context with its value) and ``arith_batch`` addition texts, tokenizes them exactly
   as lm-eval scores them (no BOS; the byte-level pre-tokenizer splits at the context/continuation
   boundary, so tokenizing the whole text gives lm-eval's ids) and right-pads them (causal
   attention: padding after a token never changes its logits, so no attention mask is needed).
4. Loss: cross-entropy on the answer tokens only, with the softmax restricted to the answer
   vocabulary (values and sums). Measured here: a softmax over the whole byte-level vocabulary
   (hundreds of tokens that never occur) stalls the formation of the retrieval circuit for
   hundreds of steps; restricted, retrieval appears after ~200 steps. lm-eval's multiple-choice
   scores are unaffected: every choice is one token at the same position, so the normalizer
   cancels between choices.
5. AdamW with linear warm-up and cosine decay to 10 %; gradient clipping at 1.0.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch

from harness_xai.zoo import taskgen
from harness_xai.zoo.tokenizer import train_tokenizer


@dataclass(frozen=True)
class TrainSpec:
    """Everything that determines the trained weights (its hash names a build)."""

    hidden_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    intermediate_size: int = 256
    max_position_embeddings: int = 1024
    vocab_size: int = 512  # upper bound given to the BPE trainer
    tokenizer_texts: int = 4000
    steps: int = 600
    kv_batch: int = 32
    arith_batch: int = 32
    kv_records: tuple[int, int] = taskgen.KV_TRAIN_RECORDS
    lr: float = 1e-3
    warmup: int = 20
    weight_decay: float = 0.01
    seed: int = taskgen.TRAIN_SEED
    threads: int = 2
    version: int = 2  # bump when taskgen/tokenizer/training code changes the result

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def make_model(spec: TrainSpec, vocab_size: int, special_id: int):
    """A freshly initialised ``LlamaForCausalLM`` (call after seeding)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=spec.hidden_size,
        num_hidden_layers=spec.num_hidden_layers, num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads, intermediate_size=spec.intermediate_size,
        max_position_embeddings=spec.max_position_embeddings, tie_word_embeddings=False,
        bos_token_id=special_id, eos_token_id=special_id, pad_token_id=special_id,
        attn_implementation="sdpa")
    return LlamaForCausalLM(config)


def batch(tokenizer, texts: list[tuple[str, list[tuple[int, int]]]],
          pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """ids (B, T) and answer mask (B, T-1): ``mask[b, t]`` ⇔ token t+1 lies in an answer span."""
    enc = tokenizer([text for text, _ in texts], add_special_tokens=False,
                    return_offsets_mapping=True)
    width = max(len(ids) for ids in enc["input_ids"])
    ids = torch.full((len(texts), width), pad_id, dtype=torch.long)
    answer = torch.zeros(len(texts), width, dtype=torch.bool)
    for row, ((_, spans), tok_ids, offsets) in enumerate(
            zip(texts, enc["input_ids"], enc["offset_mapping"])):
        ids[row, :len(tok_ids)] = torch.tensor(tok_ids)
        for col, (start, end) in enumerate(offsets):
            answer[row, col] = any(start < s_end and s_start < end for s_start, s_end in spans)
    return ids, answer[:, 1:]


def answer_vocab(tokenizer) -> torch.Tensor:
    """Sorted ids of every answer token: kv values " 00"…" 99" and sums " 0"…" 99"."""
    words = {f" {v:02d}" for v in range(100)} | {f" {v}" for v in range(100)}
    ids = {i for w in words for i in tokenizer(w, add_special_tokens=False)["input_ids"][:1]}
    return torch.tensor(sorted(ids), dtype=torch.long)


def draw_texts(rng: random.Random, spec: TrainSpec, banned: set[str]):
    """One step's training texts: ``(kv texts, arith texts)``, each ``[(text, spans)…]``."""
    kv: list[tuple[str, list[tuple[int, int]]]] = []
    while len(kv) < spec.kv_batch:
        item = taskgen.kv_train_text(rng, rng.randint(*spec.kv_records), len(taskgen.KEYS), banned)
        if item is not None:
            kv.append(item)
    arith: list[tuple[str, list[tuple[int, int]]]] = []
    while len(arith) < spec.arith_batch:
        item = taskgen.arith_train_text(rng, banned)
        if item is not None:
            arith.append(item)
    return kv, arith


def train(spec: TrainSpec, progress: bool = True) -> tuple[Any, Any, dict[str, Any]]:
    """Train tokenizer and model; returns ``(model, tokenizer, stats)``."""
    torch.set_num_threads(spec.threads)
    torch.manual_seed(spec.seed)
    started = time.perf_counter()
    tokenizer = train_tokenizer(spec.vocab_size, spec.tokenizer_texts, spec.seed)
    pad = tokenizer.eos_token_id
    model = make_model(spec, len(tokenizer), pad)
    model.train()
    vocab = answer_vocab(tokenizer)  # (A,)
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": spec.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=spec.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, spec))
    rng = random.Random(spec.seed)
    banned = taskgen.test_prompts()
    every = max(1, spec.steps // 10)
    losses: list[tuple[float, float]] = []
    for step in range(spec.steps):
        parts = []
        for texts in draw_texts(rng, spec, banned):
            if not texts:
                parts.append(0.0)
                continue
            ids, answer = batch(tokenizer, texts, pad)
            logits = model(input_ids=ids).logits[:, :-1]  # (B, T-1, V)
            picked = logits[answer][:, vocab]  # (N, A): answer positions, answer vocabulary
            target = torch.searchsorted(vocab, ids[:, 1:][answer])  # (N,)
            loss = torch.nn.functional.cross_entropy(picked, target)
            loss.backward()
            parts.append(loss.item())
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append((parts[0], parts[1]))
        if progress and ((step + 1) % every == 0 or step + 1 == spec.steps):
            kv, ar = (sum(x[i] for x in losses[-every:]) / len(losses[-every:]) for i in (0, 1))
            print(f"zoo: step {step + 1}/{spec.steps}  loss kv {kv:.3f} arith {ar:.3f}  "
                  f"({time.perf_counter() - started:.0f}s)", flush=True)
    model.eval()
    tail = losses[-min(20, len(losses)):] or [(float("nan"), float("nan"))]
    stats = {"steps": spec.steps,
             "final_loss": {"xai_kv": round(sum(x[0] for x in tail) / len(tail), 4),
                            "xai_arith": round(sum(x[1] for x in tail) / len(tail), 4)},
             "train_seconds": round(time.perf_counter() - started, 2),
             "n_params": sum(p.numel() for p in model.parameters()),
             "vocab_size": len(tokenizer)}
    return model, tokenizer, stats


def _lr_factor(step: int, spec: TrainSpec) -> float:
    if step < spec.warmup:
        return (step + 1) / spec.warmup
    span = max(1, spec.steps - spec.warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - spec.warmup) / span)))
