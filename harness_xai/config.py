"""One resolved, immutable configuration of an explained run, built once.

``RunConfig.create(...)`` (the Python API: ``harness_xai.evaluate``) and ``RunConfig.from_cli``
(``harness-xai run``/``sweep`` flags, added by ``add_run_arguments``) validate everything before
any work and resolve it: the method object, the normalised store URL, the graph's pruning, the
budget. Every later stage reads this object; none re-validates or re-normalises.
``identity()`` is the part of the run identity the attribution settings decide
(``harness_xai.identity`` adds the evaluation's part).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from harness_xai.contrast.case import Options
from harness_xai.contrast.decision import check_choices, for_task, parse_per_task
from harness_xai.distributed.plan import BUDGET_ARGS, Budget, add_budget_arguments
from harness_xai.errors import UserError
from harness_xai.graph.prune import Prune, as_prune
from harness_xai.lrp.methods import Method, get_method
from harness_xai.store.engine import normalize_url

DEFAULT_DB = "duckdb:///xai.duckdb"
#: the ``harness-xai run`` flags of this package (argparse dests); lm-eval never sees them
XAI_ARGS = ("attribute", "xai_db", "xai_method", "xai_report", "xai_no_progress", "xai_metric",
            "xai_threshold", "xai_contrast", "xai_graph", "xai_graph_edges", "xai_graph_nodes",
            "xai_graph_mass", "xai_faithfulness", "xai_db_init", "xai_rollouts",
            "xai_rollout_tokens", "xai_reasoning_steps", *BUDGET_ARGS)
HF_MODELS = {"hf", "hf-auto", "huggingface"}


@dataclass(frozen=True)
class RunConfig:
    """What to explain and where to put it (see module docstring)."""

    db: str  # normalised SQLAlchemy URL
    method: Method
    #: the metric that decides "incorrect": None (each task's primary metric), "NAME" (every
    #: task) or "TASK=NAME,…" (``decision.parse_per_task``)
    metric: str | None = None
    contrast: str = "token"  # token | sequence
    graph: Prune | None = None  # build a pruned attribution graph per token contrast
    faithfulness: bool = False  # deletion curves and AOPC per case
    budget: Budget = field(default_factory=Budget)
    progress: bool = True
    report: str | None = None  # render the HTML report here at the end (checked before the run)
    db_init: bool = False  # add the schema to another program's (non-empty) database
    #: a non-binary metric's correct value: None, "X" (every task) or "TASK=X,…"
    threshold: str | None = None
    #: first-error rollouts per incorrect generation (0: off) and their greedy length (None:
    #: each task's max_gen_toks); ``contrast.first_error``
    rollouts: int = 0
    rollout_tokens: int | None = None
    #: a thinking model's reasoning steps: "sentence" or "line" (``contrast.reasoning``)
    reasoning_steps: str = "sentence"

    @classmethod
    def create(cls, *, db: str = DEFAULT_DB, method: str | Method = "attnlrp",
               metric: str | None = None, contrast: str = "token", graph=None,
               faithfulness: bool = False, budget: Budget | None = None, progress: bool = True,
               report: str | None = None, db_init: bool = False,
               threshold: float | str | None = None, rollouts: int | None = 0,
               rollout_tokens: int | None = None,
               reasoning_steps: str = "sentence") -> RunConfig:
        """Validate and resolve (``graph``: None/False, True for the paper's pruning, a
        ``Prune`` or a dict of its fields)."""
        spec = get_method(method)
        Options(contrast=contrast, reasoning_steps=reasoning_steps)  # bad values fail now
        metric = metric or None
        threshold = None if threshold is None or threshold == "" else str(threshold)
        parse_per_task(metric, "--xai-metric")  # syntax now; per task in check_tasks
        parse_per_task(threshold, "--xai-threshold", float)
        rollouts, rollout_tokens = check_rollouts(rollouts, rollout_tokens)
        pruning = as_prune(graph)
        if pruning is not None and spec.integrate:
            raise UserError(f"--xai-graph works with attnlrp, cp-lrp and grad-x-input, not "
                            f"{spec.name}. Drop --xai-graph or pick another --xai-method.")
        return cls(db=normalize_url(db), method=spec, metric=metric, contrast=contrast,
                   graph=pruning, faithfulness=bool(faithfulness), budget=budget or Budget(),
                   progress=progress, report=report, db_init=bool(db_init), threshold=threshold,
                   rollouts=rollouts, rollout_tokens=rollout_tokens,
                   reasoning_steps=reasoning_steps)

    @classmethod
    def from_cli(cls, xai: dict) -> RunConfig:
        """From the parsed ``XAI_ARGS`` values of ``harness-xai run``."""
        graph = None
        if xai["xai_graph"]:
            try:
                graph = Prune(mass=xai["xai_graph_mass"], max_edges=xai["xai_graph_edges"],
                              max_nodes=xai["xai_graph_nodes"])
            except UserError as err:  # name the flag, not the field
                flag = next((f for k, f in (("mass", "--xai-graph-mass"),
                                            ("max_edges", "--xai-graph-edges"),
                                            ("max_nodes", "--xai-graph-nodes"))
                             if f"{k}=" in str(err)), "--xai-graph-*")
                raise UserError(f"{flag}: {err}") from None
        return cls.create(db=xai["xai_db"], method=xai["xai_method"], metric=xai["xai_metric"],
                          threshold=xai["xai_threshold"],
                          contrast=xai["xai_contrast"], graph=graph,
                          faithfulness=xai["xai_faithfulness"], budget=Budget.from_args(xai),
                          progress=not xai["xai_no_progress"], report=xai["xai_report"],
                          db_init=xai["xai_db_init"], rollouts=xai["xai_rollouts"],
                          rollout_tokens=xai["xai_rollout_tokens"],
                          reasoning_steps=xai["xai_reasoning_steps"])

    def metric_for(self, task: str) -> str | None:
        """The ``--xai-metric`` choice for ``task`` (None: its primary metric)."""
        return for_task(parse_per_task(self.metric, "--xai-metric"), task)

    def threshold_for(self, task: str) -> float | None:
        return for_task(parse_per_task(self.threshold, "--xai-threshold", float), task)

    def check_tasks(self, tasks: dict) -> None:
        """Before lm-eval computes a request: the metric / threshold choices fit the tasks."""
        check_choices(tasks, self.metric, self.threshold)
        if self.rollouts:
            from harness_xai.contrast import output_type

            kinds = {name: output_type(task) for name, task in tasks.items()}
            if "generate_until" not in kinds.values():
                listed = ", ".join(f"{name} ({kind})" for name, kind in sorted(kinds.items()))
                raise UserError(f"--xai-rollouts localises the first error of a generation, but "
                                f"no task of this run is generate_until: {listed}. Drop "
                                f"--xai-rollouts or add a generative task.")

    def identity(self) -> dict:
        """The attribution settings that make a run (and its ``run_key``) what it is."""
        return {"method": self.method.name, "metric": self.metric or "primary",
                **({"threshold": self.threshold} if self.threshold is not None else {}),
                **({"contrast": self.contrast} if self.contrast != "token" else {}),
                **({"graph": self.graph.as_dict()} if self.graph is not None else {}),
                **({"faithfulness": True} if self.faithfulness else {}),
                **({"rollouts": self.rollouts, "rollout_tokens": self.rollout_tokens}
                   if self.rollouts else {}),
                **({"reasoning_steps": self.reasoning_steps}
                   if self.reasoning_steps != "sentence" else {})}


def build_run_parser():
    """lm-eval's CLI (``HarnessCLI``) with the harness-xai argument group added to ``run``."""
    from harness_xai.lmeval_hook.command import run_parser

    cli = run_parser()
    add_run_arguments(cli._subparsers.choices["run"])
    return cli


