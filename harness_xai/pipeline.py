"""The whole pipeline: lm-eval run → contrast cases → attribution → store.

Algorithm of ``evaluate``:
1. Validate the xai options (method, store URL) before anything runs.
2. Run ``lm_eval.simple_evaluate`` unchanged, with samples logged, capturing the HFLM instance and
   the Task objects; the model family is checked before the first request is computed.
3. For each task, each incorrect sample becomes a contrast case (or a skip with a reason).
4. Open the store, find the run by its key; cases already stored are not attributed again.
5. Attribute each pending case (one forward + one backward), write it in its own transaction.
6. Return lm-eval's results dict plus ``results["xai"]``, the run summary.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field

from harness_xai import __version__
from harness_xai.contrast import cases_for_task, decision_metric, output_type
from harness_xai.errors import UserError
from harness_xai.harness.capture import capture_evaluate
from harness_xai.lrp import adapter_for, attribute, get_method
from harness_xai.records import ATTRIBUTED, PENDING, SKIPPED, CaseRecord, RunRecord, TaskSummary

DEFAULT_DB = "duckdb:///xai.duckdb"


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

    def line(self) -> str:
        skips = ", ".join(f"{k}: {v}" for k, v in sorted(self.skipped.items())) or "none"
        where = f"; report → {self.report}" if self.report else ""
        return (f"harness-xai: {self.incorrect} incorrect → {self.attributed} attributed "
                f"({self.method}), {self.already_stored} already stored, "
                f"{sum(self.skipped.values())} skipped ({skips}) in {self.seconds:.1f}s; "
                f"store → {self.db}{where}")


def evaluate(*, attribute: bool = True, db: str = DEFAULT_DB, method: str = "attnlrp",
             metric: str = "acc", progress: bool = True, **simple_evaluate_kwargs):
    """``lm_eval.simple_evaluate`` plus contrastive attribution of every incorrect response."""
    import lm_eval.evaluator

    if not attribute:
        return lm_eval.evaluator.simple_evaluate(**simple_evaluate_kwargs)
    from harness_xai.store import normalize_url

    spec = get_method(method)
    url = normalize_url(db)
    keep_samples = simple_evaluate_kwargs.get("log_samples", True)
    simple_evaluate_kwargs["log_samples"] = True
    with capture_evaluate(before_run=_check_attributable) as captured:
        results = lm_eval.evaluator.simple_evaluate(**simple_evaluate_kwargs)
    if results is None:  # non-zero rank of a distributed run
        return None
    summary = explain(results, captured.lm, captured.tasks, url, spec.name, metric,
                      simple_evaluate_kwargs, progress=progress)
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


def explain(results: dict, lm, tasks: dict, url: str, method: str, metric: str,
            run_kwargs: dict, progress: bool = True) -> RunSummary:
    """Steps 3–5: cases from ``results["samples"]``, attribution, store."""
    from tqdm.auto import tqdm

    from harness_xai.store import Store

    start = time.perf_counter()
    samples = results.get("samples", {})
    cases: list[CaseRecord] = []
    summaries: list[TaskSummary] = []
    for name, task in tasks.items():
        task_cases = list(cases_for_task(name, task, samples.get(name, []), lm, metric))
        cases += task_cases
        summaries.append(_task_summary(name, task, results, samples.get(name, []), metric,
                                       len(task_cases)))
    run = _run_record(results, lm, sorted(tasks), method, metric, run_kwargs)
    with Store.open(url) as store:
        run_id = store.ensure_run(run)
        store.write_task_summaries(run_id, summaries)
        done = store.done_keys(run_id)
        summary = RunSummary(db=url, run_id=run_id, method=method, incorrect=len(cases))
        todo = [c for c in cases if c.unit_key not in done]
        summary.already_stored = len(cases) - len(todo)
        skipped = Counter(c.skip_reason for c in cases if c.status == SKIPPED)
        tokenizer = lm.tokenizer
        bar = tqdm(todo, desc="attributing", unit="case", disable=not progress, file=sys.stderr)
        for case in bar:
            if case.status == PENDING:
                _attribute_case(case, lm.model, tokenizer, method)
            store.write_case(run_id, case)
        summary.attributed = sum(1 for c in todo if c.status == ATTRIBUTED)
        summary.skipped = dict(skipped)
    summary.seconds = time.perf_counter() - start
    return summary


def _attribute_case(case: CaseRecord, model, tokenizer, method: str) -> None:
    result = attribute(model, tokenizer, case.token_ids, case.wrong_token_id, case.gold_token_id,
                       method=method)
    case.token_relevance, case.layer_relevance = result.numpy()
    case.delta = result.delta
    case.method = method
    case.tokens = [tokenizer.decode([t]) for t in case.token_ids]
    case.wrong_token = tokenizer.decode([case.wrong_token_id])
    case.gold_token = tokenizer.decode([case.gold_token_id])
    case.status = ATTRIBUTED


def _task_summary(name, task, results, samples, metric, n_cases) -> TaskSummary:
    kind = output_type(task)
    used = decision_metric(task, samples[0] if samples else None, metric) or ""
    row = results.get("results", {}).get(name, {})
    value = next((v for k, v in row.items() if k.split(",")[0] == used
                  and isinstance(v, (int, float))), None)
    return TaskSummary(task=name, metric=used, value=None if value is None else float(value),
                       n_samples=len(samples), n_incorrect=n_cases, output_type=kind)


_RUN_KEY_DROP = {"batch_size", "batch_sizes", "device", "use_cache", "bootstrap_iters"}


def _run_record(results, lm, tasks, method, metric, run_kwargs) -> RunRecord:
    import lm_eval

    config = {k: v for k, v in results.get("config", {}).items() if k not in _RUN_KEY_DROP}
    chat = {k: run_kwargs.get(k) for k in ("system_instruction", "apply_chat_template",
                                           "fewshot_as_multiturn", "samples")}
    identity = {"config": config, "n-shot": results.get("n-shot"), "tasks": tasks,
                "versions": results.get("versions"), "chat": chat, "method": method,
                "metric": metric, "lm_eval": lm_eval.__version__}
    blob = json.dumps(identity, sort_keys=True, default=str)
    model = lm.model
    model_args = config.get("model_args")
    return RunRecord(
        run_key=hashlib.sha256(blob.encode()).hexdigest(),
        model=str(config.get("model")), model_args=json.dumps(model_args, default=str)
        if not isinstance(model_args, str) else model_args,
        pretrained=str(getattr(lm, "pretrained", None) or model.config._name_or_path),
        revision=getattr(lm, "revision", None), model_type=model.config.model_type,
        n_params=sum(p.numel() for p in model.parameters()), tasks=tasks, method=method,
        lm_eval_version=lm_eval.__version__, harness_xai_version=__version__,
        config=json.loads(json.dumps(identity, default=str)))
