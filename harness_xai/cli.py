"""Command line: ``harness-xai run|report|sql|db|zoo|demo|ls|validate``.

``run`` is lm-eval's own ``run`` parser (every flag unchanged) with one extra argument group; the
extra arguments are removed from the namespace before lm-eval sees it (its EvaluatorConfig is
strict). Without ``--attribute`` lm-eval runs exactly as ``lm-eval run``. ``ls``/``validate`` go
straight to lm-eval. Bad input ends with one line on stderr and exit code 2.
"""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from harness_xai.errors import UserError

XAI_ARGS = ("attribute", "xai_db", "xai_method", "xai_report", "xai_no_progress", "xai_metric",
            "xai_contrast", "xai_graph", "xai_graph_edges", "xai_graph_nodes", "xai_graph_mass",
            "xai_faithfulness", "xai_max_cases", "xai_max_tokens", "xai_time_budget",
            "xai_batch_size", "xai_db_init")
HF_MODELS = {"hf", "hf-auto", "huggingface"}
USAGE = """usage: harness-xai COMMAND …

commands:
  run       lm-eval run, every flag unchanged, plus --attribute [--xai-db URL] [--xai-method M]
  report    render the HTML failure report of a store:  report --db xai.duckdb --out DIR
  sql       run SQL on a store:  sql --db xai.duckdb "SELECT task, count(*) FROM cases GROUP BY task"
  db        store schema:  db upgrade|current|history --db URL
  export    dump every table of a store:  export --format parquet --db xai.duckdb --out DIR
  sweep     run --attribute over models × checkpoints × tasks into one store (resumable):
            sweep --zoo zoo --models all --checkpoints all --xai-db xai.duckdb [-- RUN FLAGS]
  zoo       build the project's own trained models:  zoo build [--out zoo] | zoo list
  demo      offline demo: zoo → run --attribute on the bundled tasks → DuckDB → HTML report
  ls, validate   lm-eval's own commands
"""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return _dispatch(argv)
    except UserError as err:
        print(f"harness-xai: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:  # outside a store session (store.preflight says more inside one)
        print("harness-xai: interrupted; a store holds only complete cases: re-run the same "
              "command to resume", file=sys.stderr)
        return 130
    except OSError as err:  # a destination that cannot be written (read-only, disk full, …)
        if err.errno not in _WRITE_ERRNOS:
            raise
        print(f"harness-xai: cannot write {err.filename or ''} ({err.strerror}): use a writable "
              "destination with free space", file=sys.stderr)
        return 2


_WRITE_ERRNOS = {errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EDQUOT}


def _dispatch(argv: list[str]) -> int:
    if not argv or argv[0] in {"-h", "--help", "help"}:
        print(USAGE)
        return 0
    command, rest = argv[0], argv[1:]
    if command == "report":
        from harness_xai.report.cli import report_main
        return report_main(rest)
    if command == "sql":
        from harness_xai.store.cli import sql_main
        return sql_main(rest)
    if command == "db":
        from harness_xai.store.cli import db_main
        return db_main(rest)
    if command == "export":
        from harness_xai.store.cli import export_main
        return export_main(rest)
    if command == "zoo":
        from harness_xai.zoo.cli import zoo_main
        return zoo_main(rest)
    if command == "sweep":
        from harness_xai.sweep import sweep_main
        return sweep_main(rest)
    if command == "demo":
        return demo(rest)
    if command in {"ls", "validate"}:
        return _lm_eval(argv)
    if command == "run":
        return run(rest)
    if command.startswith("-"):  # lm-eval's flag-only style: `harness-xai --model hf …`
        return run(argv)
    raise UserError(f"unknown command '{command}'. Commands: run, report, sql, db, export, sweep, "
                    "zoo, demo, "
                    "ls, validate (see `harness-xai --help`).")


def _lm_eval(argv: list[str]) -> int:
    from lm_eval._cli import HarnessCLI

    old = sys.argv
    sys.argv = ["harness-xai", *argv]
    try:
        cli = HarnessCLI()
        cli.execute(cli.parse_args())
    finally:
        sys.argv = old
    return 0


def build_run_parser():
    """lm-eval's CLI with the harness-xai argument group added to ``run``."""
    from lm_eval._cli import HarnessCLI

    from harness_xai.pipeline import DEFAULT_DB

    cli = HarnessCLI()
    run_parser = cli._subparsers.choices["run"]
    run_parser.prog = "harness-xai run"
    group = run_parser.add_argument_group(
        "harness-xai", "explain every incorrect response (all other flags are lm-eval's)")
    group.add_argument("--attribute", action="store_true",
                       help="attribute every incorrect response and store the results")
    group.add_argument("--xai-db", default=DEFAULT_DB, metavar="URL",
                       help=f"store: duckdb:///path, sqlite:///path or a file path (default {DEFAULT_DB})")
    group.add_argument("--xai-method", default="attnlrp", metavar="METHOD",
                       help="attnlrp (default), cp-lrp, grad-x-input, integrated-gradients")
    group.add_argument("--xai-metric", default="acc", metavar="METRIC",
                       help="multiple choice: which metric decides 'incorrect': acc (default), acc_norm")
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
    from harness_xai.distributed import add_budget_arguments
    add_budget_arguments(group)  # --xai-max-cases, --xai-max-tokens, --xai-time-budget, --xai-batch-size
    return cli


def run(argv: list[str]) -> int:
    cli = build_run_parser()
    args = cli._parser.parse_args(["run", *argv])
    xai = {key: getattr(args, key) for key in XAI_ARGS}
    for key in XAI_ARGS:
        delattr(args, key)
    if not xai["attribute"]:
        _execute(args)
        return 0
    settings = _validate(args, xai)
    with _attributing(settings) as state:
        _execute(args)
    summary = state.get("summary")
    if summary is None:  # lm-eval returned no results (non-zero rank)
        return 0
    if xai["xai_report"]:
        from harness_xai.report import render_report
        try:
            summary.report = str(render_report(settings["db"], xai["xai_report"]))
        except BaseException:
            print(summary.line(), flush=True)  # what was stored, even if the report fails
            raise
    print(summary.line(), flush=True)
    return 0


def _validate(args, xai: dict) -> dict:
    from harness_xai.contrast import Options
    from harness_xai.distributed import Budget
    from harness_xai.lrp import get_method
    from harness_xai.store import normalize_url

    if args.model not in HF_MODELS:
        raise UserError(f"--attribute needs a Hugging Face model (--model hf), got --model "
                        f"{args.model}. Use --model hf or drop --attribute.")
    _check_pretrained(args.model_args)
    Options(metric=xai["xai_metric"], contrast=xai["xai_contrast"])
    graph = None
    if xai["xai_graph"] and get_method(xai["xai_method"]).name == "integrated-gradients":
        raise UserError("--xai-graph works with attnlrp, cp-lrp and grad-x-input, not "
                        "integrated-gradients. Drop --xai-graph or pick another --xai-method.")
    if xai["xai_graph"]:
        from harness_xai.graph import Prune
        try:
            graph = Prune(mass=xai["xai_graph_mass"], max_edges=xai["xai_graph_edges"],
                          max_nodes=xai["xai_graph_nodes"]).as_dict()
        except UserError as err:
            flag = next((f for k, f in (("mass", "--xai-graph-mass"), ("max_edges", "--xai-graph-edges"),
                                        ("max_nodes", "--xai-graph-nodes")) if f"{k}=" in str(err)),
                        "--xai-graph-*")
            raise UserError(f"{flag}: {err}") from None
    from harness_xai.store.preflight import early_check
    early_check(normalize_url(xai["xai_db"]), report_dir=xai["xai_report"], init=xai["xai_db_init"])
    return {"db": normalize_url(xai["xai_db"]), "method": get_method(xai["xai_method"]).name,
            "progress": not xai["xai_no_progress"], "metric": xai["xai_metric"],
            "contrast": xai["xai_contrast"], "graph": graph,
            "faithfulness": xai["xai_faithfulness"], "budget": Budget.from_args(xai),
            "report_dir": xai["xai_report"], "db_init": xai["xai_db_init"]}


def _check_pretrained(model_args) -> None:
    """A local-looking ``pretrained=`` that does not exist fails before anything loads."""
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


@contextmanager
def _attributing(settings: dict) -> Iterator[dict]:
    """Route lm-eval's ``simple_evaluate`` through ``harness_xai.evaluate`` for one run."""
    import lm_eval

    from harness_xai.pipeline import evaluate

    state: dict = {}
    had = "simple_evaluate" in vars(lm_eval)
    previous = vars(lm_eval).get("simple_evaluate")

    def simple_evaluate(**kwargs):
        results = evaluate(attribute=True, db=settings["db"], method=settings["method"],
                           progress=settings["progress"], metric=settings["metric"],
                           contrast=settings["contrast"], graph=settings["graph"],
                           faithfulness=settings["faithfulness"], budget=settings["budget"],
                           report_dir=settings.get("report_dir"), db_init=settings.get("db_init", False),
                           **kwargs)
        if results is not None:
            from harness_xai.pipeline import RunSummary
            state["summary"] = RunSummary(**results["xai"])
        return results

    lm_eval.simple_evaluate = simple_evaluate
    try:
        yield state
    finally:
        if had:
            lm_eval.simple_evaluate = previous
        else:
            del lm_eval.simple_evaluate


def _execute(args) -> None:
    """lm-eval's own ``run`` on the namespace; model-loading failures become one line."""
    from harness_xai.run_errors import explain_run_error

    try:
        args.func(args)
    except UserError:
        raise
    except (ValueError, IndexError, TypeError, OSError) as err:
        pairs = args.model_args if isinstance(args.model_args, dict) else dict(
            p.split("=", 1) for p in str(args.model_args or "").split(",") if "=" in p)
        explained = explain_run_error(err, pretrained=pairs.get("pretrained"),
                                      include_path=getattr(args, "include_path", None))
        if explained is not None:
            raise explained from None
        if not isinstance(err, OSError) or err.errno in _WRITE_ERRNOS:
            raise
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"cannot load the model ({first}). Check --model_args pretrained=… "
                        "(offline: the model must be a local directory or in the HF cache).") from None


