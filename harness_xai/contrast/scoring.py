"""The token sequences lm-eval scored, rebuilt and re-scored through the HFLM instance.

lm-eval does not score the tokenisation of ``context + continuation`` (DESIGN.md §2.3):
trailing context spaces move to the continuation,
``continuation = tok(ctx + cont)[len(tok(ctx)):]``, an empty context becomes the model's prefix
token, and the model input is ``(ctx + cont)[-(max_length + 1):][:-1]`` (left truncation). We
call the same methods on the same ``lm`` object, so the attributed input is exactly what was
scored.

``score`` re-runs one scored sequence the way ``HFLM._loglikelihood_tokens`` does (same window,
same ``_model_call``, log-softmax in ``lm.softmax_dtype``) and returns the summed log-likelihood,
the per-token log-probs and the greedy tokens of the continuation, so every case can check itself
against lm-eval's logged value (``Case.ll_error``).
"""

from __future__ import annotations

from dataclasses import dataclass

#: |Δ| below this (log-prob units; per character for acc_norm) is a near-tie, not a decision
NEAR_TIE = 1e-4


@dataclass
class Scored:
    """One scored sequence: ``ids = context + continuation`` and lm-eval's model window."""

    ids: list[int]  # (n_ctx + n_cont,) full sequence, before truncation
    n_ctx: int  # number of context tokens
    start: int  # first token of the model window (left truncation); input = ids[start:-1]
    ll: float | None = None  # Σ log p(continuation) recomputed
    token_logprobs: list[float] | None = None  # (n_cont,)
    greedy: list[int] | None = None  # (n_cont,) argmax token at each continuation position
    greedy_gap: list[float] | None = None  # (n_cont,) log p(greedy) − log p(continuation token)

    @property
    def cont(self) -> list[int]:
        return self.ids[self.n_ctx:]


def scored_tokens(lm, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context tokens, continuation tokens) exactly as ``lm.loglikelihood`` encodes them."""
    if context == "":
        cont = lm.tok_encode(continuation, add_special_tokens=False)
        if cont and lm.prefix_token_id != cont[0]:
            return [lm.prefix_token_id], list(cont)
        return list(cont[:1]), list(cont[1:])
    ctx, cont = lm._encode_pair(context, continuation)
    return list(ctx), list(cont)


def window_start(n_tokens: int, max_length: int) -> int:
    """First kept token of ``ids[-(max_length + 1):]`` for a sequence of ``n_tokens``."""
    return max(0, n_tokens - (max_length + 1))


def build(lm, context: str, continuation: str) -> Scored:
    ctx, cont = scored_tokens(lm, context, continuation)
    ids = ctx + cont
    return Scored(ids=ids, n_ctx=len(ctx), start=window_start(len(ids), lm.max_length))


def score(lm, seq: Scored) -> Scored:
    """Fill ``ll``, ``token_logprobs``, ``greedy`` and ``greedy_gap`` by one forward over lm-eval's
    window."""
    import torch
    import torch.nn.functional as F

    n_cont = len(seq.ids) - seq.n_ctx
    if n_cont <= 0:
        seq.ll, seq.token_logprobs, seq.greedy, seq.greedy_gap = 0.0, [], [], []
        return seq
    window = seq.ids[seq.start:]  # (n_win,)
    inp = torch.tensor([window[:-1]], dtype=torch.long, device=lm.device)  # (1, n_win - 1)
    logits = lm._model_call(inp)  # (1, n_win - 1, vocab)
    logprobs = F.log_softmax(logits, dim=-1, dtype=getattr(lm, "softmax_dtype", None))[0]
    logprobs = logprobs[-n_cont:]  # (n_cont, vocab): positions predicting the continuation
    target = torch.tensor(seq.cont, dtype=torch.long, device=logprobs.device)  # (n_cont,)
    picked = logprobs.gather(1, target[:, None])[:, 0]  # (n_cont,)
    seq.token_logprobs = [float(x) for x in picked.float().cpu()]
    seq.ll = float(picked.sum())
    best = logprobs.max(-1)  # (n_cont,)
    seq.greedy = [int(x) for x in best.indices.cpu()]
    seq.greedy_gap = [float(x) for x in (best.values - picked).float().cpu()]
    return seq


def first_difference(a: list[int], b: list[int]) -> int | None:
    """First index where ``a`` and ``b`` differ (``None``: one is a prefix of the other)."""
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)


def common_prefix(a: str, b: str) -> int:
    """Length of the longest common prefix of two strings (binary search over slice
    comparisons, which run in C: O(n log n) character compares instead of a Python loop)."""
    lo, hi = 0, min(len(a), len(b))
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def logit_gap(lm, ids: list[int], wrong: int, gold: int) -> float:
    """``logit[wrong] − logit[gold]`` after ``ids`` (one forward: a token contrast's Δ)."""
    import torch

    with torch.no_grad():
        logits = lm._model_call(torch.tensor([ids], dtype=torch.long, device=lm.device))[0, -1]
    return float(logits[wrong].float() - logits[gold].float())