def add_run_arguments(parser) -> None:
    """The harness-xai argument group of ``harness-xai run`` (on lm-eval's ``run`` parser)."""
    group = parser.add_argument_group(
        "harness-xai", "explain every incorrect response (all other flags are lm-eval's)")
    group.add_argument("--attribute", action="store_true",
                       help="attribute every incorrect response and store the results")
    group.add_argument("--xai-db", default=DEFAULT_DB, metavar="URL",
                       help=f"store: duckdb:///path, sqlite:///path or a file path (default {DEFAULT_DB})")
    group.add_argument("--xai-method", default="attnlrp", metavar="METHOD",
                       help="attnlrp (default), cp-lrp, grad-x-input, integrated-gradients")
    group.add_argument("--xai-metric", default=None, metavar="METRIC",
                       help="the metric that decides 'incorrect' (default: each task's primary "
                            "metric, the first of its metric_list that decides); NAME for every "
                            "task or TASK=NAME,TASK2=NAME2")
    group.add_argument("--xai-threshold", default=None, metavar="X",
                       help="non-binary metrics: a sample is correct when its score reaches X "
                            "(<= X when lower is better); X or TASK=X,TASK2=Y")
    group.add_argument("--xai-contrast", default="token", metavar="MODE",
                       help="token (default): one logit difference at the first differing token; "
                            "sequence: difference of the two continuations' summed log-probs")
    group.add_argument("--xai-faithfulness", action="store_true",
                       help="also measure each explanation's deletion curve and AOPC score "
                            "(≈29 batched forwards per case)")
    group.add_argument("--xai-graph", action="store_true",
                       help="also build a pruned cross-layer attribution graph per case")
    group.add_argument("--xai-graph-edges", type=int, default=1000, metavar="N",
                       help="graph: at most N edges per block (default 1000)")
    group.add_argument("--xai-graph-nodes", type=int, default=None, metavar="N",
                       help="graph: at most N target nodes per layer")
    group.add_argument("--xai-graph-mass", type=float, default=0.85, metavar="P",
                       help="graph: keep the largest edges covering P of each block's mass (0.85)")
    group.add_argument("--xai-report", default=None, metavar="DIR",
                       help="also render the HTML report into DIR at the end")
    group.add_argument("--xai-no-progress", action="store_true", help="no progress bar")
    group.add_argument("--xai-db-init", action="store_true",
                       help="add the harness-xai tables to another program's non-empty database "
                            "(refused, and left untouched, without it)")
    group.add_argument("--xai-rollouts", type=int, default=0, metavar="N",
                       help="generations: find the first error by rollouts, at most N per "
                            "incorrect sample (the model's top-5 alternatives at its least sure "
                            "tokens, each continued greedily and scored by the task); 0: off")
    group.add_argument("--xai-rollout-tokens", type=int, default=None, metavar="N",
                       help="rollouts: greedy continuation length (default: the task's "
                            "max_gen_toks; never beyond the generation's own budget)")
    group.add_argument("--xai-reasoning-steps", default="sentence", metavar="HOW",
                       help="thinking models: cut the reasoning into steps by 'sentence' "
                            "(default) or 'line' for per-step relevance")
    add_budget_arguments(group)  # --xai-max-cases, --xai-max-tokens, --xai-time-budget, --xai-batch-size


