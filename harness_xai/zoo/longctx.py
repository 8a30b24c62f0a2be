"""Short long-context docs in the schemas of RULER ``niah_single_1`` and babilong ``qa1``, and a
tiny Llama trained on them (issue #14 item 5: evidence recovery on real benchmark formats).

Docs (``niah_doc`` / ``babilong_doc``, seeded ``random.Random``):

- RULER ``niah_single_1`` (lm-eval ``ruler/prepare_niah.py``, ``type_haystack="repeat"``): the
  noise haystack "The grass is green. … There and back again." repeated ``n_haystack`` times and
  joined by newlines, one needle "One of the special magic numbers for {key} is: {value}." inserted
  at a random sentence index, RULER's template around it; fields ``index``, ``input``,
  ``outputs`` ([value]), ``length``, ``max_length``, ``gen_prefix``. Simplifications: keys from
  small word lists (RULER: wonderwords adjective-noun pairs), ``length`` counted in words of the
  input (RULER: tokens of its tokenizer), short haystacks (a few hundred tokens).
- babilong ``qa1``: ``input`` = filler sentences (babilong: PG-19 book text; here a fixed set of
  plain narrative sentences) with 2–``max_facts`` bAbI qa1 facts ("Mary moved to the bathroom.")
  spread in order, ``question`` "Where is {name}?" about one person who moved, ``target`` =
  that person's LAST location.

The prompt is never built here: ``train_lm`` takes ``context(kind, doc)``; the bench passes
``lm_eval_context`` (lm-eval's own ``fewshot_context`` of the task YAML), so training and test
see the real template. ``continuation(kind, doc)`` is the answer the model learns (babilong: the
format its description asks for, "The most recent location of Mary is bathroom."; RULER: the
number), followed by ``<|endoftext|>`` so greedy decoding stops.

Training (``train_lm``): byte-level BPE on the training contexts (``train_bpe``: the zoo
tokenizer's construction on this corpus), ``train.make_model`` (the zoo's Llama), batches of
both tasks alternating, cross-entropy over the whole vocabulary on the continuation tokens only
(``train.batch``'s answer mask), AdamW with the zoo's warm-up/decay (``train._lr_factor``),
gradient clipping at 1.0, until ``steps`` or the CPU / wall-clock budget.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from harness_xai.zoo.threads import torch_threads
from harness_xai.zoo.tokenizer import EOT
from harness_xai.zoo.train import TrainSpec, _lr_factor, _set_lr, batch, make_model

RULER_TEMPLATE = ("Some special magic numbers are hidden within the following text. Make sure to "
                  "memorize it. I will quiz you about the numbers afterwards.\n{context}\nWhat are "
                  "all the special magic numbers for {query} mentioned in the provided text?")
NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
NEEDLE = "One of the special magic numbers for {key} is: {value}."
ADJECTIVES = ("wise", "gentle", "brave", "quiet", "bright", "calm", "eager", "fancy", "jolly",
              "kind", "lazy", "proud", "silly", "tidy", "witty", "zesty")
NOUNS = ("shelf", "river", "lamp", "stone", "cloud", "garden", "candle", "mirror", "pencil",
         "window", "basket", "ladder", "violin", "anchor", "meadow", "saddle")

NAMES = ("Mary", "John", "Daniel", "Sandra")
PLACES = ("bathroom", "hallway", "kitchen", "office", "garden", "bedroom")
VERBS = ("moved to", "went to", "went back to", "journeyed to", "travelled to")
FILLER = ("The morning was cold and grey.", "A carriage passed along the road.",
          "Nobody spoke for a long while.", "The old house stood at the end of the lane.",
          "She closed the book and looked out of the window.", "The dog slept by the fire.",
          "Rain fell softly on the roof.", "He had not written a letter in years.",
          "The bells of the church rang at noon.", "There was bread and cheese on the table.",
          "The wind rose in the evening.", "A boat drifted slowly down the river.",
          "The clock in the hall struck nine.", "They walked together in silence.",
          "The garden gate was open.", "Nothing more was said about the matter.")


def niah_doc(rng: random.Random, index: int, n_haystack: int) -> dict[str, Any]:
    """One RULER niah_single_1 doc (module docstring) with ``n_haystack`` noise repeats."""
    key = f"{rng.choice(ADJECTIVES)}-{rng.choice(NOUNS)}"
    value = str(rng.randint(10 ** 6, 10 ** 7 - 1))  # RULER: 7 digits
    sentences = [NOISE] * n_haystack
    sentences.insert(rng.randint(0, n_haystack), NEEDLE.format(key=key, value=value))
    text = RULER_TEMPLATE.format(context="\n".join(sentences), query=key)
    return {"index": index, "input": text, "outputs": [value], "length": len(text.split()),
            "max_length": 4096,
            "gen_prefix": f"The special magic number for {key} mentioned in the provided text is"}


def babilong_doc(rng: random.Random, n_filler: int, max_facts: int = 4) -> dict[str, Any]:
    """One babilong qa1 doc (module docstring): facts in order among ``n_filler`` sentences."""
    facts, where = [], {}
    for _ in range(rng.randint(2, max_facts)):
        name, place = rng.choice(NAMES), rng.choice(PLACES)
        facts.append(f"{name} {rng.choice(VERBS)} the {place}.")
        where[name] = place
    filler = [rng.choice(FILLER) for _ in range(n_filler)]
    slots = sorted(rng.sample(range(n_filler + len(facts)), len(facts)))
    out, it = [], iter(facts)
    for k in range(n_filler + len(facts)):
        out.append(next(it) if k in slots else filler.pop())
    name = rng.choice(sorted(where))
    return {"input": " ".join(out), "question": f"Where is {name}?", "target": where[name]}


def make_docs(kind: str, n: int, seed: int, size: tuple[int, int]) -> list[dict[str, Any]]:
    """``n`` docs of ``kind`` ("niah" / "babilong"), haystack size drawn from ``size``."""
    rng = random.Random(seed)
    if kind == "niah":
        return [niah_doc(rng, i, rng.randint(*size)) for i in range(n)]
    return [babilong_doc(rng, rng.randint(*size)) for _ in range(n)]


def write_jsonl(path: Path, docs: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs))
    return path


def continuation(kind: str, doc: dict[str, Any]) -> str:
    """The answer the model learns after lm-eval's context (scored correct by the task)."""
    if kind == "niah":
        return " " + doc["outputs"][0]
    name = doc["question"].split()[-1].rstrip("?")
    return f" The most recent location of {name} is {doc['target']}."


