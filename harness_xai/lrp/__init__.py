"""The LRP engine: contrastive AttnLRP (and baselines) as modified gradients.

``engine.explain`` is the one forward+backward (a batch of objectives: token logit differences,
sequence log-prob differences, optionally the graph's per-block capture); ``attribute`` its
single-contrast entry point; ``lrp`` the scoped patch it uses; ``states`` turns internal states
(mid-block residual, attention/MLP branches, heads) into relevance during the backward;
``integrated`` the path of integrated gradients; methods and family adapters are registries that
built-ins and users extend the same way.
"""

from harness_xai.lrp.adapters import ADAPTERS, Adapter, adapter_for, get_adapter, register_adapter
from harness_xai.lrp.attribute import attribute
from harness_xai.lrp.engine import Attribution, explain
from harness_xai.lrp.methods import METHODS, Method, get_method, register_method
from harness_xai.lrp.patch import lrp

__all__ = ["ADAPTERS", "Adapter", "adapter_for", "Attribution", "METHODS", "Method", "attribute",
           "explain", "get_adapter", "get_method", "lrp", "register_adapter", "register_method"]
