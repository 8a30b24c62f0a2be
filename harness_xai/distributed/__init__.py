"""Scale-out of attribution: ranks of ``torchrun`` / ``accelerate launch``, budgets, passes.

``harness-xai run … --attribute`` under a launcher works like lm-eval under it: lm-eval shards
and gathers the evaluation; rank 0 builds the contrast cases; the cases are then split over
all ranks by token count, each rank attributes its share and the store ends with the cases a
single process would have written (same unit keys, same values within float tolerance).

- ``world``: which rank this is, control messages over gloo, lm-eval data parallel on CPU.
- ``plan``: ``Budget`` (max cases, max tokens, time, batch size), the token-balanced split and
  the grouping of cases into the engine's passes (several cases per forward/backward).
- ``runner``: ``explain_cases`` (rank 0) / ``follow`` (other ranks): the protocol.
- ``shards``: per-rank shard files for one-writer file stores, merged by rank 0.
Imports here stay light (no torch), since the CLI imports the budget options at start-up.
"""

from __future__ import annotations

from harness_xai.distributed.plan import BUDGET_ARGS, MAX_TOKENS_REASON, Budget, add_budget_arguments
from harness_xai.distributed.world import World, enable_cpu_data_parallel, prepare_launch

__all__ = ["BUDGET_ARGS", "MAX_TOKENS_REASON", "Budget", "World", "add_budget_arguments",
           "explain_cases", "enable_cpu_data_parallel", "follow", "prepare_launch"]


def __getattr__(name: str):
    if name in ("explain_cases", "follow", "Outcome"):
        from harness_xai.distributed import runner

        return getattr(runner, name)
    raise AttributeError(f"module 'harness_xai.distributed' has no attribute {name!r}")
