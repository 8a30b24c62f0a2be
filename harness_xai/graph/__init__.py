"""Cross-layer attribution graphs (DESIGN.md §1.3): edges between adjacent residual states.

``graph(model, tokenizer, input_ids, target_id, foil_id, method="attnlrp", prune=None)`` returns a
``Graph`` (``.nodes``, ``.edges``, ``.to_record()``). ``fast`` computes every edge exactly from the
engine's one forward and one backward (closed-form attention paths, chunked rows); ``reference`` is the
definition (one block re-run per batch of target rows), kept as the oracle and the baseline.

``harness_xai.graph`` is this package, made callable: ``harness_xai.graph(model, …)`` is
``harness_xai.graph.graph(model, …)`` (a subpackage attribute would otherwise shadow a function of
the same name on ``harness_xai``).
"""

import sys
import types

from harness_xai.graph.api import Graph, formation_layer, graph, graph_from_trace
from harness_xai.graph.prune import Edges, Prune

__all__ = ["Edges", "Graph", "Prune", "formation_layer", "graph", "graph_from_trace"]


class _CallableModule(types.ModuleType):
    def __call__(self, *args, **kwargs) -> Graph:
        return graph(*args, **kwargs)

    __call__.__doc__ = graph.__doc__


sys.modules[__name__].__class__ = _CallableModule
