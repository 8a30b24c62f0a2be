"""The zoo's model family: two architectures × three sizes, each trained once with checkpoints.

A zoo model is named ``<arch>-<size>`` (``llama-s`` … ``neox-l``):

* ``llama``: ``LlamaConfig`` — RMSNorm, SwiGLU MLP, full rotary, grouped-query attention,
  sequential residual, no biases (the architecture of the demo model ``llama-tiny``);
* ``neox``: ``GPTNeoXConfig`` (Pythia's architecture) — LayerNorm with bias, GELU MLP, parallel
  residual ``h + attn(ln1(h)) + mlp(ln2(h))``, rotary on a quarter of each head, biases everywhere.

Sizes differ in width and depth (``SIZES``); vocabulary, data and schedule are shared, so the
only differences between the six models are architecture and size.

Training (``train_family``), deterministic on CPU (one thread per model, so the weights do not
depend on the core count):

1. Seed torch with ``seed``, build the model; checkpoint ``step 0`` is the initialisation.
2. Steps ``1 … kv_only_steps``: kv batches only (retrieval first: ``train.py`` step 4). At step
   ``kv_only_steps`` the held-out retrieval accuracy must reach ``kv_accept``; if it does not and
   attempts are left, the attempt is discarded and training restarts from a fresh init
   (``seed + 1``, its own data stream). Retrieval appears suddenly after a plateau whose length
   depends on the init. Measured here (seed 7): every 2-layer model of ``SIZES`` forms it between
   steps 150 and 300 (held-out retrieval ≥ 0.98 at step 300, no restart); wider or deeper Llamas
   often do not (2 layers × d=160: 3 of 4 seeds still on the plateau at step 300; 3 layers ×
   d=128: both archs at seed 7), which is why ``l`` is 2 layers × d=128. The 1-layer models cannot
   form the circuit at all (it needs a previous-token head before the lookup), so ``s`` gets a
   single attempt.
3. Steps ``kv_only_steps+1 … steps``: a kv and an arithmetic batch per step. Answer-only loss
   over the task's answer vocabulary, AdamW, warm-up, constant rate, linear decay to 10 % over
   the last fifth of the run (``train._lr_factor``); gradient clipping at 1.0.
4. Every step listed in ``checkpoints`` is handed to ``on_checkpoint(step, model, info)`` as the
   model is at that step (one run, no retraining per checkpoint); checkpoints of phase 1 are held
   in memory until the attempt is accepted, so every saved checkpoint belongs to the kept run.
   ``info`` holds the held-out retrieval accuracy at that step and the mean recent losses.

No early stop: every model follows the same step grid, so checkpoint ``stepN`` means the same
amount of training for every model of the zoo.
"""

from __future__ import annotations

import copy
import dataclasses
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch

from harness_xai.zoo import taskgen
from harness_xai.zoo.threads import torch_threads
from harness_xai.zoo.train import (ANSWER_WORDS, _lr_factor, _set_lr, _step, answer_vocab,
                                   draw_texts, retrieval_accuracy)

ARCHS = ("llama", "neox")
#: width, depth, heads, MLP width and phase-1 attempts per size (see step 2 of the docstring)
SIZES: dict[str, dict[str, int]] = {
    "s": dict(hidden_size=64, num_hidden_layers=1, num_attention_heads=4, intermediate_size=128,
              kv_attempts=1),
    "m": dict(hidden_size=96, num_hidden_layers=2, num_attention_heads=4, intermediate_size=192),
    "l": dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256),
}
ZOO_MODELS = tuple(f"{arch}-{size}" for arch in ARCHS for size in SIZES)