def lm_eval_context(task, doc: dict[str, Any]) -> str:
    """The prompt an lm-eval ``ConfigurableTask`` builds for ``doc`` (as ``build_all_requests``
    does: its few-shot setting and ``gen_prefix``)."""
    return task.fewshot_context(doc, num_fewshot=task.config.num_fewshot or 0,
                                gen_prefix=task.doc_to_prefix(doc))


def train_bpe(texts: list[str], vocab_size: int):
    """The zoo tokenizer's construction (``tokenizer.train_tokenizer``) on ``texts``."""
    from harness_xai.zoo.tokenizer import train_tokenizer

    return train_tokenizer(vocab_size=vocab_size, texts=list(texts))


Context = Callable[[str, dict[str, Any]], str]


def train_lm(context: Context, spec: TrainSpec, sizes: dict[str, tuple[int, int]],
             batch_size: int = 16, cpu_budget_s: float = 600.0,
             wall_budget_s: float | None = None, seed: int = 11, progress: bool = True,
             init: tuple[Any, Any] | None = None) -> tuple[Any, Any, dict[str, Any]]:
    """``_train_lm`` on ``spec.threads`` torch threads, the caller's count restored afterwards
    (a caller's later fp32 results must not depend on whether it trained first)."""
    with torch_threads(spec.threads):
        return _train_lm(context, spec, sizes, batch_size, cpu_budget_s, wall_budget_s, seed,
                         progress, init)


def _train_lm(context: Context, spec: TrainSpec, sizes: dict[str, tuple[int, int]],
              batch_size: int = 16, cpu_budget_s: float = 600.0,
              wall_budget_s: float | None = None, seed: int = 11, progress: bool = True,
              init: tuple[Any, Any] | None = None) -> tuple[Any, Any, dict[str, Any]]:
    """Train tokenizer and model on fresh docs of both kinds (module docstring); returns
    ``(model, tokenizer, stats)``. ``sizes[kind]`` = haystack size range of training docs;
    training stops after ``spec.steps`` or when either budget (CPU / wall seconds) is spent.
    ``init = (model, tokenizer)`` continues training them (fresh optimizer and schedule)."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    kinds = sorted(sizes)

    def texts(kind: str, n: int) -> list[tuple[str, list[tuple[int, int]]]]:
        out = []
        for doc in make_docs(kind, n, rng.randrange(2 ** 31), sizes[kind]):
            ctx, cont = context(kind, doc), continuation(kind, doc) + EOT
            out.append((ctx + cont, [(len(ctx), len(ctx) + len(cont))]))
        return out

    if init is None:
        corpus = [t for kind in kinds for t, _ in texts(kind, 200)]
        tokenizer = train_bpe(corpus, spec.vocab_size)
        model = make_model(spec, len(tokenizer), tokenizer.eos_token_id)
    else:
        model, tokenizer = init
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": spec.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=spec.lr)
    started, cpu0 = time.perf_counter(), time.process_time()
    losses: dict[str, list[float]] = {k: [] for k in kinds}
    model.train()
    step = 0
    for step in range(spec.steps):
        if time.process_time() - cpu0 > cpu_budget_s or (
                wall_budget_s is not None and time.perf_counter() - started > wall_budget_s):
            break
        _set_lr(opt, spec.lr * _lr_factor(step, spec.warmup, 0, spec.steps))
        for kind in kinds:
            ids, answer = batch(tokenizer, texts(kind, batch_size), tokenizer.eos_token_id)
            logits = model(input_ids=ids).logits[:, :-1]  # (B, T-1, V)
            loss = torch.nn.functional.cross_entropy(logits[answer], ids[:, 1:][answer])
            loss.backward()
            losses[kind].append(loss.item())
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if progress and (step + 1) % 25 == 0:
            print(f"longctx: step {step + 1} " + " ".join(
                f"{k} {sum(v[-25:]) / len(v[-25:]):.3f}" for k, v in losses.items())
                + f" ({time.process_time() - cpu0:.0f} cpu-s, "
                f"{time.perf_counter() - started:.0f}s)", flush=True)
    else:
        step = spec.steps
    model.eval()
    head = {k: round(sum(v[:5]) / max(1, len(v[:5])), 4) for k, v in losses.items()}
    tail = {k: round(sum(v[-25:]) / max(1, len(v[-25:])), 4) for k, v in losses.items()}
    return model, tokenizer, {"steps": step, "first_loss": head, "final_loss": tail,
                              "train_cpu_seconds": round(time.process_time() - cpu0, 1),
                              "train_seconds": round(time.perf_counter() - started, 1),
                              "n_params": sum(p.numel() for p in model.parameters()),
                              "vocab_size": len(tokenizer), "batch_size": batch_size,
                              "seed": seed}
