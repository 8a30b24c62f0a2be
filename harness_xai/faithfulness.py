"""Faithfulness of explanations: deletion curves and an AOPC score, batched over cases.

For one case (input ids, token relevance, wrong token, gold token):
1. Candidates: every position except the BOS (positions holding the BOS id are never
   replaced). n = number of candidates.
2. Steps: for each requested fraction f (default 1, 2, 5, 10, 20, 30, 50%),
   k = clip(⌊f·n + ½⌋, 1, n); repeated k are dropped (the first fraction giving k is kept).
3. Orders: "relevance" = candidates by relevance descending, i.e. the tokens pushing hardest
   toward the wrong answer first (ties by position); "random" = ``n_random`` permutations from
   ``numpy.random.default_rng([seed, crc32(token ids)])``: the same for a case whatever the
   batch it is in.
4. Step s replaces the first k_s tokens of an order by ``baseline_token_id`` (the tokenizer's
   pad, else unk, else eos token, unless given) and measures Δℓ_s = logit[wrong] − logit[gold]
   at the last position; Δℓ₀ is measured the same way on the unchanged input.
5. ``aopc = mean_s clip((Δℓ₀ − Δℓ_s) / |Δℓ₀|, −1, 1)`` for the relevance order, ``aopc_random``
   the same for the random curve (Δℓ averaged over the orders). Each step counts the share of the
   explained Δ that deleting removed: 1 = all of it (or more: the decision flipped), −1 = deleting
   added at least Δℓ₀. Bounded in [−1, 1], so cases are comparable whatever their Δ (unclipped,
   a Δℓ₀ near 0 gave ±50 in the demo); the raw curves stay stored (``delta_relevance``). A
   trustworthy explanation has aopc well above aopc_random; NaN when Δℓ₀ = 0.
Batching: cases go in groups of ``batch_size``; one forward covers step s of every case of the
group (1 relevance row + ``n_random`` random rows per case), plus one forward for Δℓ₀. Rows are
left-padded to the longest with an attention mask and position ids counted from each row's
first real token, so the last position is every row's own last token (batched == unbatched).
Cost per case: 1 + n_steps·(1 + n_random) sequence forwards (default: up to 1 + 7·4 = 29;
attribution itself is about 3 forward-equivalents), no backward.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch

from harness_xai.errors import UserError
from harness_xai.lrp.inputs import input_device
from harness_xai.records import Explained, Faithfulness, TokenTarget

FRACTIONS = (0.01, 0.02, 0.05, 0.10, 0.20, 0.30, 0.50)


@dataclass
class DeletionCase:
    """Input of one deletion curve."""

    token_ids: Sequence[int]  # (n_tokens,)
    relevance: np.ndarray  # (n_tokens,) positive = toward ``target_id``
    target_id: int  # the wrong answer's token
    foil_id: int  # the gold answer's token


def baseline_token(tokenizer, model=None, override: int | None = None) -> int:
    """The replacement token: ``override``, else pad, unk, eos (tokenizer, then model config)."""
    if override is not None:
        return int(override)
    sources = [tokenizer, getattr(model, "config", None)]
    for name in ("pad_token_id", "unk_token_id", "eos_token_id"):
        for source in sources:
            value = getattr(source, name, None) if source is not None else None
            if isinstance(value, (list, tuple)):
                value = value[0] if value else None
            if value is not None:
                return int(value)
    raise UserError("faithfulness needs a neutral token but the tokenizer has no pad, unk or eos "
                    "token; pass baseline_token_id=… (or set tokenizer.pad_token).")


def deletion_steps(n: int, fractions: Sequence[float] = FRACTIONS) -> tuple[list[float], list[int]]:
    """(kept fractions, k per step) for ``n`` candidates: at least 1, at most n, no repeats."""
    kept, ks = [], []
    for f in fractions:
        k = min(n, max(1, math.floor(f * n + 0.5)))
        if n > 0 and k not in ks:
            kept.append(float(f))
            ks.append(k)
    return kept, ks


def orders(case: DeletionCase, bos_token_id: int | None, n_random: int,
           seed: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """Candidate positions in relevance order (n,) and ``n_random`` random permutations."""
    ids = np.asarray(case.token_ids)
    candidates = np.flatnonzero(ids != bos_token_id) if bos_token_id is not None \
        else np.arange(len(ids))
    relevance = np.asarray(case.relevance, dtype=np.float64)[candidates]
    by_relevance = candidates[np.argsort(-relevance, kind="stable")]
    rng = np.random.default_rng([seed, zlib.crc32(ids.astype(np.int64).tobytes())])
    return by_relevance, [rng.permutation(candidates) for _ in range(n_random)]


def deletion_curves(model, cases: Sequence[DeletionCase], *, baseline_token_id: int,
                    bos_token_id: int | None = None, fractions: Sequence[float] = FRACTIONS,
                    n_random: int = 3, seed: int = 0,
                    batch_size: int = 8) -> list[Faithfulness | None]:
    """One :class:`Faithfulness` per case (None for a case with nothing to replace)."""
    if n_random < 1 or batch_size < 1:
        raise UserError(f"faithfulness needs n_random >= 1 and batch_size >= 1, got "
                        f"n_random={n_random}, batch_size={batch_size}.")
    results: list[Faithfulness | None] = []
    was_training = model.training
    model.eval()
    try:
        for first in range(0, len(cases), batch_size):
            results += _group_curves(model, cases[first:first + batch_size], baseline_token_id,
                                     bos_token_id, fractions, n_random, seed)
    finally:
        model.train(was_training)
    return results


def _group_curves(model, cases, baseline_id, bos_id, fractions, n_random, seed):
    plans = []  # per case: (fractions, ks, relevance order, random orders)
    for case in cases:
        by_relevance, randoms = orders(case, bos_id, n_random, seed)
        plans.append((*deletion_steps(len(by_relevance), fractions), by_relevance, randoms))
    full = _deltas(model, [list(c.token_ids) for c in cases], cases, baseline_id)  # (n_cases,)
    curves = [([], []) for _ in cases]  # per case: (Δℓ relevance, Δℓ random mean) per step
    for step in range(max((len(p[1]) for p in plans), default=0)):
        rows, owners = [], []
        for c, (_, ks, by_relevance, randoms) in enumerate(plans):
            if step < len(ks):
                for order in (by_relevance, *randoms):
                    ids = np.array(cases[c].token_ids)
                    ids[order[:ks[step]]] = baseline_id
                    rows.append(ids.tolist())
                    owners.append(c)
        deltas = _deltas(model, rows, [cases[c] for c in owners], baseline_id)
        at = 0
        for c in sorted(set(owners)):
            curves[c][0].append(float(deltas[at]))
            curves[c][1].append(float(deltas[at + 1:at + 1 + n_random].mean()))
            at += 1 + n_random
    out = []
    for c, (kept, ks, _, _) in enumerate(plans):
        if not ks:
            out.append(None)
            continue
        d0 = float(full[c])
        out.append(Faithfulness(
            fractions=kept, n_removed=ks, delta_relevance=curves[c][0],
            delta_random=curves[c][1], aopc=_aopc(d0, curves[c][0]),
            aopc_random=_aopc(d0, curves[c][1]), baseline_token_id=int(baseline_id),
            params={"order": "relevance descending (toward the wrong answer)",
                    "n_random": n_random, "seed": seed, "protected": "bos",
                    "fractions_requested": [float(f) for f in fractions],
                    "delta_full": d0, "forwards_per_case": 1 + len(ks) * (1 + n_random)}))
    return out


def _aopc(d0: float, curve: list[float]) -> float:
    if d0 == 0:
        return float("nan")
    return float(np.mean([np.clip((d0 - d) / abs(d0), -1.0, 1.0) for d in curve]))


@torch.inference_mode()
def _deltas(model, rows: list[list[int]], cases: list[DeletionCase], pad_id: int) -> np.ndarray:
    """Δℓ at each row's last token, all rows in one left-padded forward: (n_rows,) float64."""
    device = input_device(model)
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)  # (B, T)
    mask = torch.zeros((len(rows), width), dtype=torch.long)  # (B, T)
    for b, row in enumerate(rows):
        ids[b, width - len(row):] = torch.as_tensor(row)
        mask[b, width - len(row):] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # (B, T) 0 at each row's first real token
    out = model(input_ids=ids.to(device), attention_mask=mask.to(device),
                position_ids=positions.to(device), use_cache=False, logits_to_keep=1)
    last = out.logits[:, -1].float()  # (B, vocab)
    target = torch.tensor([c.target_id for c in cases], device=device)
    foil = torch.tensor([c.foil_id for c in cases], device=device)
    rows_ = torch.arange(len(rows), device=device)
    return (last[rows_, target] - last[rows_, foil]).double().cpu().numpy()


def with_faithfulness(done: list[Explained], model, tokenizer, *,
                      baseline_token_id: int | None = None, **options) -> list[Explained]:
    """``done`` with the deletion curve set on every explained token contrast (relevance order =
    its ``token_relevance``); ``options`` go to :func:`deletion_curves`. Sequence-level
    contrasts (no single wrong/gold token) are left without a curve."""
    todo = [i for i, (case, ex) in enumerate(done)
            if ex is not None and isinstance(case.objective, TokenTarget)]
    if not todo:
        return list(done)
    baseline_id = baseline_token(tokenizer, model, baseline_token_id)
    bos = getattr(tokenizer, "bos_token_id", None)
    bos = bos if bos is not None else getattr(model.config, "bos_token_id", None)
    inputs = [DeletionCase(done[i][0].token_ids, done[i][1].token_relevance,
                           done[i][0].wrong_token_id, done[i][0].gold_token_id) for i in todo]
    curves = deletion_curves(model, inputs, baseline_token_id=baseline_id, bos_token_id=bos,
                             **options)
    out = list(done)
    for i, curve in zip(todo, curves):
        case, ex = out[i]
        out[i] = (case, replace(ex, faithfulness=curve))
    return out
