"""``attribute``: relevance of one logit difference, ``logit[target] − logit[foil]`` at the last
input position — the engine's one forward and one backward (``engine.explain``) for a single
token contrast, with the inputs given the way a notebook user has them (ids, a tensor, a string;
token ids or single-token strings).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from harness_xai.lrp.engine import Attribution, explain
from harness_xai.lrp.inputs import contrast_inputs
from harness_xai.lrp.methods import get_method
from harness_xai.lrp.adapters import adapter_for
from harness_xai.records import TokenTarget


def attribute(model: nn.Module, tokenizer, input_ids, target_id, foil_id,
              method: str = "attnlrp", *, states: bool = True, checkpoint: bool = False,
              **options) -> Attribution:
    """Attribute ``logit[target_id] − logit[foil_id]`` at the last input position.

    ``input_ids``: a sequence of ints, a 1-D tensor, a (1, n) tensor, or a string (encoded with
    ``tokenizer`` without special tokens). ``target_id`` / ``foil_id``: token ids, or single-token
    strings. Positive relevance pushes toward ``target`` (in harness-xai: the wrong answer).
    ``states=False`` skips the mid/attn/mlp/head relevance; ``checkpoint=True`` recomputes each
    block in the backward (less memory, one more forward); ``options`` set the method's tunable
    params (e.g. ``steps=64`` for integrated-gradients).
    """
    spec = get_method(method)
    spec.configure(options)  # bad options fail before the inputs are touched
    adapter_for(model)  # unsupported families fail before any work
    ids, target, foil = contrast_inputs(model, tokenizer, input_ids, target_id, foil_id)
    objective = TokenTarget(tuple(int(t) for t in ids[0].tolist()), target, foil)
    return explain(model, [objective], spec, states=states, checkpoint=checkpoint, **options)[0]


def relevance_sums(attribution: Attribution) -> Sequence[float]:
    """Σ over positions of each layer row (for conservation checks)."""
    return attribution.layers.sum(-1).tolist()
