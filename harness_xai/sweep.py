"""``harness-xai sweep``: models × checkpoints × tasks, evaluated with attribution into one store.

usage::

    harness-xai sweep [--zoo zoo] [--models all|NAME,…] [--checkpoints all|final|STEP,…]
                      [--revisions REV,…] [--tasks T,…] [--include_path DIR] [--xai-db URL]
                      [--model_args K=V,…] [--report DIR] [--dry-run] [-- RUN FLAGS…]

Algorithm:
1. Cells. Each ``--models`` entry is a zoo model (a directory ``<zoo>/<name>`` built by
   ``harness-xai zoo build``) or anything ``pretrained=`` accepts (hub id, local directory). A zoo
   model gives one cell per checkpoint (``--checkpoints``): ``pretrained=<zoo>/<name>,
   subfolder=step<N>``; any other model one cell per ``--revisions`` entry
   (``pretrained=<id>,revision=<rev>``, e.g. Pythia's ``step3000``), or a single cell.
2. Every cell is one ``harness-xai run --model hf --model_args … --tasks … --attribute
   --xai-db …`` plus the flags after ``--`` (any lm-eval or harness-xai run flag); they are
   parsed once up front, so a bad flag fails before any work. The checkpoint step and the parameter count of
   each run are recorded by the pipeline (``runs.step``, ``runs.n_params``; ``identity.checkpoint_step``).
3. Resume. Before a cell runs, the store is read: a cell is finished when the store holds a run
   with the same identity (``harness_xai.identity``, the definition ``run`` uses): model arguments, tasks, limit, seeds, generation and chat settings, few-shot
   count (compared when ``--num_fewshot`` is given) and attribution settings (method, metric,
   contrast, graph, faithfulness), and every task of that run has all of its incorrect responses
   stored (``count(cases) = task_results.n_incorrect``). Finished cells are not evaluated again;
   an unfinished one is re-run and the store skips the cases it already holds.
4. lm-eval indexes its ~10k task YAMLs whenever a run builds a ``TaskManager`` (≈ 10 s); during a
   sweep the index of a set of paths is built once and reused (``_task_index_once``).
5. The closing table lists every cell with its step, parameter count and accuracy per task (from
   the store); ``--report DIR`` renders the HTML report once at the end.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness_xai.errors import UserError

#: flags the sweep sets for every cell (one of them after ``--`` would contradict the matrix)
_OWN_FLAGS = ("--model", "--model_args", "--tasks", "--include_path", "--attribute", "--xai-db",
              "--xai-report", "--config", "-M", "-t", "-a", "-C")


@dataclass
class Cell:
    """One evaluation of the matrix."""

    model: str  # --models entry
    model_args: str  # the cell's --model_args value
    label: str  # what the table shows: "llama-m@step150", "EleutherAI/pythia-70m@step3000"


def sweep_main(argv: list[str]) -> int:
    own, run_flags = _split(argv)
    opts = _parser().parse_args(own)
    from harness_xai.config import DEFAULT_DB
    from harness_xai.store import Store, normalize_url
    from harness_xai.zoo import DEMO_TASKS, tasks_dir

    clash = [f for f in run_flags if f.split("=", 1)[0] in _OWN_FLAGS]
    if clash:
        raise UserError(f"{clash[0]} after `--` is set by the sweep itself; use the sweep's own "
                        "--models/--tasks/--include_path/--model_args/--xai-db/--report "
                        "(a --config file is not supported in a sweep).")
    url = normalize_url(opts.xai_db or DEFAULT_DB)
    tasks = _csv(opts.tasks) or list(DEMO_TASKS)
    include = opts.include_path or (str(tasks_dir()) if set(tasks) <= set(DEMO_TASKS) else None)
    cells = plan(opts, tasks)
    common = ["--tasks", ",".join(tasks), *(["--include_path", include] if include else []),
              "--attribute", "--xai-db", url, *run_flags]
    expected = [_expected_identity(cell, common) for cell in cells]  # parses every flag first
    if opts.dry_run:
        for cell in cells:
            print(f"{cell.label}: harness-xai run --model hf --model_args {cell.model_args} "
                  + " ".join(common))
        return 0
    init = "--xai-db-init" in run_flags  # another program's database: only when asked
    try:
        Store.open(url, init=init).close()  # create / migrate before the first cell
    except UserError as err:
        if init or "--xai-db-init" not in str(err):
            raise
        raise UserError(f"{err} In a sweep, pass it to every run: `harness-xai sweep … -- "
                        "--xai-db-init`.") from None
    finished = _finished_runs(url)
    from harness_xai.identity import matches
    from harness_xai.pipeline import run_main

    started = time.perf_counter()
    ran = skipped = 0
    with _task_index_once():
        for n, (cell, identity) in enumerate(zip(cells, expected), 1):
            if any(matches(config, identity) for config in finished):
                print(f"sweep [{n}/{len(cells)}] {cell.label}: finished in the store, skipped",
                      flush=True)
                skipped += 1
                continue
            print(f"sweep [{n}/{len(cells)}] {cell.label}", flush=True)
            run_main(["--model", "hf", "--model_args", cell.model_args, *common])
            ran += 1
    print(f"harness-xai sweep: {len(cells)} cells, {ran} evaluated, {skipped} already finished, "
          f"in {time.perf_counter() - started:.0f}s; store → {url}", flush=True)
    print(accuracy_table(url, cells), flush=True)
    if opts.report:
        from harness_xai.report import render_report
        print(f"report → {render_report(url, opts.report)}", flush=True)
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="harness-xai sweep", description="evaluate with attribution a matrix models × "
        "checkpoints × tasks into one store; flags after `--` go to every `harness-xai run`")
    p.add_argument("--zoo", default="zoo", help="zoo directory (default: zoo)")
    p.add_argument("--models", default="all",
                   help="comma-separated zoo model names or pretrained ids/paths (default: all "
                        "models built in --zoo)")
    p.add_argument("--checkpoints", default="all",
                   help="zoo models: all (default), final, or comma-separated steps")
    p.add_argument("--revisions", default=None,
                   help="other models: comma-separated revisions, e.g. step0,step1000,step143000")
    p.add_argument("--tasks", default=None, help="comma-separated (default: the bundled tasks)")
    p.add_argument("--include_path", default=None,
                   help="task YAML directory (default: the bundled tasks/ for bundled tasks)")
    p.add_argument("--xai-db", dest="xai_db", default=None, metavar="URL",
                   help="the store (default duckdb:///xai.duckdb)")
    p.add_argument("--model_args", default="",
                   help="extra model arguments for every cell, e.g. dtype=float32")
    p.add_argument("--report", default=None, metavar="DIR",
                   help="render the HTML report at the end")
    p.add_argument("--dry-run", dest="dry_run", action="store_true",
                   help="print the cells' run commands and exit")
    return p


def _split(argv: list[str]) -> tuple[list[str], list[str]]:
    if "--" in argv:
        at = argv.index("--")
        return argv[:at], argv[at + 1:]
    return argv, []


def _csv(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


def plan(opts, tasks: list[str]) -> list[Cell]:
    """Step 1: the cells, in --models order, checkpoints ascending."""
    from harness_xai.zoo.build import checkpoints as zoo_checkpoints

    zoo = Path(opts.zoo).expanduser()
    names = _csv(opts.models)
    if names == ["all"]:
        names = sorted(p.parent.name for p in zoo.glob("*/zoo_build.json")
                       if zoo_checkpoints(p.parent))
        if not names:
            raise UserError(f"no zoo models in {zoo}: build them with `harness-xai zoo build "
                            f"--out {zoo}`, or name models with --models.")
    if not names:
        raise UserError("--models is empty: give zoo model names or pretrained ids.")
    extra = "".join(f",{a}" for a in _csv(opts.model_args))
    cells: list[Cell] = []
    for name in names:
        target = zoo / name
        steps = zoo_checkpoints(target)
        if steps:
            chosen = _choose(steps, opts.checkpoints, name)
            root = target.resolve()
            cells += [Cell(name, f"pretrained={root},subfolder=step{s}{extra}", f"{name}@step{s}")
                      for s in chosen]
        elif (target / "config.json").is_file() or "/" in name or Path(name).exists():
            local = target if (target / "config.json").is_file() else Path(name).expanduser()
            pretrained = str(local.resolve()) if local.exists() else name
            revisions = _csv(opts.revisions) or [None]
            cells += [Cell(name, f"pretrained={pretrained}"
                           + (f",revision={r}" if r else "") + extra,
                           f"{name}@{r}" if r else name) for r in revisions]
        else:
            raise UserError(f"model '{name}' (in --models) is neither a zoo model in {zoo} nor a "
                            "path or hub id: build the zoo (`harness-xai zoo build`) or fix the "
                            "name.")
    return cells


def _choose(steps: list[int], spec: str, name: str) -> list[int]:
    if spec == "all":
        return steps
    if spec == "final":
        return steps[-1:]
    try:
        wanted = [int(s.removeprefix("step")) for s in _csv(spec)]
    except ValueError:
        raise UserError(f"--checkpoints {spec}: give all, final or comma-separated steps "
                        "(e.g. 0,150,540).") from None
    missing = [s for s in wanted if s not in steps]
    if missing:
        raise UserError(f"zoo model {name} has no checkpoint step {missing[0]} (it has "
                        f"{', '.join(map(str, steps))}).")
    return wanted


def _expected_identity(cell: Cell, common: list[str]) -> dict[str, Any]:
    """Step 3: what a finished run of ``cell`` holds in ``runs.config`` (``identity.expected``);
    parsing here also validates every flag before anything runs."""
    from lm_eval.config.evaluate_config import EvaluatorConfig

    from harness_xai.config import RunConfig, build_run_parser, check_model_args, split_run_args
    from harness_xai.identity import expected

    argv = ["--model", "hf", "--model_args", cell.model_args, *common]
    parser = build_run_parser()._parser
    try:
        args = parser.parse_args(["run", *argv])
    except SystemExit as err:
        raise UserError(f"bad run flag after `--` (see `harness-xai run --help`): "
                        f"{' '.join(common)}") from err
    xai = split_run_args(args)
    check_model_args(args.model, args.model_args)
    config = RunConfig.from_cli(xai)
    try:
        cfg = EvaluatorConfig.from_cli(args)
    except ValueError as err:
        raise UserError(f"run flags: {err}") from None
    return expected(cfg, config)


def _finished_runs(url: str) -> list[dict[str, Any]]:
    """``runs.config`` of every run whose tasks all have every incorrect response stored."""
    from harness_xai.store import run_sql

    _, runs = run_sql(url, "SELECT id, config, tasks FROM runs")
    _, counts = run_sql(url, "SELECT t.run_id, t.task, t.n_incorrect, count(c.id) "
                             "FROM task_results t LEFT JOIN cases c ON c.run_id = t.run_id "
                             "AND c.task = t.task GROUP BY t.run_id, t.task, t.n_incorrect")
    complete: dict[int, set[str]] = {}
    incomplete: set[int] = set()
    for run_id, task, n_incorrect, stored in counts:
        if stored >= (n_incorrect or 0):
            complete.setdefault(run_id, set()).add(task)
        else:
            incomplete.add(run_id)
    finished = []
    for run_id, config, tasks in runs:
        config = json.loads(config) if isinstance(config, str) else (config or {})
        tasks = json.loads(tasks) if isinstance(tasks, str) else (tasks or [])
        if run_id not in incomplete and set(tasks) <= complete.get(run_id, set()):
            finished.append(config)
    return finished


def accuracy_table(url: str, cells: list[Cell] | None = None) -> str:
    """Step 5: one line per run of the store (or of ``cells``): model, step, parameters and the
    decision metric per task."""
    from harness_xai.store import run_sql

    _, rows = run_sql(url, "SELECT r.id, r.model_args, r.pretrained, r.step, r.n_params, t.task, "
                           "t.metric, t.value FROM runs r JOIN task_results t ON t.run_id = r.id "
                           "ORDER BY r.id, t.task")
    wanted = {_norm(_args_dict(c.model_args)): c.label for c in cells or []}
    table: dict[int, dict[str, Any]] = {}
    tasks: list[str] = []
    for run_id, model_args, pretrained, step, n_params, task, metric, value in rows:
        key = _norm(json.loads(model_args) if model_args and model_args.startswith("{") else
                    _args_dict(model_args or ""))
        if cells is not None and key not in wanted:
            continue
        row = table.setdefault(run_id, {"label": wanted.get(key, Path(str(pretrained)).name),
                                        "step": step, "n_params": n_params, "values": {}})
        row["values"][task] = (metric, value)
        tasks += [task] if task not in tasks else []
    head = f"{'model':<28} {'step':>6} {'params':>9} " + " ".join(f"{t:>16}" for t in tasks)
    lines = [head]
    for row in table.values():
        cols = []
        for task in tasks:
            metric, value = row["values"].get(task, ("", None))
            cols.append(f"{(f'{metric} {value:.3f}' if value is not None else '-'):>16}")
        lines.append(f"{row['label']:<28} {'' if row['step'] is None else row['step']:>6} "
                     f"{row['n_params'] or '':>9} " + " ".join(cols))
    return "\n".join(lines)


def _norm(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _args_dict(model_args: str) -> dict[str, Any]:
    from lm_eval.utils import simple_parse_args_string

    return simple_parse_args_string(model_args)


@contextmanager
def _task_index_once() -> Iterator[None]:
    """Step 4: memoise lm-eval's ``TaskIndex.build`` per set of paths for the sweep's duration."""
    from lm_eval.tasks._index import TaskIndex

    original = vars(TaskIndex)["build"]
    build = original.__func__ if isinstance(original, staticmethod) else original
    cache: dict[tuple, dict] = {}

    def cached(paths, *args, **kwargs):
        paths = list(paths)
        key = (tuple(str(Path(p).resolve()) for p in paths), args, tuple(sorted(kwargs.items())))
        if key not in cache:
            cache[key] = build(paths, *args, **kwargs)
        return dict(cache[key])

    TaskIndex.build = staticmethod(cached)
    try:
        yield
    finally:
        TaskIndex.build = original
