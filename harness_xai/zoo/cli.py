"""``harness-xai zoo build|list|tasks``: train the zoo (cached), show it, regenerate the task data.

``zoo build`` trains the zoo family (``llama``/``neox`` × ``s``/``m``/``l``, checkpoints saved
while training) or, with ``--models llama-tiny``, the single model of the first demo, or with
``--models llama-steps`` the model of ``xai_steps`` (multi-step arithmetic written out).
"""

from __future__ import annotations

import argparse
import os

from harness_xai.errors import UserError


def zoo_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="harness-xai zoo")
    sub = parser.add_subparsers(dest="command")
    b = sub.add_parser("build", help="train the zoo models (cached by spec hash)")
    b.add_argument("--out", default="zoo", help="zoo directory (default: zoo)")
    b.add_argument("--models", default="all",
                   help="comma-separated: llama-s,llama-m,llama-l,neox-s,neox-m,neox-l (default: "
                        "all of them), llama-tiny (the single model of the first demo), or "
                        "llama-steps (xai_steps, written-out multi-step arithmetic)")
    b.add_argument("--jobs", type=int, default=default_jobs(),
                   help=f"models trained in parallel, one core each (default: {default_jobs()})")
    b.add_argument("--force", action="store_true", help="retrain even if cached")
    b.add_argument("--steps", type=int, default=None, help="llama-tiny only: training steps")
    s = sub.add_parser("list", help="the built models, their checkpoints and sizes")
    s.add_argument("--out", default="zoo", help="zoo directory (default: zoo)")
    t = sub.add_parser("tasks", help="regenerate tasks/*/test.jsonl")
    t.add_argument("--out", default=None, help="tasks directory (default: the bundled one)")
    args = parser.parse_args(argv)
    if args.command == "build":
        return _build(args)
    if args.command == "list":
        return _list(args.out)
    if args.command == "tasks":
        from harness_xai.zoo import tasks_dir
        from harness_xai.zoo.taskgen import write_tasks
        for path in write_tasks(args.out or tasks_dir()):
            print(path)
        return 0
    parser.print_help()
    return 2


def default_jobs() -> int:
    return max(1, min(2, os.cpu_count() or 1))


def _build(args) -> int:
    from harness_xai.zoo import DEMO_MODEL, build_model, build_zoo
    from harness_xai.zoo.build import build_steps_model
    from harness_xai.zoo.family import ZOO_MODELS
    from harness_xai.zoo.steps_train import STEPS_MODEL

    if args.steps is not None and args.steps < 1:
        raise UserError(f"--steps must be ≥ 1, got {args.steps}.")
    if args.jobs < 1:
        raise UserError(f"--jobs must be ≥ 1, got {args.jobs}.")
    names = list(ZOO_MODELS) if args.models == "all" else [
        n.strip() for n in args.models.split(",") if n.strip()]
    unknown = [n for n in names if n not in (*ZOO_MODELS, DEMO_MODEL, STEPS_MODEL)]
    if unknown or not names:
        raise UserError(f"unknown zoo model(s) in --models: {', '.join(unknown) or '(none)'}; "
                        f"choose from {', '.join(ZOO_MODELS)}, {DEMO_MODEL}, {STEPS_MODEL}.")
    if STEPS_MODEL in names:
        print(build_steps_model(args.out, force=args.force))
        names.remove(STEPS_MODEL)
    if DEMO_MODEL in names:
        print(build_model(args.out, steps=args.steps, force=args.force))
        names.remove(DEMO_MODEL)
    elif args.steps is not None:
        raise UserError("--steps applies to llama-tiny only (the zoo family has a fixed schedule).")
    if names:
        for path in build_zoo(args.out, names, jobs=args.jobs, force=args.force).values():
            print(path)
    return 0


def _list(out: str) -> int:
    from harness_xai.zoo.build import zoo_table

    rows = zoo_table(out)
    if not rows:
        raise UserError(f"no zoo models in {out}: build them with "
                        f"`harness-xai zoo build --out {out}`.")
    print(f"{'model':<11} {'arch':<9} {'params':>8}  checkpoints (held-out kv retrieval)")
    for row in rows:
        steps = "  ".join(f"{s}:{a:.2f}" for s, a in row["checkpoints"])
        print(f"{row['name']:<11} {row['model_type']:<9} {row['n_params']:>8}  {steps}")
    return 0