@dataclass(frozen=True)
class FamilySpec:
    """Everything that determines a zoo model's checkpoints (its hash names the build)."""

    arch: str
    size: str
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    steps: int = 540
    kv_only_steps: int = 300  # phase 1: retrieval only
    checkpoints: tuple[int, ...] = (0, 100, 200, 300, 420, 540)
    kv_accept: float = 0.5  # held-out retrieval needed at the end of phase 1 …
    kv_attempts: int = 3  # … or phase 1 restarts from a fresh init, at most this many times
    kv_batch: int = 32
    arith_batch: int = 32
    kv_records: tuple[int, int] = taskgen.KV_TRAIN_RECORDS
    lr: float = 1e-3
    warmup: int = 20
    weight_decay: float = 0.01
    seed: int = taskgen.TRAIN_SEED
    vocab_size: int = 512
    tokenizer_texts: int = 4000
    max_position_embeddings: int = 1024
    threads: int = 1
    version: int = 1  # bump when code changes the result

    @property
    def name(self) -> str:
        return f"{self.arch}-{self.size}"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def family_spec(name: str, **overrides: Any) -> FamilySpec:
    """The spec of zoo model ``name`` (``llama-m``), with optional field overrides."""
    from harness_xai.errors import UserError

    arch, _, size = name.partition("-")
    if arch not in ARCHS or size not in SIZES:
        raise UserError(f"unknown zoo model '{name}': choose from {', '.join(ZOO_MODELS)}.")
    spec = dataclasses.replace(FamilySpec(arch=arch, size=size, **SIZES[size]), **overrides)
    grid = list(spec.checkpoints)
    if grid != sorted(set(grid)) or not all(0 <= s <= spec.steps for s in grid) or (
            grid[-1:] != [spec.steps]):
        raise UserError(f"checkpoints {grid} of {name}: need distinct, increasing steps within "
                        f"0…{spec.steps}, the last one {spec.steps}.")
    if not 0 <= spec.kv_only_steps <= spec.steps or spec.kv_attempts < 1:
        raise UserError(f"{name}: need 0 ≤ kv_only_steps ≤ steps and kv_attempts ≥ 1.")
    return spec


