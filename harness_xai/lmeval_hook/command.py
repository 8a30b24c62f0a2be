"""lm-eval's own command line, unchanged: its ``run`` parser, its execution, and a scoped route
of ``lm_eval.simple_evaluate`` through another function for one command.

``harness-xai run`` is lm-eval's ``run`` with one extra argument group (added by the caller);
without ``--attribute`` it *is* ``lm-eval run``. With it, ``routed(fn)`` makes lm-eval's CLI call
``fn(**simple_evaluate_kwargs)`` instead of ``simple_evaluate`` for the duration of the command.
Failures that are the user's input (unknown task, model that does not load) become one line.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from harness_xai.errors import UserError


def run_parser():
    """lm-eval's CLI object (``HarnessCLI``) with its ``run`` parser named ``harness-xai run``."""
    from lm_eval._cli import HarnessCLI

    cli = HarnessCLI()
    cli._subparsers.choices["run"].prog = "harness-xai run"
    return cli


def lm_eval_command(argv: list[str]) -> int:
    """One of lm-eval's own commands (``ls``, ``validate``) as ``lm-eval`` would run it."""
    from lm_eval._cli import HarnessCLI

    old = sys.argv
    sys.argv = ["harness-xai", *argv]
    try:
        cli = HarnessCLI()
        cli.execute(cli.parse_args())
    finally:
        sys.argv = old
    return 0


@contextmanager
def routed(simple_evaluate: Callable[..., dict | None]) -> Iterator[None]:
    """Route ``lm_eval.simple_evaluate`` (what lm-eval's CLI calls) through ``simple_evaluate``."""
    import lm_eval

    had = "simple_evaluate" in vars(lm_eval)
    previous = vars(lm_eval).get("simple_evaluate")
    lm_eval.simple_evaluate = simple_evaluate
    try:
        yield
    finally:
        if had:
            lm_eval.simple_evaluate = previous
        else:
            del lm_eval.simple_evaluate


def execute(args) -> None:
    """lm-eval's own ``run`` on the namespace; what the user can fix (unknown or malformed task,
    bad task data, model directory without a tokenizer, model that does not load) becomes one
    line (``faults.explain_run_error``)."""
    import errno

    from harness_xai.lmeval_hook.faults import explain_run_error

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
        write = {errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EDQUOT}
        if not isinstance(err, OSError) or err.errno in write:
            raise
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"cannot load the model ({first}). Check --model_args pretrained=… "
                        "(offline: the model must be a local directory or in the HF cache).") from None
