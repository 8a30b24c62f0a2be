"""The whole pipeline: lm-eval run → contrast cases → attribution → store.

Algorithm of ``evaluate``:
1. Validate the xai options (method, store URL) before anything runs.
2. Run ``lm_eval.simple_evaluate`` unchanged, with samples logged, capturing the HFLM instance and
   the Task objects; the model family is checked before the first request is computed.
3. For each task, each incorrect sample becomes a contrast case (or a skip with a reason);
   every sample's outcome (correct or not) goes into the task summary (store: doc_outcomes).
4. Open the store, find the run by its key; cases already stored are not attributed again.
5. Attribute each pending case (one forward + one backward), write it in its own transaction;
   under torchrun / accelerate launch the cases are sharded over the ranks, within the budget
   (``harness_xai.distributed``).
6. Return lm-eval's results dict plus ``results["xai"]``, the run summary.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from harness_xai import __version__
from harness_xai.contrast import (Options, attribute_case, cases_for_task, decision_metric,
                                  output_type)
from harness_xai.distributed import Budget, World, prepare_launch
from harness_xai.errors import UserError
from harness_xai.harness.capture import capture_evaluate
from harness_xai.lrp import adapter_for, attribute, get_method
from harness_xai.records import ATTRIBUTED, CaseRecord, DocOutcome, RunRecord, TaskSummary

DEFAULT_DB = "duckdb:///xai.duckdb"
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

    def line(self) -> str:
        skips = ", ".join(f"{k}: {v}" for k, v in sorted(self.skipped.items())) or "none"
        where = f"; report → {self.report}" if self.report else ""
        left = f", {self.left} left for a re-run (budget)" if self.left else ""
        ranks = (f" on {len(self.per_rank)} ranks ({'/'.join(map(str, self.per_rank))})"
                 if self.per_rank else "")
        return (f"harness-xai: {self.incorrect} incorrect → {self.attributed} attributed "
                f"({self.method}){ranks}, {self.already_stored} already stored, "
                f"{sum(self.skipped.values())} skipped ({skips}){left} in {self.seconds:.1f}s; "
                f"store → {self.db}{where}")


def evaluate(*, attribute: bool = True, db: str = DEFAULT_DB, method: str = "attnlrp",
             metric: str = "acc", contrast: str = "token", progress: bool = True,
             graph: dict | bool | None = None, faithfulness: bool = False,
             budget: Budget | None = None, **simple_evaluate_kwargs):
    """``lm_eval.simple_evaluate`` plus contrastive attribution of every incorrect response.

    ``metric``: acc | acc_norm decides "incorrect" for multiple choice; ``contrast``: token (one
    logit difference) | sequence (difference of the continuations' summed log-probs);
    ``graph``: pruning options (``harness_xai.graph.Prune`` fields, or True for the paper's
    defaults) to also build a cross-layer attribution graph per token-contrast case;
    ``faithfulness``: also measure each explanation's deletion curve (``harness_xai.faithfulness``);
    ``budget``: max cases / max tokens / time / batch size of the attribution (``distributed``)."""
    import lm_eval.evaluator

    if not attribute:
        return lm_eval.evaluator.simple_evaluate(**simple_evaluate_kwargs)
    from harness_xai.store import normalize_url

    spec = get_method(method)
    Options(metric=metric, contrast=contrast)  # bad values fail before the run
    if graph is not None and graph is not False:
        from harness_xai.graph.prune import as_prune
        graph = as_prune(graph).as_dict()
    url = normalize_url(db)
    keep_samples = simple_evaluate_kwargs.get("log_samples", True)
    simple_evaluate_kwargs["log_samples"] = True
    with capture_evaluate(before_run=_check_attributable) as captured:
        results = lm_eval.evaluator.simple_evaluate(**simple_evaluate_kwargs)
    world = World.detect()  # torchrun / accelerate launch: rank 0 leads, the others follow
    if results is None or not world.leader:
        from harness_xai.distributed import follow
        follow(world, lambda options: _case_worker(captured.lm, **options), progress=progress)
        return None
    with world.leading():
        summary = explain(results, captured.lm, captured.tasks, url, spec.name, metric,
                          simple_evaluate_kwargs, progress=progress, contrast=contrast,
                          prompts=captured.prompts, graph=graph or None,
                          faithfulness=faithfulness, budget=budget, world=world)
    results["xai"] = asdict(summary)
    if not keep_samples:
        results.pop("samples", None)
    return results


def _check_attributable(lm) -> None:
    from lm_eval.models.huggingface import HFLM

    if not isinstance(lm, HFLM):
        raise UserError(f"--attribute needs a Hugging Face model (--model hf); got "
                        f"{type(lm).__name__}. Run without --attribute or use --model hf.")
    adapter_for(lm.model)
    prepare_launch(lm)  # no tensor parallel; Accelerate multi-CPU: lm-eval shards as on GPUs


def explain(results: dict, lm, tasks: dict, url: str, method: str, metric: str,
            run_kwargs: dict, progress: bool = True, contrast: str = "token",
            prompts: dict | None = None, graph: dict | None = None,
            faithfulness: bool = False, budget: Budget | None = None,
            world: World | None = None) -> RunSummary:
    """Steps 3–5: cases from ``results["samples"]``, attribution, store."""
    from harness_xai.distributed import attribute_cases
    from harness_xai.store import Store

    start = time.perf_counter()
    samples = results.get("samples", {})
    cases: list[CaseRecord] = []
    summaries: list[TaskSummary] = []
    for name, task in tasks.items():
        task_cases = list(cases_for_task(name, task, samples.get(name, []), lm, metric,
                                         contrast, (prompts or {}).get(name)))
        cases += task_cases
        summaries.append(_task_summary(name, task, results, samples.get(name, []), metric,
                                       len(task_cases)))
    run = _run_record(results, lm, sorted(tasks), method, metric, run_kwargs, contrast, graph,
                      faithfulness)
    with Store.open(url) as store:
        run_id = store.ensure_run(run)
        store.write_task_summaries(run_id, summaries)
        # skipped cases written, pending ones attributed (sharded over the ranks of a launch)
        options = {"method": method, "graph": graph, "faithfulness": faithfulness}
        done = attribute_cases(store, run_id, cases, lambda o: _case_worker(lm, **o), options,
                               budget=budget, world=world, progress=progress)
    summary = RunSummary(db=url, run_id=run_id, method=method, incorrect=len(cases),
                         attributed=done.attributed, already_stored=done.already_stored,
                         skipped=dict(done.skipped), left=done.left, per_rank=done.per_rank)
    summary.seconds = time.perf_counter() - start
    return summary


def _case_worker(lm, method: str, graph: dict | None = None, faithfulness: bool = False):
    """How every rank attributes a case (``distributed.CaseWorker``); faithfulness curves are
    batched, ``FAITHFULNESS_BATCH`` cases per group; then each case's analysis (metrics, triage:
    ``harness_xai.analysis``, after faithfulness, which its "uninformative" rule reads)."""
    from harness_xai.analysis import analyse_case
    from harness_xai.distributed.runner import CaseWorker

    def finish(cases: list[CaseRecord]) -> None:
        if faithfulness:
            from harness_xai.faithfulness import fill_faithfulness
            fill_faithfulness(cases, lm.model, lm.tokenizer)
        for case in cases:
            analyse_case(case)

    return CaseWorker(
        model=lm.model, method=method,
        attribute=lambda case, result: _attribute_case(case, lm.model, lm.tokenizer, method,
                                                       graph, result=result),
        finish=finish, group=FAITHFULNESS_BATCH if faithfulness else 1)


def _attribute_case(case: CaseRecord, model, tokenizer, method: str,
                    graph: dict | None = None, result=None) -> None:
    """``result``: the engine's Attribution if already computed (a batched pass)."""
    if attribute_case(case, model, tokenizer, method):  # sequence contrast (contrast package)
        return
    if result is None:
        result = attribute(model, tokenizer, case.token_ids, case.wrong_token_id,
                           case.gold_token_id, method=method)
    case.token_relevance, case.layer_relevance = result.numpy()
    case.state_relevance = {k: v.numpy().astype(np.float32) for k, v in result.states.items()}
    case.head_relevance = None if result.heads is None else result.heads.numpy().astype(np.float32)
    experts = getattr(result, "experts", None)
    case.expert_relevance = None if experts is None else experts.numpy().astype(np.float32)
    case.method_params = {**result.params, **case.method_params}
    case.delta = result.delta
    case.method = method
    case.tokens = [tokenizer.decode([t]) for t in case.token_ids]
    case.wrong_token = tokenizer.decode([case.wrong_token_id])
    case.gold_token = tokenizer.decode([case.gold_token_id])
    case.status = ATTRIBUTED
    if graph is not None:
        from harness_xai.graph import case_graph
        case.graph = case_graph(case, model, tokenizer, method, graph)


