"""Fail before the work: open and lock the store, check the report folder, before lm-eval runs.

``preflight(url, report_dir=None, init=False)`` is the context manager ``pipeline.evaluate``
enters before ``simple_evaluate``:
1. ``check_destination(report_dir, "--xai-report", marker=REPORT_MARKER)``: the folder is new,
   empty or a previous report, and a probe folder can be created where it will be written
   (read-only file system, no permission, disk full → one line now, not after the run);
2. ``Store.open(url, init=init)``: URL, writability, schema (created/migrated if new) and the
   writer lock (a second writer is refused at once, naming the path and the holder's command);
   the store stays open — and locked — through the evaluation, and ``session.store`` is the one
   the pipeline writes to. Ranks other than 0 of a launcher (``RANK``) open nothing.
3. While the session is open, faults become one line (``UserError``, exit 2):
   ``KeyboardInterrupt`` → ``Interrupted`` (exit 130) saying what is stored and how to resume;
   disk full (ENOSPC anywhere in the error's chain) → where, how much was written, how to resume.
   Every case is written in its own transaction, so what is stored is always complete cases.
   A store file this run created is removed again if the run fails before writing its run row
   (a mistake found inside lm-eval's task setup leaves nothing behind).

``early_check(url, report_dir=None, init=False)`` is the same verdict without opening anything for
writing (the CLI calls it before lm-eval even indexes its tasks, so a busy, foreign or unwritable
store is refused in well under a second): the report folder; an existing DuckDB/SQLite file is
classified read-only (busy, corrupt, another program's, wrong schema → refused) and an SQLite
file's writer lock probed; for a new file, its folder must be writable.

``check_destination(out, flag, marker=None, allowed=None)`` is also used by ``report --out`` and
``export --out``: ``allowed(names)`` accepts a non-empty folder whose entries it recognises.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from harness_xai.errors import UserError
from harness_xai.store.engine import db_file, disk_full, display_url, remove_new_file
from harness_xai.store.litter import REPORT_PREFIXES, remove_stale
from harness_xai.store.lock import DirectoryLock

#: marker file of a rendered report (report/render.py): such a folder may be replaced
REPORT_MARKER = ".harness-xai-report"
#: errors of a destination that cannot be written
_WRITE_ERRNOS = {errno.EROFS: "read-only file system", errno.EACCES: "permission denied",
                 errno.EPERM: "operation not permitted", errno.ENOSPC: "disk full",
                 errno.EDQUOT: "disk quota exceeded"}


class Interrupted(UserError):
    """Ctrl-C: the CLI prints the message and exits with 130 (128 + SIGINT)."""

    exit_code = 130


def _existing_ancestor(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def write_problem(folder: Path) -> str | None:
    """Why nothing can be created in ``folder`` (a probe folder is made and removed), or None."""
    try:
        probe = tempfile.mkdtemp(prefix=f".harness-xai-probe-{os.getpid()}-", dir=folder)
    except OSError as exc:
        return _WRITE_ERRNOS.get(exc.errno, exc.strerror or type(exc).__name__)
    os.rmdir(probe)
    return None


def check_destination(out: str | Path, flag: str, *, marker: str | None = None,
                      allowed: Callable[[set[str]], bool] | None = None) -> Path:
    """UserError unless ``out`` can be written now: a new or empty folder, one holding ``marker``
    or one whose entry names ``allowed`` accepts; the folder it goes into is writable. Stale
    temporary report folders of dead processes next to it are removed. Returns ``out`` absolute."""
    path = Path(out).expanduser().absolute()
    if path.exists() and not path.is_dir():
        raise UserError(f"{flag} {path} exists and is not a directory: pass a directory path")
    if path.is_dir():
        names = {p.name for p in path.iterdir()}
        ok = (not names or (marker is not None and marker in names)
              or (allowed is not None and allowed(names)))
        if not ok:
            what = "report" if marker is not None else "export"
            raise UserError(f"{flag} {path} is a non-empty directory ({len(names)} entries) that is "
                            f"not a harness-xai {what}: pass a new or empty directory")
    parent = _existing_ancestor(path.parent)
    remove_stale(path.parent, REPORT_PREFIXES)
    for folder in ([path] if path.is_dir() else []) + [parent]:
        problem = write_problem(folder)
        if problem is not None:
            raise UserError(f"{flag} {path}: cannot write in {folder} ({problem}): pass a "
                            "writable directory")
    return path


def _free(path: Path | None) -> str:
    if path is None:
        return ""
    try:
        free = shutil.disk_usage(_existing_ancestor(path)).free
    except OSError:
        return ""
    return f", {free / 2**20:.1f} MiB free there"


@dataclass
class Session:
    """The store a run writes to, opened (and locked) before evaluation."""

    url: str
    store: object | None  # harness_xai.store.Store; None on ranks other than 0

    def written(self) -> str:
        """What this process stored: ``run 3: 5 cases written now, 12 stored in all``."""
        store = self.store
        run_id = getattr(store, "run_id", None)
        if store is None or run_id is None:
            return "nothing was written to the store yet"
        try:
            total = store.case_count(run_id)
        except Exception:  # noqa: BLE001 - the store may be what failed; say what is known
            total = None
        stored = "" if total is None else f", {total} stored in all"
        return f"run {run_id}: {store.cases_written} cases written by this process{stored}"

    def where(self) -> str:
        path = db_file(self.url)
        return str(path) if path is not None else display_url(self.url)


def early_check(url: str, *, report_dir: str | Path | None = None, init: bool = False) -> None:
    """UserError now for what ``preflight`` would refuse (see the module docstring)."""
    if not _leader():
        return
    if report_dir is not None:
        check_destination(report_dir, "--xai-report", marker=REPORT_MARKER)
    path = db_file(url)
    if path is None:
        return
    if not path.exists():
        folder = _existing_ancestor(path.parent)
        problem = write_problem(folder)
        if problem is not None:
            raise UserError(f"cannot create the store {path}: cannot write in {folder} ({problem}): "
                            "use a writable --xai-db")
        return
    import sqlalchemy as sa

    from harness_xai.store import migrate
    from harness_xai.store.engine import make_engine, open_error
    from harness_xai.store.lock import WriterLock

    if url.startswith("sqlite"):
        WriterLock.acquire(path).release()  # busy → one line naming the holder
    engine = make_engine(url, read_only=True)
    try:
        try:
            with engine.connect() as conn:
                state = migrate.schema_state(conn)
                conn.rollback()
        except sa.exc.DBAPIError as exc:
            raise open_error(url, exc) from None
    finally:
        engine.dispose()
    migrate.needs_migration(state, url, create=True, upgrade=False, init=init)


def _leader() -> bool:
    return os.environ.get("RANK", "0") in ("", "0")


@contextmanager
def preflight(url: str, *, report_dir: str | Path | None = None, init: bool = False
              ) -> Iterator[Session]:
    """Steps 1–3 above; the store is closed when the block ends."""
    if not _leader():
        yield Session(url, None)
        return
    from harness_xai.store.writer import Store

    if report_dir is not None:
        check_destination(report_dir, "--xai-report", marker=REPORT_MARKER)
    path = db_file(url)
    existed = path is None or path.exists()
    try:
        store = Store.open(url, init=init)
    except KeyboardInterrupt:
        raise Interrupted("interrupted while opening the store; nothing was written: re-run the "
                          "same command") from None
    session = Session(url, store)
    try:
        yield session
    except BaseException as exc:
        if not existed and store.run_id is None:  # created by this run, nothing written: remove
            _remove_unused(store, path)
        if isinstance(exc, KeyboardInterrupt):
            raise Interrupted(f"interrupted: {session.written()} in {session.where()}; every "
                              "stored case is complete: re-run the same command to resume (stored "
                              "cases are not attributed again)") from None
        if isinstance(exc, UserError) or not isinstance(exc, Exception) or not disk_full(exc):
            raise
        raise UserError(f"disk full writing the store {session.where()}"
                        f"{_free(path)}: {session.written()}; the store is consistent "
                        "(each case complete or absent): free space and re-run the same command "
                        "to resume") from None
    finally:
        store.close()


def _remove_unused(store, path: Path | None) -> None:
    """Remove a store file this process created and wrote no run to (a run that failed before
    its first write leaves nothing behind). Under the folder lock: no other writer can open it."""
    store.close()
    if path is None:
        return
    with DirectoryLock(path.parent):
        remove_new_file(path)
