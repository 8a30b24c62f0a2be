"""The whole pipeline: lm-eval run → contrast cases → engine → store (→ report).

Algorithm of ``evaluate``:
1. The run's ``RunConfig`` (method, store URL, pruning, budgets) is resolved and validated
   before anything runs (``harness_xai.config``); the store is opened and locked and the report
   folder checked (``store.preflight``: fail before the work, not after it).
2. Run ``lm_eval.simple_evaluate`` unchanged, with samples logged, capturing the HFLM instance and
   the Task objects; the model family is checked before the first request is computed.
3. For each task, each incorrect sample becomes a frozen contrast ``Case`` (or a skip with a
   reason); every sample's outcome (correct or not) goes into the task summary (doc_outcomes).
4. Open the store, find the run by its key (``identity.run_record``); cases already stored are
   not explained again.
5. Explain each pending case — the engine's one forward + one backward, several cases per pass
   with ``--xai-batch-size``, the graph's capture in the same pass with ``--xai-graph``; then
   faithfulness curves (batched) and the per-case analysis — and write it in its own
   transaction; under torchrun / accelerate launch the cases are sharded over the ranks, within
   the budget (``harness_xai.distributed``).
6. Return lm-eval's results dict plus ``results["xai"]``, the run summary.
``run_command`` is ``harness-xai run --attribute``: lm-eval's own command with its
``simple_evaluate`` routed through ``evaluate``, then the report and the one-line summary.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from harness_xai.analysis import analyse
from harness_xai.config import DEFAULT_DB, RunConfig
from harness_xai.contrast import TaskCases, output_type, task_cases
from harness_xai.contrast.decision import CORRECT, INCORRECT, Verdict
from harness_xai.distributed import Budget, World, prepare_launch
from harness_xai.distributed.runner import CaseWorker
from harness_xai.errors import UserError
from harness_xai.identity import run_record
from harness_xai.lmeval_hook.command import execute, routed
from harness_xai.lmeval_hook.evaluate import capture_evaluate
from harness_xai.lrp import Attribution, adapter_for
from harness_xai.lrp import explain as explain_objectives
from harness_xai.lrp.engine import batchable
from harness_xai.records import (Case, DocOutcome, Explained, Explanation, SequenceTarget,
                                 TaskSummary, TokenTarget)

__all__ = ["DEFAULT_DB", "RunSummary", "evaluate", "explain", "make_worker", "run_command",
           "run_main"]

#: cases per batched faithfulness pass (one forward per deletion step covers the batch)
FAITHFULNESS_BATCH = 8


@dataclass
class RunSummary:
    db: str
    run_id: int
    method: str
    incorrect: int = 0
    attributed: int = 0
    already_stored: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    report: str | None = None
    left: int = 0  # not attributed this run (--xai-max-cases / --xai-time-budget); not written
    per_rank: list[int] = field(default_factory=list)  # attributed per rank (launcher runs)
    #: task → ``TaskCases.counts()``: deciding metric, samples, incorrect, cases to explain,
    #: skips by reason, unscored samples by reason (incorrect = cases + skips)
    by_task: dict[str, dict] = field(default_factory=dict)

    def line(self) -> str:
        skips = ", ".join(f"{k}: {v}" for k, v in sorted(self.skipped.items())) or "none"
        where = f"; report → {self.report}" if self.report else ""
        left = f", {self.left} left for a re-run (budget)" if self.left else ""
        ranks = (f" on {len(self.per_rank)} ranks ({'/'.join(map(str, self.per_rank))})"
                 if self.per_rank else "")
        return (f"harness-xai: {self.incorrect} incorrect → {self.attributed} attributed "
                f"({self.method}){ranks}, {self.already_stored} already stored, "
                f"{sum(self.skipped.values())} skipped ({skips}){left}{self._tasks()} in "
                f"{self.seconds:.1f}s; store → {self.db}{where}")

    def _tasks(self) -> str:
        """`` [task metric: n incorrect = c cases + s skipped, u unscored; …]``."""
        parts = []
        for task, c in sorted(self.by_task.items()):
            unscored = sum(c.get("unscored", {}).values())
            parts.append(f"{task} {c['metric']}: {c['incorrect']} incorrect = {c['cases']} cases + "
                         f"{sum(c['skipped'].values())} skipped"
                         + (f", {unscored} unscored" if unscored else ""))
        return f" [{'; '.join(parts)}]" if parts else ""


def evaluate(*, attribute: bool = True, config: RunConfig | None = None, db: str = DEFAULT_DB,
             method: str = "attnlrp", metric: str | None = None, contrast: str = "token",
             progress: bool = True, graph: dict | bool | None = None, faithfulness: bool = False,
             budget: Budget | None = None, report_dir: str | None = None, db_init: bool = False,
             threshold: float | str | None = None, rollouts: int = 0,
             rollout_tokens: int | None = None, reasoning_steps: str = "sentence",
             **simple_evaluate_kwargs):
    """``lm_eval.simple_evaluate`` plus contrastive attribution of every incorrect response.

    ``config``: a resolved ``RunConfig``; without it one is built from the other arguments:
    ``metric``: the metric that decides "incorrect" (default: each task's primary metric;
    ``"NAME"`` for every task or ``"TASK=NAME,…"``); ``threshold``: the correct value of a
    non-binary metric (a number, or ``"TASK=X,…"``); ``contrast``: token (one
    logit difference) | sequence (difference of the continuations' summed log-probs);
    ``graph``: pruning options (``harness_xai.graph.Prune`` fields, or True for the paper's
    defaults) to also build a cross-layer attribution graph per token-contrast case;
    ``faithfulness``: also measure each explanation's deletion curve (``harness_xai.faithfulness``);
    ``budget``: max cases / max tokens / time / batch size of the attribution (``distributed``);
    ``report_dir``: checked now, rendered by the caller; ``db_init``: add the schema to another
    program's database; ``rollouts`` / ``rollout_tokens``: first-error rollouts per incorrect
    generation and their greedy length (``contrast.first_error``; 0: off); ``reasoning_steps``:
    a thinking model's reasoning cut by "sentence" or "line". The store is opened and locked before lm-eval runs (store.preflight)."""
    import lm_eval.evaluator

    if not attribute:
        return lm_eval.evaluator.simple_evaluate(**simple_evaluate_kwargs)
    if config is None:
        config = RunConfig.create(db=db, method=method, metric=metric, contrast=contrast,
                                  graph=graph, faithfulness=faithfulness, budget=budget,
                                  progress=progress, report=report_dir, db_init=db_init,
                                  threshold=threshold, rollouts=rollouts,
                                  rollout_tokens=rollout_tokens,
                                  reasoning_steps=reasoning_steps)
    keep_samples = simple_evaluate_kwargs.get("log_samples", True)
    simple_evaluate_kwargs["log_samples"] = True
    from harness_xai.store.preflight import preflight
    with preflight(config.db, report_dir=config.report, init=config.db_init) as session:
        with capture_evaluate(before_run=_check_attributable,
                              check_tasks=config.check_tasks) as captured:
            results = lm_eval.evaluator.simple_evaluate(**simple_evaluate_kwargs)
        world = World.detect()  # torchrun / accelerate launch: rank 0 leads, the others follow
        if results is None or not world.leader:
            from harness_xai.distributed import follow
            follow(world, lambda cfg: make_worker(captured.lm, cfg), progress=config.progress)
            return None
        with world.leading():
            summary = explain(results, captured.lm, captured.tasks, config,
                              simple_evaluate_kwargs, prompts=captured.prompts, world=world,
                              store=session.store)
    results["xai"] = asdict(summary)
    if not keep_samples:
        results.pop("samples", None)
    return results


def run_main(argv: list[str]) -> int:
    """``harness-xai run``: parse with lm-eval's parser; without ``--attribute`` lm-eval runs
    as ``lm-eval run``; with it, the resolved ``RunConfig`` goes to ``run_command``."""
    from harness_xai.config import build_run_parser, check_model_args, split_run_args

    args = build_run_parser()._parser.parse_args(["run", *argv])
    xai = split_run_args(args)
    if not xai["attribute"]:
        execute(args)
        return 0
    check_model_args(args.model, args.model_args)
    config = RunConfig.from_cli(xai)
    from harness_xai.store.preflight import early_check
    early_check(config.db, report_dir=config.report, init=config.db_init)
    return run_command(args, config)


def run_command(args, config: RunConfig) -> int:
    """``harness-xai run --attribute``: lm-eval's own ``run`` on ``args`` with its
    ``simple_evaluate`` routed through ``evaluate(config=…)``; then the report, if asked, and
    the one-line summary."""
    state: dict = {}

    def simple_evaluate(**kwargs):
        results = evaluate(attribute=True, config=config, **kwargs)
        if results is not None:
            state["summary"] = RunSummary(**results["xai"])
        return results

    with routed(simple_evaluate):
        execute(args)
    summary = state.get("summary")
    if summary is None:  # lm-eval returned no results (non-zero rank)
        return 0
    if config.report:
        from harness_xai.report import render_report
        try:
            summary.report = str(render_report(config.db, config.report))
        except BaseException:
            print(summary.line(), flush=True)  # what was stored, even if the report fails
            raise
    print(summary.line(), flush=True)
    return 0


def _check_attributable(lm) -> None:
    from lm_eval.models.huggingface import HFLM

    if not isinstance(lm, HFLM):
        raise UserError(f"--attribute needs a Hugging Face model (--model hf); got "
                        f"{type(lm).__name__}. Run without --attribute or use --model hf.")
    adapter_for(lm.model)
    prepare_launch(lm)  # no tensor parallel; Accelerate multi-CPU: lm-eval shards as on GPUs


def explain(results: dict, lm, tasks: dict, config: RunConfig, run_kwargs: dict,
            prompts: dict | None = None, world: World | None = None, store=None) -> RunSummary:
    """Steps 3–5: cases from ``results["samples"]``, explanations, store (``store``: already
    open, left open; else opened here)."""
    from contextlib import nullcontext

    from harness_xai.distributed import explain_cases
    from harness_xai.store import Store

    start = time.perf_counter()
    samples = results.get("samples", {})
    cases: list[Case] = []
    summaries: list[TaskSummary] = []
    by_task: dict[str, dict] = {}
    bar = _phase_bar("building cases", sum(len(samples.get(n, [])) for n in tasks), "sample",
                     config.progress)
    allow_code = bool(run_kwargs.get("confirm_run_unsafe_code")) and \
        os.environ.get("HF_ALLOW_CODE_EVAL") == "1"  # rollouts of code tasks run model code
    for name, task in tasks.items():  # a metric the samples lack fails here, before the store
        bar.set_postfix_str(name, refresh=False)
        built = task_cases(name, task, samples.get(name, []), lm, config.metric_for(name),
                           config.contrast, (prompts or {}).get(name), config.threshold_for(name),
                           progress=bar.update, rollouts=config.rollouts,
                           rollout_tokens=config.rollout_tokens, allow_code=allow_code,
                           reasoning_steps=config.reasoning_steps)
        cases += built.cases
        by_task[name] = built.counts()
        summaries.append(_task_summary(name, task, results, samples.get(name, []), built))
    bar.set_postfix_str(f"{len(cases)} cases", refresh=False)
    bar.close()
    run = run_record(results, lm, sorted(tasks), config, run_kwargs)
    with nullcontext(store) if store is not None else Store.open(config.db) as store:
        run_id = store.ensure_run(run)
        store.write_task_summaries(run_id, summaries)
        # skipped cases written, pending ones explained (sharded over the ranks of a launch)
        done = explain_cases(store, run_id, cases, lambda cfg: make_worker(lm, cfg), config,
                             budget=config.budget, world=world, progress=config.progress)
    summary = RunSummary(db=config.db, run_id=run_id, method=config.method.name,
                         incorrect=len(cases), attributed=done.attributed,
                         already_stored=done.already_stored, skipped=dict(done.skipped),
                         left=done.left, per_rank=done.per_rank, by_task=by_task)
    summary.seconds = time.perf_counter() - start
    return summary


def _phase_bar(what: str, total: int, unit: str, enabled: bool):
    """One progress bar per phase of a run (stderr; the attribution phase has its own per rank,
    counted in tokens since cost grows with them)."""
    import sys

    from tqdm.auto import tqdm

    return tqdm(total=total, desc=what, unit=unit, file=sys.stderr, disable=not enabled,
                leave=True, dynamic_ncols=True)


def make_worker(lm, config: RunConfig) -> CaseWorker:
    """How every rank explains its cases (``distributed.CaseWorker``): one engine pass per pass
    group (token contrasts share it; a sequence contrast or a case with a graph has its own),
    then faithfulness curves in groups of ``FAITHFULNESS_BATCH`` and each case's analysis
    (after faithfulness, which its "uninformative" rule reads)."""
    model, tokenizer = lm.model, lm.tokenizer
    shared = config.graph is None and batchable(model, config.method)

    def explain_group(cases: list[Case]) -> list[Explanation]:
        objectives = [c.objective for c in cases]
        batch = [i for i, o in enumerate(objectives) if isinstance(o, TokenTarget)] \
            if shared and len(cases) > 1 else []
        out: list[Explanation | None] = [None] * len(cases)
        if len(batch) > 1:  # one pass for the group's token contrasts
            found = explain_objectives(model, [objectives[i] for i in batch], config.method)
            for i, result in zip(batch, found):
                out[i] = _explanation(result)
        for i, objective in enumerate(objectives):
            if out[i] is None:
                out[i] = _explain_one(model, objective, config)
        return out

    def finish(done: list[Explained]) -> list[Explained]:
        if config.faithfulness:
            from harness_xai.faithfulness import with_faithfulness
            done = with_faithfulness(done, model, tokenizer)
        return [(case, analyse(case, ex)) for case, ex in done]

    from harness_xai.distributed.memory import fitter  # --xai-batch-size auto

    return CaseWorker(explain=explain_group, finish=finish,
                      group=FAITHFULNESS_BATCH if config.faithfulness else 1,
                      rows_for=fitter(model) if shared else None,
                      on_cuda=next(model.parameters()).device.type == "cuda")


def _explain_one(model, objective: TokenTarget | SequenceTarget, config: RunConfig) -> Explanation:
    graphed = config.graph is not None and isinstance(objective, TokenTarget)
    (result,) = explain_objectives(model, [objective], config.method, trace=graphed)
    graph = None
    if graphed:
        from harness_xai.graph import graph_from_trace
        graph = graph_from_trace(result.trace, config.method, config.graph, objective).to_record()
    return _explanation(result, graph)


def _explanation(result: Attribution, graph=None) -> Explanation:
    tokens, layers = result.numpy()
    return Explanation(
        method=result.method, delta=result.delta, token_relevance=tokens, layer_relevance=layers,
        params=dict(result.params),
        state_relevance={k: v.numpy().astype(np.float32) for k, v in result.states.items()},
        head_relevance=None if result.heads is None else result.heads.numpy().astype(np.float32),
        expert_relevance=None if result.experts is None
        else result.experts.numpy().astype(np.float32),
        graph=graph)


def _task_summary(name, task, results, samples, built: TaskCases) -> TaskSummary:
    """The task's row: its deciding metric (``built.primary``), lm-eval's aggregate of it, the
    number of samples that became cases, and every sample's outcome."""
    used = built.primary.name
    row = results.get("results", {}).get(name, {})
    value = next((v for k, v in row.items() if k.split(",")[0] == used
                  and isinstance(v, (int, float))), None)
    return TaskSummary(task=name, metric=used, value=None if value is None else float(value),
                       n_samples=len(samples), n_incorrect=len(built.cases),
                       output_type=output_type(task),
                       outcomes=[_doc_outcome(s, v) for s, v in zip(samples, built.verdicts)])


def _doc_outcome(sample: dict, verdict: Verdict) -> DocOutcome:
    """One logged sample's outcome (``store: doc_outcomes``) under the task's deciding metric:
    correct = 1 / 0 by its verdict, None when unscored (no number, no threshold: the reason is
    counted in the run summary); a sample is a case iff its verdict is incorrect (perplexity:
    every sample is a skipped case, correct None). ``value``: None when not a number or NaN."""
    correct = {CORRECT: 1, INCORRECT: 0}.get(verdict.outcome)
    value = verdict.value
    return DocOutcome(doc_id=int(sample["doc_id"]), doc_hash=str(sample["doc_hash"]),
                      filter=str(sample["filter"]), metric=verdict.metric,
                      value=None if value is None or value != value else float(value),
                      correct=correct)
