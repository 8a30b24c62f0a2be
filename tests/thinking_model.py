"""A tiny thinking model the tests build: the micro zoo model fine-tuned to answer every prompt
it is trained on with a fixed reasoning trace, ``THOUGHT``, then EOS.

``<think>`` and ``</think>`` are added to the tokenizer as single (non-special) tokens, so the
same model serves lm-eval's HFLM with ``think_end_token="</think>"`` (string) and with the
token's id (integer). Training stops as soon as greedy decoding of every training prompt
reproduces the trace exactly (checked with ``generate``), so HFLM's greedy generation is the
trace token for token; ``build_thinking_model`` raises if it never does.
"""

from __future__ import annotations

from pathlib import Path

import torch

#: three reasoning steps (two sentences, then a line; each with HTML-special text), the marker,
#: a GSM8K-style final answer
THOUGHT = "<think> Add 9 & 8. Check <it>.\nSo <17>.</think> #### 17"
MARKERS = ("<think>", "</think>")


def build_thinking_model(base: Path, dest: Path, prompts: list[str], max_steps: int = 600,
                         lr: float = 3e-3, seed: int = 0) -> Path:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # far faster than contended threads on a busy machine
    try:
        return _build(base, dest, prompts, max_steps, lr, seed)
    finally:
        torch.set_num_threads(threads)


def _build(base: Path, dest: Path, prompts: list[str], max_steps: int, lr: float, seed: int) -> Path:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(str(base))
    tok.add_tokens(list(MARKERS))
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    model.resize_token_embeddings(len(tok), mean_resizing=False)
    target = tok(THOUGHT, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    contexts = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    width = max(len(c) for c in contexts) + len(target)
    ids = torch.full((len(contexts), width), tok.eos_token_id)
    labels = torch.full((len(contexts), width), -100)
    mask = torch.zeros((len(contexts), width), dtype=torch.long)
    for i, c in enumerate(contexts):  # right-padded rows, loss on the trace only
        row = c + target
        ids[i, : len(row)] = torch.tensor(row)
        labels[i, len(c): len(row)] = torch.tensor(target)
        mask[i, : len(row)] = 1
    optim = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    for step in range(1, max_steps + 1):
        model.train()
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        optim.zero_grad()
        loss.backward()
        optim.step()
        if step % 25 == 0 and _reproduces(model, contexts, target):
            model.save_pretrained(dest)
            tok.save_pretrained(dest)
            return dest
    raise RuntimeError(f"the thinking model did not learn its trace in {max_steps} steps "
                       f"(loss {float(loss):.3g})")


def _reproduces(model, contexts: list[list[int]], target: list[int]) -> bool:
    model.eval()
    with torch.no_grad():
        for c in contexts:
            out = model.generate(torch.tensor([c]), attention_mask=torch.ones(1, len(c), dtype=torch.long),
                                 max_new_tokens=len(target), do_sample=False,
                                 pad_token_id=target[-1], eos_token_id=target[-1])
            if out[0, len(c):].tolist() != target:
                return False
    return True


#: GSM8K-schema documents with short questions (lm-eval's own gsm8k.yaml formats and scores them;
#: short prompts keep the fine-tuning to seconds); golds 18, 3, 12 — the model always says 17
DOCS = [{"question": "What is 9 + 9?", "answer": "9 + 9 = 18\n#### 18"},
        {"question": "Zoë has 2 and gets 1. How many?", "answer": "2 + 1 = 3\n#### 3"},
        {"question": "What is <b>5 + 7</b>?", "answer": "5 + 7 = 12\n#### 12"}]


TASK, TASK_NO_MATCH = "fx_think_gsm8k", "fx_think_no_match"
#: a filter that never matches the model's answer ("[invalid]": the invalid-extraction rule)
NO_MATCH_FILTER = [{"name": "strict-match", "filter": [
    {"function": "regex", "regex_pattern": "The answer is (\\-?[0-9]+)"},
    {"function": "take_first"}]}]


def write_thinking_tasks(dest: Path) -> Path:
    """lm-eval's gsm8k.yaml (template, regex filters, exact_match) bound to ``DOCS``, and the
    same task with a filter that finds no answer in the model's output."""
    from fixtures.lm_eval_tasks import builtin_tasks_dir, write_task

    include = {"include": str(builtin_tasks_dir() / "gsm8k" / "gsm8k.yaml")}
    write_task(dest, TASK, include, {"train": DOCS, "test": DOCS})
    return write_task(dest, TASK_NO_MATCH, {**include, "filter_list": NO_MATCH_FILTER},
                      {"train": DOCS, "test": DOCS})
