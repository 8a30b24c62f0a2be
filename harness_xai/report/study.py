"""The study view: failure patterns across model sizes and training checkpoints (pure).

Runs are only compared when they measured the same thing. Steps:

1. ``cohort_key`` — a run's configuration minus its model identity (the model args, parameter
   count, revision, sha, dtype; the task list and versions; graph/faithfulness options, which add
   outputs but change no number compared here). Runs of one sweep share a key; a later run of one
   model on every doc (another ``--limit``) is a cohort of its own and is never averaged in.
2. ``series_of`` — a run's model series: its short model name (``runs.model_name``, e.g.
   ``llama-l``) — the checkpoints of one model share it — with its architecture
   (``model_type``) and size (``n_params``); the checkpoint is ``runs.step``. ``family_of``
   names an architecture's models in size legends the same way (``llama-*``).
3. ``cohorts`` — the cohorts with at least two runs, each with per-task ``points``: one per run
   with accuracy, failures, the mean per-case metrics (``case_metrics``: segment shares, evidence
   recovery and its random baseline, concentration, sink share, formation layer) and the triage
   shares.
4. ``by_checkpoint`` / ``by_size`` — per task, the lines to draw: by checkpoint (x = step, with
   a later stage's steps continuing after the previous stage's last one, ``_join_stages``; one
   line per model series in (stage, step) order of its revision names, ``checkpoints``; hue =
   size rank, dash = architecture) and by size (x = parameters, one
   line per architecture at each checkpoint, hue = checkpoint, dash = architecture).
"""

from __future__ import annotations

import json
import math
import os
import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from harness_xai.checkpoints import format_tokens, parse_revision

_MODEL_IDENTITY = ("model_args", "model_num_parameters", "model_revision", "model_sha",
                   "model_dtype")
_NOT_COMPARED = ("tasks", "versions", "graph", "faithfulness")

#: (metric name in case_metrics, title, axis range or None) of the trend panels, in page order
PANELS = (
    ("evidence.top1", "evidence ranked first (share of failures)", (0.0, 1.0)),
    ("evidence.share", "share of |R| on the evidence tokens", (0.0, 1.0)),
    ("concentration.gini", "concentration of |R| (Gini)", (0.0, 1.0)),
    ("concentration.top1", "share of |R| on the top token", (0.0, 1.0)),
    ("sink.share", "attention-sink / BOS share of |R|", (0.0, 1.0)),
    ("layer.formation_rel", "where Δℓ forms (relative depth)", (0.0, 1.0)),
)
_SEGMENT = re.compile(r"^segment\.([a-z\-]+)\.share$")


def cohort_key(run: dict[str, Any]) -> str:
    """Step 1: JSON of the run's identity config without model identity (module docstring)."""
    try:
        config = json.loads(run.get("config") or "{}")
    except (TypeError, ValueError):
        config = {}
    if not isinstance(config, dict):
        config = {}
    inner = config.get("config") if isinstance(config.get("config"), dict) else {}
    config = {k: v for k, v in config.items() if k not in _NOT_COMPARED}
    config["config"] = {k: v for k, v in inner.items() if k not in _MODEL_IDENTITY}
    config.setdefault("method", run.get("method"))
    return json.dumps(config, sort_keys=True, default=str)


def describe_key(key: str) -> str:
    """A short human description of a cohort key: method, metric, limit, shots."""
    c = json.loads(key)
    inner = c.get("config") or {}
    limit = inner.get("limit")
    shots = sorted(set((c.get("n-shot") or {}).values()))
    parts = [f"method {c.get('method')}", f"metric {c.get('metric')}",
             f"limit {int(limit) if isinstance(limit, float) and limit.is_integer() else limit}"
             if limit is not None else "all docs",
             f"{'/'.join(str(s) for s in shots) or 0}-shot"]
    if c.get("contrast"):
        parts.append(f"contrast {c['contrast']}")
    return " · ".join(parts)


def run_settings(run: dict[str, Any]) -> dict[str, str]:
    """Few-shot (``0``, ``5``, ``0/5`` when tasks differ) and limit (``all`` when none) of a run,
    from its stored configuration."""
    try:
        config = json.loads(run.get("config") or "{}")
    except (TypeError, ValueError):
        config = {}
    config = config if isinstance(config, dict) else {}
    inner = config.get("config") if isinstance(config.get("config"), dict) else {}
    limit = inner.get("limit")
    if isinstance(limit, float) and limit.is_integer():
        limit = int(limit)
    shots = config.get("n-shot") if isinstance(config.get("n-shot"), dict) else {}
    values = sorted({str(v) for v in shots.values() if v is not None})
    return {"fewshot": "/".join(values) if values else "—",
            "limit": "all" if limit is None else str(limit)}


