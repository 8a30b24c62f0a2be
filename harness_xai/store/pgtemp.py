"""A throwaway PostgreSQL server on loopback, for the test suite and the store benchmark.

``TempPostgres.start()``:
1. find ``initdb``/``pg_ctl``: $PG_BINDIR, then PATH, then the newest
   ``/usr/lib/postgresql/*/bin`` (Debian's ``postgresql`` package);
2. PostgreSQL refuses to run as root: as root, run the server as the ``postgres`` user (created
   by the Debian package; ``nobody`` otherwise) in a fresh temp dir owned by that user;
3. ``initdb`` a cluster with trust authentication on local connections only (superuser
   ``xai``, UTF8, C locale), pick a free loopback port, ``pg_ctl start -w`` with the socket in the
   temp dir and ``listen_addresses=127.0.0.1``; ``fast=True`` turns fsync off (tests; the
   benchmark keeps PostgreSQL's durable defaults);
4. ``create_database()`` makes a fresh database per test and returns its SQLAlchemy URL
   (``postgresql+psycopg://xai@127.0.0.1:PORT/NAME``);
5. ``stop()`` stops the server (``pg_ctl stop -m immediate``) and deletes the directory.
``shared()`` starts one server per process (stopped at exit) unless $HARNESS_XAI_TEST_PG_URL
names an existing server to use instead.

Run ``python -m harness_xai.store.pgtemp`` to start one by hand (prints its URL, stops on Enter).
"""

from __future__ import annotations

import atexit
import glob
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path

ENV_URL = "HARNESS_XAI_TEST_PG_URL"


def _bindir() -> Path:
    if os.environ.get("PG_BINDIR"):
        return Path(os.environ["PG_BINDIR"])
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(found).resolve().parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    if not candidates:
        raise RuntimeError("PostgreSQL server binaries not found: install the Debian package "
                           "`postgresql` (make test does) or set PG_BINDIR")
    return Path(candidates[-1]).parent


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class TempPostgres:
    """A PostgreSQL cluster in a temp dir, owned by a non-root user, on 127.0.0.1."""

    def __init__(self, *, fast: bool = True) -> None:
        self.fast = fast
        self.dir: Path | None = None
        self.port: int | None = None
        self._user: str | None = None
        self._uid: int | None = None
        self._gid: int | None = None

    def _run(self, *args: str) -> None:
        kwargs = {}
        if self._uid is not None:
            kwargs = {"user": self._uid, "group": self._gid, "extra_groups": []}
        proc = subprocess.run(list(args), capture_output=True, text=True, cwd=self.dir, **kwargs)
        if proc.returncode != 0:
            raise RuntimeError(f"{Path(args[0]).name} failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}")

    def start(self) -> TempPostgres:
        bindir = _bindir()
        root = os.geteuid() == 0  # the server user must reach the dir: /tmp, not root's $TMPDIR
        self.dir = Path(tempfile.mkdtemp(prefix="harness-xai-pg-", dir="/tmp" if root else None))
        if root:
            for name in ("postgres", "nobody"):
                try:
                    entry = pwd.getpwnam(name)
                except KeyError:
                    continue
                self._user, self._uid, self._gid = name, entry.pw_uid, entry.pw_gid
                break
            else:
                raise RuntimeError("running as root and no 'postgres' or 'nobody' user to run PostgreSQL as")
            os.chown(self.dir, self._uid, self._gid)
        data = self.dir / "data"
        self._run(str(bindir / "initdb"), "-D", str(data), "-U", "xai", "--auth=trust", "-E", "UTF8",
                  "--no-locale", "--no-sync")
        options = ["-c listen_addresses=127.0.0.1", f"-c unix_socket_directories={self.dir}"]
        if self.fast:
            options += ["-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off"]
        last_error: Exception | None = None
        for _ in range(3):  # a port taken between probing and binding: try another
            self.port = _free_port()
            try:
                self._run(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(self.dir / "server.log"), "-w",
                          "-t", "60", "-o", " ".join(options + [f"-p {self.port}"]), "start")
                return self
            except RuntimeError as exc:
                last_error = exc
        self.stop()
        raise RuntimeError(f"could not start PostgreSQL: {last_error}")

    @property
    def base_url(self) -> str:
        return f"postgresql+psycopg://xai@127.0.0.1:{self.port}"

    def create_database(self, name: str | None = None) -> str:
        """A new empty database; returns its URL."""
        return create_database(f"{self.base_url}/postgres", name)

    def stop(self) -> None:
        if self.dir is None:
            return
        data = self.dir / "data"
        if (data / "postmaster.pid").exists():
            try:
                self._run(str(_bindir() / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
            except RuntimeError:
                pass
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir = None


def create_database(admin_url: str, name: str | None = None) -> str:
    """CREATE DATABASE on the server of ``admin_url``; returns the new database's URL."""
    import psycopg
    import sqlalchemy as sa

    name = name or f"t_{uuid.uuid4().hex[:12]}"
    if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", name):
        raise ValueError(f"bad database name {name!r}")
    url = sa.engine.make_url(admin_url)
    conninfo = url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')  # name checked above
    return url.set(database=name).render_as_string(hide_password=False)


_SHARED: TempPostgres | None = None


def shared_admin_url() -> str:
    """Admin URL of the process-wide test server ($HARNESS_XAI_TEST_PG_URL or a TempPostgres)."""
    global _SHARED
    if os.environ.get(ENV_URL):
        return os.environ[ENV_URL]
    if _SHARED is None:
        _SHARED = TempPostgres(fast=True).start()
        atexit.register(_SHARED.stop)
    return f"{_SHARED.base_url}/postgres"


def fresh_database_url() -> str:
    """A new empty database on the shared test server."""
    return create_database(shared_admin_url())


if __name__ == "__main__":
    server = TempPostgres(fast=False).start()
    try:
        print(f"{server.base_url}/postgres  (data in {server.dir}); press Enter to stop", flush=True)
        input()
    finally:
        server.stop()
