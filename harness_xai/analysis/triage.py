"""Automatic triage of a failure: rule flags over the case's metrics, and one primary label.

Each rule reads the metrics of ``analysis.metrics`` (and the case's faithfulness); thresholds are
the module constants. Rules, in priority order (the primary label is the first that fires, else
``unflagged``):

1. ``uninformative`` — attribution uninformative: a deletion curve exists and
   ``aopc − aopc_random < AOPC_MARGIN``: removing the tokens the explanation ranks highest
   changes Δℓ hardly more than removing random tokens, so the other readings are not to be
   trusted. (A NaN AOPC, i.e. Δℓ₀ = 0, fires nothing.)
2. ``special-dominated`` — ``segment.special.share ≥ DOMINANT``: special tokens (BOS / sink,
   template markup) hold at least half of Σ|R|.
3. ``fewshot-dominated`` — the few-shot demonstrations hold at least ``DOMINANT`` of the content
   tokens' Σ|R| (``segment.fewshot.share / (1 − segment.special.share)``).
4. ``irrelevant-overweighted`` — evidence known, and the most relevant content token (by |R|) is
   not evidence and has at least ``OVERWEIGHT`` × the |R| of the best evidence token
   (``1 / |evidence.norm| ≥ OVERWEIGHT`` with ``evidence.rank_abs > 1``).
5. ``evidence-underweighted`` — evidence known and ranked low: ``evidence.rank_abs > UNDER_RANK``
   (the best evidence token is not among the top ``UNDER_RANK`` tokens by |R|).
Rules 4 and 5 can fire together: 4 says one irrelevant token dwarfs the evidence, 5 that many
tokens outrank it. Cases without known evidence are never given 4 or 5.
"""

from __future__ import annotations

import math

from harness_xai.records import Faithfulness

AOPC_MARGIN = 0.1
DOMINANT = 0.5
OVERWEIGHT = 2.0
UNDER_RANK = 3

UNINFORMATIVE = "uninformative"
SPECIAL_DOMINATED = "special-dominated"
FEWSHOT_DOMINATED = "fewshot-dominated"
IRRELEVANT_OVERWEIGHTED = "irrelevant-overweighted"
EVIDENCE_UNDERWEIGHTED = "evidence-underweighted"
UNFLAGGED = "unflagged"
#: every flag, in priority order (the primary label is the first that fires)
FLAGS = (UNINFORMATIVE, SPECIAL_DOMINATED, FEWSHOT_DOMINATED, IRRELEVANT_OVERWEIGHTED,
         EVIDENCE_UNDERWEIGHTED)
LABELS = (*FLAGS, UNFLAGGED)


def _finite(value) -> bool:
    return value is not None and math.isfinite(float(value))


def uninformative(faithfulness: Faithfulness | None) -> bool:
    """Rule 1."""
    if faithfulness is None or not (_finite(faithfulness.aopc) and
                                    _finite(faithfulness.aopc_random)):
        return False
    return faithfulness.aopc - faithfulness.aopc_random < AOPC_MARGIN


def special_dominated(metrics: dict[str, float]) -> bool:
    """Rule 2."""
    return metrics.get("segment.special.share", 0.0) >= DOMINANT


def fewshot_dominated(metrics: dict[str, float]) -> bool:
    """Rule 3."""
    content = 1.0 - metrics.get("segment.special.share", 0.0)
    fewshot = metrics.get("segment.fewshot.share", 0.0)
    return content > 0 and fewshot / content >= DOMINANT


def irrelevant_overweighted(metrics: dict[str, float]) -> bool:
    """Rule 4."""
    if "evidence.rank_abs" not in metrics or metrics["evidence.rank_abs"] <= 1:
        return False
    norm = abs(metrics.get("evidence.norm", 0.0))
    return norm == 0.0 or 1.0 / norm >= OVERWEIGHT


def evidence_underweighted(metrics: dict[str, float]) -> bool:
    """Rule 5."""
    return metrics.get("evidence.rank_abs", 0.0) > UNDER_RANK


def classify(metrics: dict[str, float], faithfulness: Faithfulness | None = None
           ) -> tuple[str, list[str]]:
    """(primary label, every flag that fired in priority order)."""
    fired = {
        UNINFORMATIVE: uninformative(faithfulness),
        SPECIAL_DOMINATED: special_dominated(metrics),
        FEWSHOT_DOMINATED: fewshot_dominated(metrics),
        IRRELEVANT_OVERWEIGHTED: irrelevant_overweighted(metrics),
        EVIDENCE_UNDERWEIGHTED: evidence_underweighted(metrics),
    }
    flags = [name for name in FLAGS if fired[name]]
    return (flags[0] if flags else UNFLAGGED), flags