def check_rollouts(rollouts, rollout_tokens) -> tuple[int, int | None]:
    """``--xai-rollouts N`` (N ≥ 0; 0 or None: off) and ``--xai-rollout-tokens N`` (N ≥ 1, only
    with rollouts), as ints; UserError otherwise."""
    def whole(value, flag: str) -> int:
        if isinstance(value, bool) or not isinstance(value, (int, str)) or \
                not str(value).strip().lstrip("-").isdigit():
            raise UserError(f"{flag} {value!r}: give a whole number")
        return int(value)

    rollouts = 0 if rollouts is None else whole(rollouts, "--xai-rollouts")
    if rollouts < 0:
        raise UserError(f"--xai-rollouts {rollouts}: give the number of rollouts per incorrect "
                        "generation (0 or more; 0 turns rollouts off)")
    if rollout_tokens is None:
        return rollouts, None
    rollout_tokens = whole(rollout_tokens, "--xai-rollout-tokens")
    if rollout_tokens < 1:
        raise UserError(f"--xai-rollout-tokens {rollout_tokens}: give the greedy continuation "
                        "length of a rollout (1 or more)")
    if not rollouts:
        raise UserError(f"--xai-rollout-tokens {rollout_tokens} sets the length of first-error "
                        "rollouts, which are off: add --xai-rollouts N (N > 0) or drop it")
    return rollouts, rollout_tokens


def split_run_args(args) -> dict:
    """Take the ``XAI_ARGS`` out of an argparse namespace (lm-eval's ``EvaluatorConfig`` is
    strict) and return them."""
    xai = {key: getattr(args, key) for key in XAI_ARGS}
    for key in XAI_ARGS:
        delattr(args, key)
    return xai


def check_model_args(model: str, model_args) -> None:
    """``--attribute`` needs a Hugging Face model; a local-looking ``pretrained=`` that does not
    exist fails before anything loads; ``revision=`` on a local directory is refused."""
    if model not in HF_MODELS:
        raise UserError(f"--attribute needs a Hugging Face model (--model hf), got --model "
                        f"{model}. Use --model hf or drop --attribute.")
    if isinstance(model_args, dict):
        pairs = model_args
    else:
        pairs = dict(p.split("=", 1) for p in str(model_args or "").split(",") if "=" in p)
    pretrained = pairs.get("pretrained")
    if not isinstance(pretrained, str):
        return
    looks_local = pretrained.startswith(("/", "./", "../", "~")) or pretrained.count("/") > 1
    if looks_local and not Path(pretrained).expanduser().exists():
        raise UserError(f"model directory not found: pretrained={pretrained} (in --model_args). "
                        "Give an existing directory or a hub id like EleutherAI/pythia-160m.")
    revision = pairs.get("revision")
    if revision not in (None, "", "main") and Path(pretrained).expanduser().is_dir():
        # transformers ignores revision= for a local directory and loads the directory itself
        raise UserError(f"revision={revision} has no effect on the local directory {pretrained}: "
                        f"select a checkpoint with subfolder={revision} or pretrained="
                        f"{pretrained.rstrip('/')}/{revision}.")
