"""What a run attributes, and which rank does it: the budget and the token-balanced shards.

``Budget`` holds the throughput options of a run (``--xai-max-cases``, ``--xai-max-tokens``,
``--xai-time-budget``, ``--xai-batch-size``). ``plan_cases`` applies the first two to the cases
that still need work:
1. cases the contrast stage skipped are written as they are;
2. a pending case whose attributed input is longer than ``max_tokens`` becomes a skipped case
   with reason ``budget:max-tokens`` (written: the store says why it has no relevance);
3. of the remaining pending cases the first ``max_cases`` (in the order the contrast stage built
   them) are attributed; the rest are *left*: not written, so a re-run picks them up.
``balance`` spreads the pending cases over the ranks by cost (the attributed token count, since
attribution time grows with context length), greedy longest-first: sort by cost descending
(ties by index) and give each case to the least-loaded rank (ties to the lowest rank) — the LPT
rule, within 4/3 of the best possible makespan. Each rank's share keeps the original order.
``passes`` groups a rank's cases into the engine's passes (``--xai-batch-size``): sort by length
(ties by index), cut a pass when it has ``batch_size`` cases or its padded size B·n_max would pass
``max_tokens`` (``MAX_PASS_TOKENS``: bounds activation memory like one case of that length).
``--xai-batch-size auto`` cuts instead when the pass would hold more rows than ``rows_for(n_max)``
allows: the rows that fit in free memory (``memory.rows_that_fit``: estimate and formula). Without
the option: ``auto`` for a model on CUDA, 1 elsewhere (``resolve_batch_size``).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable
from dataclasses import dataclass

from harness_xai.errors import UserError
from harness_xai.records import PENDING, Case, SequenceTarget

MAX_TOKENS_REASON = "budget:max-tokens"
#: padded tokens per batched pass
MAX_PASS_TOKENS = 8192
#: command-line names (``--xai-max-cases`` …) of the budget options, as argparse dests
BUDGET_ARGS = ("xai_max_cases", "xai_max_tokens", "xai_time_budget", "xai_batch_size")


@dataclass(frozen=True)
class Budget:
    """How much attribution a run does, and in what pieces.

    ``max_cases``: attribute at most this many pending cases, leave the rest for a re-run;
    ``max_tokens``: skip (reason ``budget:max-tokens``) cases whose input is longer;
    ``seconds``: each rank stops starting new attributions once this much wall time has passed
    since it began attributing; what it did not reach is left for a re-run;
    ``batch_size``: up to this many token-contrast cases per forward/backward pass (exact: right
    padding, see ``harness_xai.lrp.engine``); 1 = one pass per case; ``"auto"``: as many as fit
    in free memory; None (not given): ``"auto"`` on CUDA, 1 elsewhere.
    """

    max_cases: int | None = None
    max_tokens: int | None = None
    seconds: float | None = None
    batch_size: int | str | None = None

    def __post_init__(self) -> None:
        for name, flag in (("max_cases", "--xai-max-cases"), ("max_tokens", "--xai-max-tokens")):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or value < 0):
                raise UserError(f"{flag} must be a whole number >= 0, got {value!r}.")
        if self.seconds is not None and (not isinstance(self.seconds, (int, float))
                                         or isinstance(self.seconds, bool)
                                         or not math.isfinite(self.seconds) or self.seconds < 0):
            raise UserError(f"--xai-time-budget must be a number of seconds >= 0, got "
                            f"{self.seconds!r}.")
        size = self.batch_size
        if size is not None and size != "auto" and (isinstance(size, bool)
                                                    or not isinstance(size, int) or size < 1):
            raise UserError(f"--xai-batch-size must be a whole number >= 1 or auto, got "
                            f"{size!r}.")

    @classmethod
    def from_args(cls, values: dict) -> Budget:
        """From the CLI's parsed ``xai_*`` values (``BUDGET_ARGS``)."""
        size = values.get("xai_batch_size")
        if isinstance(size, str) and size.strip().lower() == "auto":
            size = "auto"
        elif isinstance(size, str):
            try:
                size = int(size)
            except ValueError:
                raise UserError(f"--xai-batch-size must be a whole number >= 1 or auto, got "
                                f"{size!r}.") from None
        return cls(max_cases=values.get("xai_max_cases"), max_tokens=values.get("xai_max_tokens"),
                   seconds=values.get("xai_time_budget"), batch_size=size)


