"""Command line: ``harness-xai run|report|sql|db|export|sweep|zoo|demo|ls|validate``.

This module only parses and dispatches. ``run`` is lm-eval's own ``run`` parser (every flag
unchanged) with one extra argument group (``config.add_run_arguments``); the extra arguments are
removed from the namespace before lm-eval sees it (its EvaluatorConfig is strict). Without
``--attribute`` lm-eval runs exactly as ``lm-eval run``; with it ``pipeline.run_command`` runs it.
``ls``/``validate`` go straight to lm-eval. Bad input ends with one line on stderr and exit code 2.
"""

from __future__ import annotations

import errno
import sys

from harness_xai.errors import UserError

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
        if err.errno not in WRITE_ERRNOS:
            raise
        print(f"harness-xai: cannot write {err.filename or ''} ({err.strerror}): use a writable "
              "destination with free space", file=sys.stderr)
        return 2


WRITE_ERRNOS = {errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EDQUOT}


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
        from harness_xai.demo import demo
        return demo(rest)
    if command in {"ls", "validate"}:
        from harness_xai.lmeval_hook.command import lm_eval_command
        return lm_eval_command(argv)
    if command == "run" or command.startswith("-"):  # also lm-eval's flag-only style
        from harness_xai.pipeline import run_main
        return run_main(rest if command == "run" else argv)
    raise UserError(f"unknown command '{command}'. Commands: run, report, sql, db, export, sweep, "
                    "zoo, demo, "
                    "ls, validate (see `harness-xai --help`).")


if __name__ == "__main__":
    sys.exit(main())