def _task_summary(name, task, results, samples, metric, n_cases) -> TaskSummary:
    kind = output_type(task)
    used = decision_metric(task, samples[0] if samples else None, metric) or ""
    row = results.get("results", {}).get(name, {})
    value = next((v for k, v in row.items() if k.split(",")[0] == used
                  and isinstance(v, (int, float))), None)
    return TaskSummary(task=name, metric=used, value=None if value is None else float(value),
                       n_samples=len(samples), n_incorrect=n_cases, output_type=kind,
                       outcomes=[_doc_outcome(task, s, metric) for s in samples])


def _doc_outcome(task, sample: dict, metric: str) -> DocOutcome:
    """One logged sample's outcome (``store: doc_outcomes``). ``correct`` follows the contrast
    builders' rule exactly: a sample is a case iff its decision metric is 0, so correct = 0 for
    the cases, 1 otherwise; no decision metric (perplexity) → metric = the first logged metric
    (as its skipped case records it), correct None. ``value``: None when not a number or NaN."""
    used = decision_metric(task, sample, metric)
    name = used if used is not None else next(iter(sample.get("metrics") or []), None)
    raw = sample.get(name) if name is not None else None
    value = float(raw) if isinstance(raw, (int, float, np.number, np.bool_)) else None
    return DocOutcome(doc_id=int(sample["doc_id"]), doc_hash=str(sample["doc_hash"]),
                      filter=str(sample["filter"]), metric=None if name is None else str(name),
                      value=None if value is None or value != value else value,  # NaN → None
                      correct=None if used is None else int(float(sample[used]) != 0.0))


