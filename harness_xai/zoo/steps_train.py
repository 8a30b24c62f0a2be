"""Train the steps model: a small zoo Llama that writes out ``xai_steps`` solutions (CPU, seeded).

1. Tokenizer: the zoo's byte-level BPE (``tokenizer.train_tokenizer``) trained on ``xai_steps``
   texts only, so every number, operator, ``;`` and ``####`` is one token (a step is six tokens).
2. Model: ``family.make_family_model`` (the zoo family's Llama) at this spec's size.
3. Texts: ``prompt + solution`` then EOS, tokenized as lm-eval does (no BOS; the prompt ends in
   ``=`` and the solution starts with a space, so the pre-tokenizer splits at the boundary and
   tokenizing the whole text gives the ids lm-eval feeds and the model generates). Right-padded.
4. Loss: cross-entropy over the full vocabulary on the solution tokens and the EOS only (the
   prompt is given). AdamW, warm-up then constant rate with a linear decay to 10 % over the last
   fifth (``train._lr_factor``); gradient clipping at 1.0.
5. No early stop: a fixed step count, so the model is "mostly right, not always" by design of the
   budget (``StepsSpec.steps``). The build's stats record ``heldout_accuracy``: greedy accuracy
   on ``val_docs`` fresh draws that are never test prompts (short chains may also have been
   drawn for training; the test split never is, so lm-eval's exact_match on it is the held-out
   number: 0.95 for the default spec).
"""

from __future__ import annotations

import itertools
import random
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch

from harness_xai.zoo import steps as steps_task
from harness_xai.zoo.family import make_family_model
from harness_xai.zoo.threads import torch_threads
from harness_xai.zoo.train import _lr_factor, _set_lr

STEPS_MODEL = "llama-steps"


@dataclass(frozen=True)
class StepsSpec:
    """Everything that determines the steps model's weights (its hash names the build)."""

    arch: str = "llama"
    hidden_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    intermediate_size: int = 256
    max_position_embeddings: int = 128
    vocab_size: int = 320
    tokenizer_texts: int = 10000  # enough for every number 0–35 to be one token
    steps: int = 800
    batch: int = 32
    lr: float = 2e-3
    warmup: int = 20
    weight_decay: float = 0.01
    seed: int = 11
    threads: int = 1
    val_docs: int = 64
    version: int = 1  # bump when steps.py / this module change the result

    @property
    def name(self) -> str:
        return STEPS_MODEL

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def steps_tokenizer(spec: StepsSpec):
    from harness_xai.zoo.tokenizer import train_tokenizer

    docs = itertools.islice(steps_task.train_docs(spec.seed + 1), spec.tokenizer_texts)
    return train_tokenizer(spec.vocab_size, texts=[d["prompt"] + d["solution"] for d in docs])


def encode(tokenizer, docs: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
    """ids (B, T) of ``prompt + solution + EOS`` right-padded, and the loss mask (B, T-1):
    ``mask[b, t]`` ⇔ token t+1 belongs to the solution or is its EOS."""
    eos = tokenizer.eos_token_id
    rows = []
    for doc in docs:
        prompt = tokenizer(doc["prompt"], add_special_tokens=False)["input_ids"]
        full = tokenizer(doc["prompt"] + doc["solution"], add_special_tokens=False)["input_ids"]
        assert full[:len(prompt)] == prompt, "prompt/solution boundary splits a token"
        rows.append((len(prompt), full + [eos]))
    width = max(len(ids) for _, ids in rows)
    ids = torch.full((len(rows), width), eos, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for row, (n_prompt, tok) in enumerate(rows):
        ids[row, :len(tok)] = torch.tensor(tok)
        mask[row, n_prompt:len(tok)] = True
    return ids, mask[:, 1:]


@torch.no_grad()
def generate(model, tokenizer, prompts: list[str], max_new_tokens: int = 40) -> list[str]:
    """Greedy generations (text after the prompt, up to EOS) for a batch of prompts."""
    from transformers import GenerationConfig

    eos = tokenizer.eos_token_id
    rows = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), eos, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row):] = torch.tensor(row)
        attention[i, width - len(row):] = 1
    config = GenerationConfig(do_sample=False, max_new_tokens=max_new_tokens, eos_token_id=eos,
                              pad_token_id=eos)
    out = model.generate(input_ids=ids, attention_mask=attention, generation_config=config)
    texts = []
    for row in out[:, width:].tolist():
        cut = row.index(eos) if eos in row else len(row)
        texts.append(tokenizer.decode(row[:cut]))
    return texts


def accuracy(model, tokenizer, docs: list[dict]) -> float:
    """Share of docs whose greedy generation's ``#### N`` equals the target."""
    was_training = model.training
    model.eval()
    texts = generate(model, tokenizer, [d["prompt"] for d in docs])
    model.train(was_training)
    return sum(steps_task.extract_answer(t) == d["target"] for t, d in zip(texts, docs)) / len(docs)


def train_steps(spec: StepsSpec, progress: bool = True):
    """``(model, tokenizer, stats)``: the steps model trained for ``spec.steps`` steps."""
    with torch_threads(spec.threads):  # the caller's count restored at the end
        return _train(spec, progress)


def _train(spec: StepsSpec, progress: bool):
    started = time.perf_counter()
    tokenizer = steps_tokenizer(spec)
    torch.manual_seed(spec.seed)
    model = make_family_model(spec, len(tokenizer), tokenizer.eos_token_id)
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": spec.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=spec.lr)
    stream = steps_task.train_docs(spec.seed)
    val_rng = random.Random(spec.seed + 1000)
    banned = {d["prompt"] for d in steps_task.test_docs()}
    val = [d for d in (steps_task.steps_doc(val_rng, val_rng.randint(*steps_task.OPERANDS))
                       for _ in range(4 * spec.val_docs)) if d["prompt"] not in banned]
    val = val[:spec.val_docs]
    model.train()
    losses: list[float] = []
    for step in range(spec.steps):
        _set_lr(opt, spec.lr * _lr_factor(step, spec.warmup, 0, spec.steps))
        ids, mask = encode(tokenizer, list(itertools.islice(stream, spec.batch)))
        logits = model(input_ids=ids).logits[:, :-1]  # (B, T-1, V)
        loss = torch.nn.functional.cross_entropy(logits[mask], ids[:, 1:][mask])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if progress and (step + 1) % 100 == 0:
            print(f"zoo: {spec.name} step {step + 1} loss {sum(losses[-20:]) / 20:.3f} "
                  f"({time.perf_counter() - started:.0f}s)", flush=True)
    model.eval()
    stats = {"steps": spec.steps, "final_loss": round(sum(losses[-20:]) / min(20, len(losses)), 4),
             "heldout_accuracy": round(accuracy(model, tokenizer, val), 4),
             "train_seconds": round(time.perf_counter() - started, 2),
             "n_params": sum(p.numel() for p in model.parameters()), "vocab_size": len(tokenizer)}
    if progress:
        print(f"zoo: {spec.name} trained in {stats['train_seconds']:.0f}s, held-out greedy "
              f"accuracy {stats['heldout_accuracy']:.2f}", flush=True)
    return model, tokenizer, stats
