"""Tiny models the tests build with a known greedy output: the micro zoo model fine-tuned to answer
each training prompt with its own fixed response, then EOS.

Training stops as soon as greedy decoding of every prompt reproduces its response exactly (checked
with ``generate``), so HFLM's greedy generation is the response token for token;
``build_scripted_model`` raises if it never does. ``add_tokens`` become single (non-special)
tokens of the tokenizer (the thinking model's ``<think>`` markers).
"""

from __future__ import annotations

from pathlib import Path

import torch

from harness_xai.zoo.threads import torch_threads


def build_scripted_model(base: Path, dest: Path, pairs: list[tuple[str, str]],
                         add_tokens: tuple[str, ...] = (), max_steps: int = 600, lr: float = 3e-3,
                         seed: int = 0) -> Path:
    """``pairs``: (prompt as lm-eval sends it, the response the model must write)."""
    with torch_threads(1):  # far faster than contended threads on a busy machine
        return _build(base, dest, pairs, add_tokens, max_steps, lr, seed)


def _build(base: Path, dest: Path, pairs, add_tokens, max_steps: int, lr: float, seed: int) -> Path:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(str(base))
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    if add_tokens:
        tok.add_tokens(list(add_tokens))
        model.resize_token_embeddings(len(tok), mean_resizing=False)
    contexts = [tok(p, add_special_tokens=False)["input_ids"] for p, _ in pairs]
    targets = [tok(r, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for _, r in pairs]
    width = max(len(c) + len(t) for c, t in zip(contexts, targets))
    ids = torch.full((len(pairs), width), tok.eos_token_id)
    labels = torch.full((len(pairs), width), -100)
    mask = torch.zeros((len(pairs), width), dtype=torch.long)
    for i, (c, t) in enumerate(zip(contexts, targets)):  # right-padded rows, loss on the response
        row = c + t
        ids[i, : len(row)] = torch.tensor(row)
        labels[i, len(c): len(row)] = torch.tensor(t)
        mask[i, : len(row)] = 1
    optim = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    for step in range(1, max_steps + 1):
        model.train()
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        optim.zero_grad()
        loss.backward()
        optim.step()
        if step % 25 == 0 and _reproduces(model, contexts, targets, tok.eos_token_id):
            model.save_pretrained(dest)
            tok.save_pretrained(dest)
            return dest
    raise RuntimeError(f"the scripted model did not learn its responses in {max_steps} steps "
                       f"(loss {float(loss):.3g})")


def _reproduces(model, contexts: list[list[int]], targets: list[list[int]], eos: int) -> bool:
    model.eval()
    with torch.no_grad():
        for c, target in zip(contexts, targets):
            out = model.generate(torch.tensor([c]), attention_mask=torch.ones(1, len(c), dtype=torch.long),
                                 max_new_tokens=len(target), do_sample=False,
                                 pad_token_id=eos, eos_token_id=eos)
            if out[0, len(c):].tolist() != target:
                return False
    return True