_RUN_KEY_DROP = {"batch_size", "batch_sizes", "device", "use_cache", "bootstrap_iters"}


def _run_record(results, lm, tasks, method, metric, run_kwargs, contrast="token",
                graph=None, faithfulness=False) -> RunRecord:
    import lm_eval

    config = {k: v for k, v in results.get("config", {}).items() if k not in _RUN_KEY_DROP}
    chat = {k: run_kwargs.get(k) for k in ("system_instruction", "apply_chat_template",
                                           "fewshot_as_multiturn", "samples")}
    identity = {"config": config, "n-shot": results.get("n-shot"), "tasks": tasks,
                "versions": results.get("versions"), "chat": chat, "method": method,
                "metric": metric, "lm_eval": lm_eval.__version__,
                **({"contrast": contrast} if contrast != "token" else {}),
                **({"graph": graph} if graph else {}),
                **({"faithfulness": True} if faithfulness else {})}
    blob = json.dumps(identity, sort_keys=True, default=str)
    model = lm.model
    model_args = config.get("model_args")
    pretrained = str(getattr(lm, "pretrained", None) or model.config._name_or_path)
    from harness_xai.sweep import checkpoint_step
    subfolder = (model_args if isinstance(model_args, dict) else {}).get("subfolder")
    return RunRecord(
        run_key=hashlib.sha256(blob.encode()).hexdigest(),
        model=str(config.get("model")), model_args=json.dumps(model_args, default=str)
        if not isinstance(model_args, str) else model_args,
        pretrained=pretrained,
        revision=getattr(lm, "revision", None), model_type=model.config.model_type,
        n_params=sum(p.numel() for p in model.parameters()), tasks=tasks, method=method,
        lm_eval_version=lm_eval.__version__, harness_xai_version=__version__,
        config=json.loads(json.dumps(identity, default=str)),
        step=checkpoint_step(pretrained, getattr(lm, "revision", None), subfolder))
