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

from scripted_model import build_scripted_model

#: three reasoning steps (two sentences, then a line; each with HTML-special text), the marker,
#: a GSM8K-style final answer
THOUGHT = "<think> Add 9 & 8. Check <it>.\nSo <17>.</think> #### 17"
MARKERS = ("<think>", "</think>")


def build_thinking_model(base: Path, dest: Path, prompts: list[str], max_steps: int = 600,
                         lr: float = 3e-3, seed: int = 0) -> Path:
    return build_scripted_model(base, dest, [(p, THOUGHT) for p in prompts], add_tokens=MARKERS,
                                max_steps=max_steps, lr=lr, seed=seed)


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
