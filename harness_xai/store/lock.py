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
   stale lock behind. ``release`` closes the descriptor. After the lock is taken, the path must
   still name the locked inode (a failed creator may have removed it meanwhile); else retry.
4. ``DirectoryLock`` serializes creating and migrating stores: an exclusive ``flock`` on the
   folder that holds the file, taken by every writer while it checks existence, creates, migrates
   and opens (seconds), so two processes never both decide to create the same new file, and a
   file is removed after a failed creation only by the process that created it, under the lock.
   It waits up to ``DIRECTORY_WAIT`` s (a long migration), then refuses naming the holder.
"""

from __future__ import annotations

import fcntl
import os
import re
import time
from pathlib import Path

from harness_xai.errors import UserError

_DUCKDB_HOLDER = re.compile(r"held in (?P<program>.*?) \(PID (?P<pid>\d+)\)")
#: seconds a writer waits for another one to finish creating/migrating a store in the same folder
DIRECTORY_WAIT = 60.0


def _cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    words = command_words([w.decode(errors="replace") for w in raw.split(b"\0") if w])
    text = " ".join(" ".join(words).split())  # one line: newlines/tabs of `python -c` code collapse
    return text if len(text) <= 120 else text[:119] + "…"


def command_words(words: list[str]) -> list[str]:
    """``python …/harness-xai run …`` or ``python -m harness_xai run …`` → ``harness-xai run …``
    (the command the user typed, not the interpreter path, which would fill the line)."""
    if words and os.path.basename(words[0]).startswith("python"):
        rest = words[1:]
        if rest[:2] == ["-m", "harness_xai"]:
            return ["harness-xai", *rest[2:]]
        if rest and os.path.basename(rest[0]) == "harness-xai":
            return ["harness-xai", *rest[1:]]
    if words and os.path.basename(words[0]) == "harness-xai":
        return ["harness-xai", *words[1:]]
    return words


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
        for _ in range(5):
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                if _same_file(fd, path):
                    return cls(path, fd)
            except BlockingIOError:
                os.close(fd)
                raise busy_error(path, holder_text(_other_holder(path))) from None
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)  # the file was removed or replaced while we waited: lock the new one
        raise busy_error(path, "the file keeps being replaced")

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)


def _other_holder(path: Path) -> int | None:
    pids = [p for p in flock_holders(path) if p != os.getpid()] or flock_holders(path)
    return pids[0] if pids else None


class DirectoryLock:
    """Exclusive ``flock`` on a folder while a store in it is created, migrated and opened."""

    def __init__(self, folder: Path, wait: float | None = None) -> None:
        self.folder = folder
        self.wait = DIRECTORY_WAIT if wait is None else wait
        self._fd: int | None = None

    def __enter__(self) -> DirectoryLock:
        fd = os.open(self.folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        deadline = time.monotonic() + self.wait
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        holder = holder_text(_other_holder(self.folder))
                        raise UserError(
                            f"another process has been creating or migrating a database in "
                            f"{self.folder} for over {self.wait:.0f} s ({holder}): wait for it "
                            "to finish or use another --db") from None
                    time.sleep(0.02)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
