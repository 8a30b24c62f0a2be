"""``harness-xai demo``: the offline demo, end to end.

Build the zoo if needed (``harness_xai.zoo``), sweep it with attribution (every model ×
checkpoint × bundled task, ``--limit`` docs per task) into one DuckDB store, explain the main
model's final checkpoint on every doc with graphs and faithfulness, render the report.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from harness_xai.errors import UserError


def demo(argv: list[str]) -> int:
    """The demo (module docstring); ``argv``: its own flags."""
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
        from harness_xai.pipeline import run_main
        return run_main(["--model", "hf", "--model_args", f"pretrained={main},dtype=float32",
                    "--tasks", ",".join(DEMO_TASKS), "--include_path", str(tasks_dir()),
                    *common, "--output_path", str(out / "results"), "--log_samples",
                    "--attribute", "--xai-db", db, "--xai-graph", "--xai-faithfulness",
                    "--xai-report", str(out / "report")])
