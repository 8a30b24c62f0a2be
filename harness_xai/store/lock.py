"""One writer per database file: refuse a second writer at once, naming the path and the holder.

DuckDB locks its file itself (a second process gets "Conflicting lock is held in PROGRAM (PID n)"
on connect); ``duckdb_holder`` pulls program and pid out of that message. SQLite lets several
processes write in turn, so the store takes its own lock:

1. ``WriterLock.acquire(path)`` opens the database file (creating an empty one, which SQLite
   treats as an empty database) and takes a non-blocking exclusive ``flock`` on it. ``flock``
   locks are separate from the POSIX byte-range locks SQLite uses, so readers are unaffected.
2. When the lock is held, the holder's pid is looked up in ``/proc/locks`` (FLOCK entries with
   the file's device and inode; inode alone if the device numbers differ, as on overlay file
   systems) and its command line in ``/proc/PID/cmdline``; the refusal is one ``UserError`` line.
3. The kernel drops the lock when the holder exits, even on SIGKILL: a killed run never leaves a
   stale lock behind. ``release`` closes the descriptor.
"""

from __future__ import annotations

import fcntl
import os
import re
from pathlib import Path

from harness_xai.errors import UserError

_DUCKDB_HOLDER = re.compile(r"held in (?P<program>.*?) \(PID (?P<pid>\d+)\)")


def _cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    words = [w.decode(errors="replace") for w in raw.split(b"\0") if w]
    text = " ".join(" ".join(words).split())  # one line: newlines/tabs of `python -c` code collapse
    return text if len(text) <= 120 else text[:119] + "…"


def flock_holders(path: Path) -> list[int]:
    """Pids holding a ``flock`` on ``path`` according to /proc/locks (empty if unknown)."""
    try:
        st = os.stat(path)
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return []
    exact = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    by_dev, by_inode = [], []
    for line in lines:
        parts = line.split()
        if len(parts) < 6 or parts[1] != "FLOCK":  # "->" lines are waiters, not holders
            continue
        pid, where = int(parts[4]), parts[5]
        if where == exact:
            by_dev.append(pid)
        elif where.rsplit(":", 1)[-1] == str(st.st_ino):
            by_inode.append(pid)
    return by_dev or by_inode


def holder_text(pid: int | None, program: str = "") -> str:
    """``pid 123: harness-xai run …`` (or what is known of it)."""
    if pid is None:
        return "holder unknown"
    what = _cmdline(pid) or program
    return f"pid {pid}: {what}" if what else f"pid {pid}"


def busy_error(path: Path, holder: str) -> UserError:
    return UserError(f"database {path} is in use by another process ({holder}): wait for it to finish "
                     "or use another --db")


def duckdb_holder(message: str) -> str | None:
    """Holder text from DuckDB's lock-conflict message, or None if it is not one."""
    match = _DUCKDB_HOLDER.search(message)
    if match is None:
        return None
    return holder_text(int(match["pid"]), match["program"])


class WriterLock:
    """An exclusive, non-blocking ``flock`` on a database file, held while a Store writes."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, path: Path) -> WriterLock:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            pids = [p for p in flock_holders(path) if p != os.getpid()] or flock_holders(path)
            raise busy_error(path, holder_text(pids[0] if pids else None)) from None
        except BaseException:
            os.close(fd)
            raise
        return cls(path, fd)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None