def add_budget_arguments(group) -> None:
    """The budget options on an argparse group (``harness-xai run``)."""
    group.add_argument("--xai-max-cases", type=int, default=None, metavar="N",
                       help="attribute at most N cases this run; the rest are left unwritten "
                            "and a re-run resumes them")
    group.add_argument("--xai-max-tokens", type=int, default=None, metavar="N",
                       help="skip cases whose input is longer than N tokens "
                            "(stored as skipped, reason budget:max-tokens)")
    group.add_argument("--xai-time-budget", type=float, default=None, metavar="SECONDS",
                       help="each rank stops attributing after SECONDS of attribution; the "
                            "rest are left unwritten and a re-run resumes them")
    group.add_argument("--xai-batch-size", default=None, metavar="N|auto",
                       help="attribute up to N short cases per forward/backward pass (exact); "
                            "auto: as many as fit in free memory (default: auto on CUDA, "
                            "1 on the CPU)")


def case_tokens(case: Case) -> int:
    """Length of the attributed input (the ``max_tokens`` measure)."""
    return len(case.token_ids)


def case_cost(case: Case) -> int:
    """Relative attribution cost: input tokens (a sequence contrast runs two rows)."""
    return max(1, case_tokens(case)) * (2 if isinstance(case.objective, SequenceTarget) else 1)


@dataclass
class CasePlan:
    """The pending work of one run after the budget (see module docstring)."""

    write: list[Case]  # skipped cases (contrast stage or budget): written as they are
    attribute: list[Case]  # pending cases to attribute, in the original order
    left: int  # pending cases cut by ``max_cases`` (not written)


def plan_cases(todo: list[Case], budget: Budget) -> CasePlan:
    write, pending = [], []
    for case in todo:
        if case.status == PENDING and budget.max_tokens is not None \
                and case_tokens(case) > budget.max_tokens:
            case = case.skipped(MAX_TOKENS_REASON, budget={"max_tokens": budget.max_tokens,
                                                           "n_tokens": case_tokens(case)})
        (pending if case.status == PENDING else write).append(case)
    cut = len(pending) if budget.max_cases is None else min(budget.max_cases, len(pending))
    return CasePlan(write=write, attribute=pending[:cut], left=len(pending) - cut)


def balance(costs: list[int], n_ranks: int) -> list[list[int]]:
    """Indices of ``costs`` per rank: greedy longest-first onto the least-loaded rank."""
    if n_ranks < 1:
        raise ValueError("n_ranks must be >= 1")
    heap = [(0, rank) for rank in range(n_ranks)]  # (load, rank)
    shares: list[list[int]] = [[] for _ in range(n_ranks)]
    for index in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        load, rank = heapq.heappop(heap)
        shares[rank].append(index)
        heapq.heappush(heap, (load + costs[index], rank))
    return [sorted(share) for share in shares]


def resolve_batch_size(batch_size: int | str | None, on_cuda: bool) -> int | str:
    """The option's value, or its default: ``"auto"`` on CUDA, 1 elsewhere."""
    if batch_size is None:
        return "auto" if on_cuda else 1
    return batch_size


def passes(lengths: list[int], batch_size: int | str, max_tokens: int = MAX_PASS_TOKENS,
           rows_for: Callable[[int], int] | None = None) -> list[list[int]]:
    """Indices grouped into passes (module docstring); one case per pass when batch_size=1;
    ``batch_size="auto"``: ``rows_for(n_max)`` rows at most (1 without ``rows_for``)."""
    auto = batch_size == "auto"
    if (auto and rows_for is None) or (not auto and batch_size <= 1):
        return [[i] for i in range(len(lengths))]
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    out: list[list[int]] = []
    for index in order:
        current = out[-1] if out else []
        longest = max([lengths[i] for i in current] + [lengths[index]])
        if auto:
            fits = len(current) < rows_for(longest)
        else:
            fits = len(current) < batch_size and longest * (len(current) + 1) <= max_tokens
        if current and fits:
            current.append(index)
        else:
            out.append([index])
    return out
