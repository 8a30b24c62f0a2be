"""harness-xai: contrastive AttnLRP explanations for every wrong answer of an lm-eval run.

Public API (stable):
- ``harness_xai.evaluate(**simple_evaluate_kwargs, attribute=True, db=URL, method="attnlrp")``
- ``harness_xai.attribute(model, tokenizer, input_ids, target_id, foil_id, method="attnlrp")``
"""

__version__ = "0.1.0"
__all__ = ["attribute", "evaluate", "graph", "__version__"]


def __getattr__(name):  # lazy: `harness-xai sql` should not pay for importing torch
    if name == "evaluate":
        from harness_xai.pipeline import evaluate
        return evaluate
    if name == "attribute":
        from harness_xai.lrp import attribute
        return attribute
    if name == "graph":  # the subpackage, callable as graph(model, tokenizer, ids, target, foil, …)
        import harness_xai.graph as graph
        return graph
    raise AttributeError(f"module 'harness_xai' has no attribute {name!r}")
