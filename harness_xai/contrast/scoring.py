"""The token sequences lm-eval scored, rebuilt through the HFLM instance (DESIGN.md §2.3).

lm-eval does not score the tokenisation of ``context + continuation``: trailing context spaces move
to the continuation, ``continuation = tok(ctx + cont)[len(tok(ctx)):]``, an empty context becomes
the model's prefix token, and inputs are left-truncated to ``max_length``. We call the same
methods on the same ``lm`` object, so the attributed input is exactly what was scored.
"""

from __future__ import annotations


def scored_tokens(lm, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context tokens, continuation tokens) exactly as ``lm.loglikelihood`` encodes them."""
    if context == "":
        cont = lm.tok_encode(continuation, add_special_tokens=False)
        if cont and lm.prefix_token_id != cont[0]:
            return [lm.prefix_token_id], list(cont)
        return list(cont[:1]), list(cont[1:])
    ctx, cont = lm._encode_pair(context, continuation)
    return list(ctx), list(cont)


def model_window(tokens: list[int], max_length: int) -> list[int]:
    """The input lm-eval feeds for predicting the token after ``tokens`` (left truncation)."""
    return tokens[-max_length:]
