"""Record lm-eval's own generations with their exact token ids, so failures need no regeneration.

A ``generate_until`` case needs the exact ids lm-eval generated (re-tokenizing the decoded text
does not reproduce them). For the duration of one run ``GenerationRecorder`` shadows two
attributes of the HFLM *instance* (never the class) and calls the originals unchanged:
1. ``lm._model_generate(context, attention_mask=…, stop=…, …)`` → keep, per batch row, the
   context ids without the left padding (the row's ``attention_mask`` ones: exactly the ids after
   lm-eval's left truncation) and every id generated after the padded context;
2. ``lm.cache_hook.add_partial("generate_until", (context, gen_kwargs), text)`` — lm-eval calls it
   once per row, in row order, right after decoding that row → pair the next kept row with its
   context string and lm-eval's post-processed response ``text``.
A batch row keeps generating after its own stop sequence until every row of the batch stopped,
and is padded after its EOS. ``RecordedGeneration.ids`` cuts the row where the same generation
run alone would have stopped: after the first token that is an EOS id of the model's generation
config, or after which a stop sequence appears in the decoded last ``len(encode(stop)) + 2``
generated tokens (lm-eval's ``MultiTokenEOSCriteria``), else after ``max_gen_toks`` tokens.
``exact_generation`` accepts a record only if its context is the sample's, its text is the logged
response and the cut ids decode and post-process (``postprocess_generated_text``) to that same
response; otherwise the caller regenerates. Recording never changes or breaks the run: a batch
it cannot pair (an unknown signature, a changed lm-eval) is simply not recorded.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from harness_xai.lmeval_hook.shadow import shadow


@dataclass(frozen=True, eq=False)
class RecordedGeneration:
    """One row of one ``_model_generate`` batch, as lm-eval used it."""

    context: str  # the request's context string (``sample["arguments"][0][0]``)
    context_ids: np.ndarray  # (n_ctx,) int64, after left truncation, without padding
    generated: np.ndarray  # (n_out,) int64, every id generated for the row (uncut)
    stop: tuple[str, ...]  # lm-eval's stop sequences for the batch (``until`` + EOS text)
    text: str  # lm-eval's post-processed response for the row

    def ids(self, tokenizer, eos_ids: Iterable[int]) -> list[int]:
        """The generated ids cut where this row alone would have stopped (module docstring)."""
        gen = self.generated.tolist()
        eos = set(eos_ids)
        lookback = [(s, len(tokenizer.encode(s, add_special_tokens=False)) + 2)
                    for s in self.stop if s]
        for n in range(1, len(gen) + 1):
            if gen[n - 1] in eos:
                return gen[:n]
            if any(s in tokenizer.decode(gen[max(0, n - k): n]) for s, k in lookback):
                return gen[:n]
        return gen


class GenerationRecorder:
    """Shadows ``_model_generate`` and ``cache_hook.add_partial`` of one HFLM while installed."""

    def __init__(self, lm) -> None:
        self.lm = lm
        self.by_context: dict[str, list[RecordedGeneration]] = {}
        self._rows: deque = deque()  # (context_ids, generated, stop) awaiting their text
        self._undo: list[Callable[[], None]] = []

    def install(self) -> GenerationRecorder:
        lm = self.lm
        hook = getattr(lm, "cache_hook", None)
        if not callable(getattr(lm, "_model_generate", None)) or \
                not callable(getattr(hook, "add_partial", None)):
            return self
        original_generate, original_add = lm._model_generate, hook.add_partial

        def model_generate(*args, **kwargs):
            out = original_generate(*args, **kwargs)
            try:
                self._keep_batch(out, *args, **kwargs)
            except Exception:  # recording must never change or break the run
                self._rows.clear()
            return out

        def add_partial(attr, req, res, *args, **kwargs):
            try:
                if attr == "generate_until":
                    self._pair(req, res)
            except Exception:
                self._rows.clear()
            return original_add(attr, req, res, *args, **kwargs)

        self._shadow(lm, "_model_generate", model_generate)
        self._shadow(hook, "add_partial", add_partial)
        return self

    def restore(self) -> None:
        while self._undo:
            self._undo.pop()()
        self._rows.clear()

    def _keep_batch(self, out, context=None, max_length=None, stop=None, attention_mask=None,
                    **_) -> None:
        self._rows.clear()  # rows of an earlier batch never paired: never misattribute them
        if context is None or out is None or stop is None:
            return
        ctx = context.detach().cpu().numpy()  # (batch, padded n_ctx)
        gen = out.detach().cpu().numpy()[:, ctx.shape[1]:]  # (batch, n_out) after the context
        if attention_mask is None:
            if ctx.shape[0] != 1:
                return
            mask = np.ones_like(ctx, dtype=bool)
        else:
            mask = attention_mask.detach().cpu().numpy().astype(bool)
        stops = tuple(stop if isinstance(stop, (list, tuple)) else [stop])
        for row in range(ctx.shape[0]):
            self._rows.append((ctx[row][mask[row]].astype(np.int64), gen[row].astype(np.int64),
                               stops))

    def _pair(self, req, text) -> None:
        if not self._rows:
            return
        context_ids, generated, stop = self._rows.popleft()
        context = req[0] if isinstance(req, tuple) else None
        if isinstance(context, str) and isinstance(text, str):
            self.by_context.setdefault(context, []).append(
                RecordedGeneration(context, context_ids, generated, stop, text))

    def _shadow(self, obj: Any, name: str, fn: Callable) -> None:
        shadow(self._undo, obj, name, fn)


def eos_ids(lm) -> set[int]:
    """The ids at which the model's ``generate`` stops a row (its generation config's EOS)."""
    config = getattr(getattr(lm, "model", None), "generation_config", None)
    eos = getattr(config, "eos_token_id", None)
    if eos is None:
        return set()
    return {int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])}


def exact_generation(lm, records: Iterable[RecordedGeneration], context: str,
                     response: str) -> tuple[list[int], list[int], str] | None:
    """(context ids, generated ids, text) of a recorded generation of ``context`` whose ids
    decode and post-process to the logged ``response``; None if no record qualifies."""
    from lm_eval.models.utils import postprocess_generated_text

    for rec in records:
        if rec.context != context or rec.text != response:
            continue
        ids = rec.ids(lm.tokenizer, eos_ids(lm))
        text = postprocess_generated_text(lm.tok_decode(ids), list(rec.stop), None)
        if text == response:
            return [int(i) for i in rec.context_ids], ids, text
    return None
