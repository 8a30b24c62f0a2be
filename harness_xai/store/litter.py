"""Temporary files and folders whose process died (kill -9) are removed by the next run.

Names that carry the pid of their owner:
  ``.<store>.migrating-<pid>`` (+ ``.wal``)     a DuckDB store being built (duckfile.py)
  ``.harness-xai-report-<pid>-*``               a report being rendered (report/render.py)
  ``.harness-xai-old-<pid>-*``                  a previous report being swapped out
``remove_stale(folder, prefixes)`` deletes every entry of ``folder`` whose name starts with one of
``prefixes`` followed by a pid that is not a running process (never the entries of a live one,
never anything else). Returns the names removed.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterable
from pathlib import Path

REPORT_PREFIXES = (".harness-xai-report-", ".harness-xai-old-")


def pid_alive(pid: int) -> bool:
    """True if a process with this pid exists (a zombie counts as alive until reaped)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def migrating_prefix(store: Path) -> str:
    """Prefix of the temporary copies of the DuckDB store ``store`` (pid follows)."""
    return f".{store.name}.migrating-"


def remove_stale(folder: Path, prefixes: Iterable[str]) -> list[str]:
    """Remove ``folder/<prefix><pid>…`` entries whose process is gone; their names."""
    pattern = re.compile("(?:" + "|".join(re.escape(p) for p in prefixes) + r")(\d+)(?=$|[-.])")
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        match = pattern.match(entry.name)
        if match is None or pid_alive(int(match[1])):
            continue
        try:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
        except FileNotFoundError:
            pass  # another run cleaned it at the same moment
        except OSError:
            continue  # read-only folder: leave it, the run itself will say what is wrong
        removed.append(entry.name)
    return removed
