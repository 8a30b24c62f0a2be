"""Real small or read-only file systems for the disk-full and read-only tests (issue #18): a tmpfs
mounted for the test and unmounted after it. Mounting needs root, as `make test` does for its
Debian packages: as root directly, otherwise through passwordless ``sudo -n``. Where neither
works the test fails with how to run it, as a missing Chromium does
(``browser.chromium_or_fail``): never a silent skip."""

from __future__ import annotations

import os
import shutil
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

HINT = ("these tests need a real tmpfs (disk full, read-only): run the tests as root (CI does) "
        "or with passwordless sudo")


def _as_root(*argv: str) -> subprocess.CompletedProcess:
    sudo = [] if os.geteuid() == 0 or shutil.which("sudo") is None else ["sudo", "-n"]
    return subprocess.run([*sudo, *argv], capture_output=True, text=True)


def remount(point: Path, options: str) -> None:
    """Change a mounted tmpfs's options (e.g. ``size=256m`` after filling it)."""
    done = _as_root("mount", "-o", f"remount,{options}", str(point))
    assert done.returncode == 0, done.stderr


@contextmanager
def tmpfs(point: Path, options: str) -> Iterator[Path]:
    """``point`` (made if missing) with a fresh tmpfs of ``options`` on it while the block runs."""
    import pytest

    point.mkdir(exist_ok=True)
    done = _as_root("mount", "-t", "tmpfs", "-o", f"mode=1777,{options}", "tmpfs", str(point))
    if done.returncode != 0:
        why = " ".join(done.stderr.split()) or f"exit {done.returncode}"
        pytest.fail(f"cannot mount a tmpfs at {point} ({why}): {HINT}")
    try:
        yield point
    finally:
        _as_root("umount", "-l", str(point))
