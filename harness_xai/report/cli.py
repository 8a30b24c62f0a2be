"""`harness-xai report --db DB [--out DIR] [--templates DIR] [--open-ok]`: the HTML report of a store.

``--out`` defaults to ``reports/out``; templates in ``reports/templates`` (or ``--templates``)
override the packaged ones of the same name.

Steps: 1. parse arguments; 2. ``render_report`` (raises UserError on bad input, which the main CLI
turns into exit code 2); 3. print the path of index.html; 4. with ``--open-ok``, also try to open
it in the default web browser (best effort, never an error).
"""

from __future__ import annotations

import argparse
import webbrowser

from harness_xai.report.render import DEFAULT_OUT, TEMPLATE_OVERRIDES, render_report


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="harness-xai report",
        description="Render a static HTML report (opens from file://, no network) of a harness-xai store.",
    )
    p.add_argument("--db", required=True, help="store path or URL (e.g. results.duckdb)")
    p.add_argument("--out", default=str(DEFAULT_OUT),
                   help=f"output directory (new, empty, or a previous report; default {DEFAULT_OUT})")
    p.add_argument("--templates", default=None, metavar="DIR",
                   help=f"templates that override the packaged ones (default {TEMPLATE_OVERRIDES} "
                        "when it exists)")
    p.add_argument(
        "--open-ok", action="store_true", help="open index.html in the default browser afterwards"
    )
    return p


def report_main(argv: list[str]) -> int:
    """Entry point of the `report` subcommand; returns the exit code."""
    args = build_parser().parse_args(argv)
    index = render_report(args.db, args.out, args.templates)
    print(index)
    if args.open_ok:
        try:
            webbrowser.open(index.as_uri())
        except Exception:  # noqa: BLE001 — opening a browser is a convenience only
            pass
    return 0