def series_of(run: dict[str, Any]) -> str:
    """Step 2: the model series name: the run's short model name (``runs.model_name``: hub id or
    directory name), else the last component of the model path or hub id."""
    if run.get("model_name"):
        return str(run["model_name"])
    name = str(run.get("pretrained") or run.get("model") or f"run {run['id']}")
    return re.split(r"[\\/]", name.rstrip("/\\"))[-1] or name


def family_of(names: list[str], arch: str) -> str:
    """A name for the models of one architecture in a size legend: their common name prefix
    with ``*`` for the size part (``llama-s``, ``llama-m`` → ``llama-*``), else ``arch``."""
    names = sorted(set(names))
    if len(names) == 1:
        return names[0]
    prefix = os.path.commonprefix(names)
    while prefix and prefix[-1].isalnum():  # cut back to a separator: "neox-" not "neox-m"
        prefix = prefix[:-1]
    return prefix + "*" if prefix.strip("-_./") else arch


@dataclass
class Point:
    """One run's numbers on one task."""

    run_id: int
    series: str
    arch: str
    size: int | None
    step: int | None
    accuracy: float | None
    n_samples: int | None
    n_failures: int
    metrics: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    triage: dict[str, float] = field(default_factory=dict)  # label → share of labelled cases
    #: the run's revision parsed (``harness_xai.checkpoints``): orders a series by (stage, step)
    #: — OLMo's stage 2 restarts its step count — and gives the tokens seen ("5B"), if named
    stage: tuple[int, int] = (0, 0)
    tokens: str | None = None
    #: the x of the checkpoint charts: ``step`` plus the last step of every earlier stage of the
    #: series (stages joined end to end), so a stage that restarts its count continues the line
    position: int | None = None

    @property
    def checkpoint_x(self) -> int | None:
        """The checkpoint charts' x: ``position`` once stages are joined (``cohorts``), else the step."""
        return self.step if self.position is None else self.position

    @property
    def checkpoint_label(self) -> str:
        stage = f"stage {self.stage[0]} · " if self.stage[0] else ""
        ingredient = f"ingredient {self.stage[1]} · " if self.stage[1] else ""
        return f"{stage}{ingredient}step {self.step}"


@dataclass
class Cohort:
    key: str
    description: str
    runs: list[dict[str, Any]]
    tasks: dict[str, list[Point]]  # task → one point per run that evaluated it
    page: str = ""  # file name of its study page (set by the renderer)


def cohorts(runs: list[dict[str, Any]], task_rows: dict[int, list[dict[str, Any]]],
            metrics: list[dict[str, Any]], triage: list[dict[str, Any]]) -> list[Cohort]:
    """Step 3: cohorts of ≥ 2 runs, oldest first (module docstring)."""
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for run in runs:
        groups[cohort_key(run)].append(run)
    by_run_task: dict[tuple[int, str], dict[str, tuple[float, int]]] = defaultdict(dict)
    for m in metrics:
        if m["mean"] is not None and math.isfinite(float(m["mean"])):
            by_run_task[(int(m["run_id"]), m["task"])][m["name"]] = (float(m["mean"]), int(m["n"]))
    labels: dict[tuple[int, str], dict[str, int]] = defaultdict(dict)
    for t in triage:
        labels[(int(t["run_id"]), t["task"])][t["label"]] = int(t["n"])
    out = []
    for key, members in groups.items():
        if len(members) < 2:
            continue
        tasks: dict[str, list[Point]] = defaultdict(list)
        for run in members:
            for row in task_rows.get(int(run["id"]), []):
                got = by_run_task.get((int(run["id"]), row["task"]), {})
                lab = labels.get((int(run["id"]), row["task"]), {})
                total = sum(lab.values())
                tasks[row["task"]].append(Point(
                    run_id=int(run["id"]), series=series_of(run), arch=run.get("model_type") or "?",
                    size=run.get("n_params"), step=run.get("step"), accuracy=row.get("value"),
                    n_samples=row.get("n_samples"),
                    n_failures=int(row.get("n_attributed", 0)) + int(row.get("n_skipped", 0)),
                    metrics={n: v for n, (v, _) in got.items()},
                    counts={n: c for n, (_, c) in got.items()},
                    triage={k: v / total for k, v in sorted(lab.items())} if total else {},
                    **_checkpoint(run.get("revision"))))
        for points in tasks.values():
            points.sort(key=lambda p: (p.arch, p.size or 0, p.series, p.stage, p.step or 0,
                                       p.run_id))
            _join_stages(points)
        out.append(Cohort(key=key, description=describe_key(key), runs=members,
                          tasks=dict(sorted(tasks.items()))))
    return out


