"""``harness-xai zoo build [--out zoo] [--force] [--steps N]`` and ``harness-xai zoo tasks``."""

from __future__ import annotations

import argparse

from harness_xai.errors import UserError


def zoo_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="harness-xai zoo")
    sub = parser.add_subparsers(dest="command")
    b = sub.add_parser("build", help="train the zoo model (cached)")
    b.add_argument("--out", default="zoo", help="zoo directory (default: zoo)")
    b.add_argument("--force", action="store_true", help="retrain even if cached")
    b.add_argument("--steps", type=int, default=None, help="training steps (default: full)")
    t = sub.add_parser("tasks", help="regenerate tasks/*/test.jsonl")
    t.add_argument("--out", default=None, help="tasks directory (default: the bundled one)")
    args = parser.parse_args(argv)
    if args.command == "build":
        from harness_xai.zoo import build_model
        if args.steps is not None and args.steps < 1:
            raise UserError(f"--steps must be ≥ 1, got {args.steps}.")
        print(build_model(args.out, steps=args.steps, force=args.force))
        return 0
    if args.command == "tasks":
        from harness_xai.zoo import tasks_dir
        from harness_xai.zoo.taskgen import write_tasks
        for path in write_tasks(args.out or tasks_dir()):
            print(path)
        return 0
    parser.print_help()
    return 2