def make_family_model(spec: FamilySpec, vocab_size: int, special_id: int):
    """A freshly initialised model of ``spec.arch`` (call after seeding)."""
    common = dict(vocab_size=vocab_size, hidden_size=spec.hidden_size,
                  num_hidden_layers=spec.num_hidden_layers,
                  num_attention_heads=spec.num_attention_heads,
                  intermediate_size=spec.intermediate_size,
                  max_position_embeddings=spec.max_position_embeddings, tie_word_embeddings=False,
                  bos_token_id=special_id, eos_token_id=special_id, pad_token_id=special_id,
                  attn_implementation="sdpa")
    if spec.arch == "llama":
        from transformers import LlamaConfig, LlamaForCausalLM
        return LlamaForCausalLM(LlamaConfig(
            num_key_value_heads=max(1, spec.num_attention_heads // 2), **common))
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM
    return GPTNeoXForCausalLM(GPTNeoXConfig(
        hidden_act="gelu", use_parallel_residual=True, attention_bias=True,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                         "partial_rotary_factor": 0.25}, **common))


Checkpoint = Callable[[int, Any, dict[str, Any]], None]


def train_family(spec: FamilySpec, tokenizer, on_checkpoint: Checkpoint,
                 progress: bool = True) -> dict[str, Any]:
    """Train ``spec`` once, handing every checkpoint to ``on_checkpoint``; returns the stats.
    Torch runs on ``spec.threads`` threads meanwhile; the caller's count is restored after."""
    with torch_threads(spec.threads):
        return _train_family(spec, tokenizer, on_checkpoint, progress)


def _train_family(spec: FamilySpec, tokenizer, on_checkpoint: Checkpoint,
                  progress: bool) -> dict[str, Any]:
    started, cpu_started = time.perf_counter(), time.process_time()
    kv_vocab, arith_vocab = (answer_vocab(tokenizer, words) for words in ANSWER_WORDS)  # (A,)
    banned = taskgen.test_prompts()
    val_rng = random.Random(spec.seed + 1000)
    val_docs = [taskgen.kv_doc(val_rng, val_rng.randint(*spec.kv_records)) for _ in range(64)]
    attempts: list[dict[str, Any]] = []
    for attempt in range(spec.kv_attempts):  # phase 1, restarted from a fresh init on a plateau
        seed = spec.seed + attempt
        torch.manual_seed(seed)
        model = make_family_model(spec, len(tokenizer), tokenizer.eos_token_id)
        opt = _optimizer(model, spec)
        rng = random.Random(seed)
        recent: list[tuple[float, float]] = []
        pending: list[tuple[int, Any, dict[str, Any]]] = []  # phase-1 checkpoints of this attempt
        model.train()
        for step in range(spec.kv_only_steps + 1):
            if step in spec.checkpoints or step == spec.kv_only_steps:
                info = _info(step, model, tokenizer, val_docs, kv_vocab, recent)
                if step in spec.checkpoints:
                    pending.append((step, copy.deepcopy(model).eval(), info))
            if step == spec.kv_only_steps:
                break
            _train_step(model, opt, tokenizer, spec, step, rng, banned, kv_vocab, None, recent)
        accuracy = info["kv_heldout_accuracy"]
        attempts.append({"seed": seed, "kv_heldout_accuracy": accuracy})
        if progress:
            print(f"zoo: {spec.name} attempt {attempt + 1}/{spec.kv_attempts}: held-out kv "
                  f"retrieval {accuracy:.2f} at step {spec.kv_only_steps} "
                  f"({time.perf_counter() - started:.0f}s)", flush=True)
        if accuracy >= spec.kv_accept:
            break
    saved = []
    for step, snapshot, info in pending:
        on_checkpoint(step, snapshot, info)
        saved.append(info)
    for step in range(spec.kv_only_steps, spec.steps):  # phase 2: kv + arithmetic
        _train_step(model, opt, tokenizer, spec, step, rng, banned, kv_vocab, arith_vocab, recent)
        if step + 1 in spec.checkpoints:
            info = _info(step + 1, model, tokenizer, val_docs, kv_vocab, recent)
            model.eval()
            on_checkpoint(step + 1, model, info)
            model.train()
            saved.append(info)
    model.eval()
    if progress:
        print(f"zoo: {spec.name} trained in {time.perf_counter() - started:.0f}s, held-out kv "
              f"retrieval {saved[-1]['kv_heldout_accuracy']:.2f}", flush=True)
    return {"checkpoints": saved, "attempts": attempts, "seed": seed,
            "train_seconds": round(time.perf_counter() - started, 2),
            "train_cpu_seconds": round(time.process_time() - cpu_started, 2),
            "n_params": sum(p.numel() for p in model.parameters()),
            "vocab_size": len(tokenizer)}


def _optimizer(model, spec: FamilySpec):
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": spec.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=spec.lr)


def _train_step(model, opt, tokenizer, spec: FamilySpec, step: int, rng: random.Random,
                banned: set[str], kv_vocab: torch.Tensor, arith_vocab: torch.Tensor | None,
                recent: list[tuple[float, float]]) -> None:
    _set_lr(opt, spec.lr * _lr_factor(step, spec.warmup, 0, spec.steps))
    batches = [(draw_texts(rng, spec.kv_batch, banned, spec.kv_records), kv_vocab)]
    if arith_vocab is not None:
        batches.append((draw_texts(rng, spec.arith_batch, banned, None), arith_vocab))
    losses = _step(model, opt, tokenizer, batches)
    recent.append((losses[0], losses[1] if len(losses) > 1 else float("nan")))


def _info(step: int, model, tokenizer, val_docs, kv_vocab, recent) -> dict[str, Any]:
    """Held-out retrieval accuracy at ``step`` and the mean losses of the last 20 steps."""
    tail = recent[-20:]

    def mean(values: list[float]) -> float | None:
        values = [v for v in values if v == v]  # drop NaN (no arithmetic batch yet)
        return round(sum(values) / len(values), 4) if values else None

    return {"step": step,
            "kv_heldout_accuracy": round(retrieval_accuracy(model, tokenizer, val_docs,
                                                            kv_vocab), 4),
            "loss": {"xai_kv": mean([x[0] for x in tail]), "xai_arith": mean([x[1] for x in tail])}}