def _join_stages(points: list[Point]) -> None:
    """``Point.position`` of every point with a step, per series in (stage, step) order: a new
    stage starts where the previous one's last step ended (OLMo's stage 2 restarts at step 0)."""
    series: dict[str, list[Point]] = defaultdict(list)
    for p in points:
        if p.step is not None:
            series[p.series].append(p)
    for members in series.values():
        offset, stage, last = 0, None, 0
        for p in members:  # already in (stage, step) order
            if stage is not None and p.stage != stage:
                offset, last = offset + last, 0
            stage, last = p.stage, max(last, p.step)
            p.position = offset + p.step


def checkpoint_axis(points: list[Point]) -> str:
    """The checkpoint charts' x title: stages joined end to end when a series has several."""
    staged = len({p.stage for p in points if p.step is not None}) > 1
    return "training step (stages joined end to end)" if staged else "training step"


def _checkpoint(revision: str | None) -> dict[str, Any]:
    c = parse_revision(revision)
    return {"stage": (c.stage or 0, c.ingredient or 0),
            "tokens": None if c.tokens is None else format_tokens(c.tokens)}


def segments_of(points: list[Point]) -> list[str]:
    """The segment labels with a share in any of ``points`` (one task's)."""
    return sorted({m.group(1) for p in points for n in p.metrics if (m := _SEGMENT.match(n))})


def _value(point: Point, metric: str) -> float | None:
    if metric == "accuracy":
        return point.accuracy
    return point.metrics.get(metric)


def by_checkpoint(points: list[Point], metric: str) -> list[dict[str, Any]]:
    """Step 4: one line per model series over its training position (``Point.position``: the
    step, stages joined end to end; runs without a step left out), in (stage, step) order."""
    lines: dict[str, dict[str, Any]] = {}
    for p in sorted(points, key=lambda p: (p.stage, p.step or 0)):
        v = _value(p, metric)
        if p.checkpoint_x is None or v is None:
            continue
        line = lines.setdefault(p.series, {"name": p.series, "arch": p.arch, "size": p.size,
                                           "points": []})
        line["points"].append((float(p.checkpoint_x), float(v)))
    out = sorted(lines.values(), key=lambda l: (l["arch"], l["size"] or 0, l["name"]))
    for arch in {l["arch"] for l in out}:  # hue = size rank within the architecture
        sizes = sorted({l["size"] or 0 for l in out if l["arch"] == arch})
        for l in out:
            if l["arch"] == arch:
                l["hue"] = sizes.index(l["size"] or 0)
    return out


def by_size(points: list[Point], metric: str) -> list[dict[str, Any]]:
    """Step 4: one line per (architecture, checkpoint) over the parameter count (lines with a
    single size left out)."""
    family = {arch: family_of([p.series for p in points if p.arch == arch], arch)
              for arch in {p.arch for p in points}}
    lines: dict[tuple[str, Any], dict[str, Any]] = {}
    for p in points:
        v = _value(p, metric)
        if not p.size or v is None:
            continue
        name = family[p.arch] if p.step is None else f"{family[p.arch]} @ {p.checkpoint_label}"
        ck = None if p.step is None else (p.stage, p.step)
        line = lines.setdefault((p.arch, ck), {"name": name, "arch": p.arch, "step": ck,
                                               "points": []})
        line["points"].append((float(p.size), float(v)))
    kept = [l for l in lines.values() if len(l["points"]) > 1]  # a size trend needs two sizes
    for line in kept:
        line["points"].sort()
    def rank(line):  # no checkpoint first, then (stage, step)
        return ((0, 0), -1) if line["step"] is None else line["step"]

    steps = sorted({rank(l) for l in kept})
    for line in kept:  # hue = checkpoint rank
        line["hue"] = steps.index(rank(line))
    return sorted(kept, key=lambda l: (l["arch"], rank(l)))


def baseline(points: list[Point], metric: str, by: str) -> list[dict[str, Any]]:
    """A reference line (e.g. ``evidence.random_top1``, the chance of a random order ranking the
    evidence first): the mean over the points at each step (``by="step"``) or size (``"size"``)."""
    groups: dict[float, list[float]] = defaultdict(list)
    for p in points:
        x = p.checkpoint_x if by == "step" else p.size
        if x is not None and metric in p.metrics:
            groups[float(x)].append(p.metrics[metric])
    if not groups:
        return []
    return [{"name": "random order", "points": sorted((x, sum(v) / len(v))
                                                     for x, v in groups.items())}]