def demo(argv: list[str]) -> int:
    """Offline demo: build the zoo if needed, sweep it with attribution (every model × checkpoint
    × bundled task, ``--limit`` docs per task), explain the main model's final checkpoint on every
    doc with graphs and faithfulness, render the report."""
    import argparse

    from harness_xai.zoo import DEMO_CHECKPOINTS, DEMO_LIMIT, DEMO_MAIN, DEMO_TASKS, ZOO_MODELS
    from harness_xai.zoo.cli import default_jobs

    parser = argparse.ArgumentParser(prog="harness-xai demo")
    parser.add_argument("--out", default="demo", help="output directory (default: demo)")
    parser.add_argument("--zoo", default="zoo", help="zoo directory (default: zoo)")
    parser.add_argument("--method", default="attnlrp")
    parser.add_argument("--models", default=",".join(ZOO_MODELS),
                        help="zoo models to sweep (default: all six)")
    parser.add_argument("--checkpoints", default=DEMO_CHECKPOINTS,
                        help=f"steps to sweep (default {DEMO_CHECKPOINTS}), all or final")
    parser.add_argument("--limit", type=int, default=DEMO_LIMIT,
                        help=f"docs per task in the sweep (default {DEMO_LIMIT}; 0: all)")
    parser.add_argument("--main", default=DEMO_MAIN,
                        help=f"model explained on every doc with graphs and faithfulness "
                             f"(default {DEMO_MAIN}; 'none' to skip)")
    parser.add_argument("--jobs", type=int, default=default_jobs(),
                        help="zoo models trained in parallel (default: up to 2 cores)")
    opts = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    from harness_xai.sweep import _task_index_once, sweep_main
    from harness_xai.zoo import build_zoo, tasks_dir

    models = [m.strip() for m in opts.models.split(",") if m.strip()]
    if opts.main != "none" and opts.main not in models:
        raise UserError(f"--main {opts.main} is not among --models ({opts.models}).")
    zoo = build_zoo(opts.zoo, models, jobs=max(1, opts.jobs))
    out = Path(opts.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    db = f"duckdb:///{out / 'xai.duckdb'}"
    common = ["--device", "cpu", "--batch_size", "16", "--xai-method", opts.method]
    with _task_index_once():  # lm-eval indexes its task YAMLs once for the whole demo
        sweep_main(["--zoo", opts.zoo, "--models", ",".join(models), "--checkpoints",
                    opts.checkpoints, "--tasks", ",".join(DEMO_TASKS), "--xai-db", db,
                    "--model_args", "dtype=float32", "--", *common, "--xai-no-progress",
                    *(["--limit", str(opts.limit)] if opts.limit > 0 else [])])
        if opts.main == "none":
            from harness_xai.report import render_report
            print(f"report → {render_report(db, str(out / 'report'))}", flush=True)
            return 0
        main = Path(zoo[opts.main]).resolve()
        return run(["--model", "hf", "--model_args", f"pretrained={main},dtype=float32",
                    "--tasks", ",".join(DEMO_TASKS), "--include_path", str(tasks_dir()),
                    *common, "--output_path", str(out / "results"), "--log_samples",
                    "--attribute", "--xai-db", db, "--xai-graph", "--xai-faithfulness",
                    "--xai-report", str(out / "report")])


if __name__ == "__main__":
    sys.exit(main())
