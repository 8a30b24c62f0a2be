"""Faults of the store as a hostile user meets them (issue 18): concurrent creation of one new
store, another program's database, a second writer, stale temporary files, corrupt files,
relative URLs, disk full (a real small tmpfs, and ENOSPC faked at the write call). Each refusal
is one line; nothing committed is ever lost; a refused database is byte-for-byte unchanged.
The lm-eval side (run-time faults through `harness-xai run`) is tests/test_run_faults.py."""

from __future__ import annotations

import errno
import hashlib
import multiprocessing as mp
import os
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import pytest
import sqlalchemy as sa

from harness_xai.cli import main as cli_main
from harness_xai.errors import UserError
from harness_xai.store import Store, bulk, run_sql
from harness_xai.store.engine import normalize_url
from harness_xai.store.lock import command_words
from harness_xai.store.preflight import Interrupted, check_destination, preflight
from test_store_support import FILE_BACKENDS, integrity_problems, make_case, make_run
from tmpfs import remount, tmpfs

REPETITIONS = 20


def _consistent(url: str) -> list[str]:
    """integrity_problems without the pipeline's rule that cases follow their task's outcomes
    (these tests write cases directly, no task summaries)."""
    return [p for p in integrity_problems(url) if p != "case without a doc_outcomes row"]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("harness-xai: "), err
    assert "Traceback" not in err
    return lines[0]


# -- two processes create the same new store at once -------------------------------------------
def _race_worker(name: str, folder: str, suffix: str, barrier, results) -> None:
    """Each repetition: wait at the barrier, then create-or-open r<i>, write run <name>."""
    for i in range(REPETITIONS):
        barrier.wait()
        db = os.path.join(folder, f"r{i}.{suffix}")
        try:
            with Store.open(db) as store:
                store.ensure_run(make_run(key=f"{name}-{i}"))
            results.put((i, name, "wrote"))
        except UserError as err:
            results.put((i, name, f"refused: {err}"))
        except Exception as err:  # noqa: BLE001 - reported to the test, which fails on it
            results.put((i, name, f"ERROR {type(err).__name__}: {err}"))


@pytest.mark.parametrize("suffix", FILE_BACKENDS)
def test_concurrent_creation_loses_nothing(suffix: str, tmp_path: Path) -> None:
    """Two processes, a barrier, 20 new stores: every run reported as written is there after."""
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    workers = [ctx.Process(target=_race_worker, args=(n, str(tmp_path), suffix, barrier, results))
               for n in ("A", "B")]
    for w in workers:
        w.start()
    outcomes = [results.get(timeout=300) for _ in range(2 * REPETITIONS)]
    for w in workers:
        w.join(timeout=60)
    errors = [o for o in outcomes if o[2].startswith("ERROR")]
    assert errors == []
    wrote = sorted((i, name) for i, name, what in outcomes if what == "wrote")
    for i, name, what in outcomes:
        if what != "wrote":
            assert "in use by another process" in what, what  # a clean refusal, naming the holder
    assert {i for i, _ in wrote} == set(range(REPETITIONS))  # one of the two always succeeds
    for i in range(REPETITIONS):
        stored = {k for (k,) in run_sql(str(tmp_path / f"r{i}.{suffix}"), "SELECT run_key FROM runs")[1]}
        assert stored == {f"{name}-{i}" for j, name in wrote if j == i}, i
    assert [p.name for p in tmp_path.iterdir() if ".migrating-" in p.name] == []


# -- another program's database ------------------------------------------------------------------
def _foreign(path: Path) -> None:
    if path.suffix == ".sqlite":
        import sqlite3
        conn = sqlite3.connect(path)
        conn.execute("CREATE TABLE accounts (id INTEGER PRIMARY KEY, owner TEXT)")
        conn.execute("CREATE VIEW owners AS SELECT owner FROM accounts")
        conn.execute("INSERT INTO accounts VALUES (1, 'alice')")
        conn.commit()
        conn.close()
    else:
        import duckdb
        conn = duckdb.connect(str(path))
        conn.execute("CREATE TABLE accounts (id INTEGER PRIMARY KEY, owner TEXT)")
        conn.execute("INSERT INTO accounts VALUES (1, 'alice')")
        conn.close()


@pytest.mark.parametrize("suffix", FILE_BACKENDS)
def test_foreign_database_is_refused_and_untouched(suffix: str, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / f"theirs.{suffix}"
    _foreign(path)
    before, names = _sha(path), sorted(p.name for p in tmp_path.iterdir())
    assert cli_main(["db", "upgrade", "--db", str(path)]) == 2
    line = _one_line(capsys.readouterr().err)
    assert "not a harness-xai database but another program's" in line and "accounts" in line and "--init" in line
    with pytest.raises(UserError, match="--xai-db-init"):
        Store.open(str(path))
    with pytest.raises(UserError, match="another program"):
        with preflight(normalize_url(str(path))):
            pass
    assert _sha(path) == before  # byte for byte
    assert sorted(p.name for p in tmp_path.iterdir()) == names  # no side file left either
    # asked for explicitly: the harness-xai tables are added, the other tables kept
    assert cli_main(["db", "upgrade", "--init", "--db", str(path)]) == 0
    with Store.open(str(path)) as store:
        store.ensure_run(make_run())
    assert run_sql(str(path), "SELECT count(*) FROM runs")[1] == [(1,)]
    engine = sa.create_engine(normalize_url(str(path)))
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT owner FROM accounts").all() == [("alice",)]
    engine.dispose()


def test_empty_files_are_still_created_as_stores(tmp_path: Path) -> None:
    (tmp_path / "empty.sqlite").write_bytes(b"")
    with Store.open(str(tmp_path / "empty.sqlite")) as store:
        assert store.ensure_run(make_run()) == 1


# -- a second writer ------------------------------------------------------------------------------
HOLDER = """\
import sys, time
from harness_xai.store.preflight import preflight
with preflight(sys.argv[-1]):
    print("ready", flush=True)
    time.sleep(60)
"""


@pytest.mark.parametrize("suffix", FILE_BACKENDS)
def test_second_writer_refused_at_once_naming_the_holder(suffix: str, tmp_path: Path) -> None:
    """The holder runs as `harness-xai run …` (a script of that name); the second writer is
    refused in < 5 s with the path, the holder's pid and its command — not the interpreter."""
    script = tmp_path / "harness-xai"
    script.write_text(HOLDER)
    url = normalize_url(str(tmp_path / f"busy.{suffix}"))
    holder = subprocess.Popen([sys.executable, str(script), "run", "--model", "hf", url],
                              stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        assert holder.stdout.readline().strip() == "ready"
        start = time.monotonic()
        with pytest.raises(UserError) as refused:
            with preflight(url):
                pass
        assert time.monotonic() - start < 5
        message = str(refused.value)
        assert str(tmp_path / f"busy.{suffix}") in message
        assert f"pid {holder.pid}: harness-xai run --model hf" in message, message
        assert sys.executable not in message
    finally:
        holder.kill()
        holder.wait()


def test_command_words() -> None:
    assert command_words(["/v/bin/python3", "/v/bin/harness-xai", "run", "--x"]) == ["harness-xai", "run", "--x"]
    assert command_words(["python", "-m", "harness_xai", "sweep"]) == ["harness-xai", "sweep"]
    assert command_words(["/usr/bin/other", "a"]) == ["/usr/bin/other", "a"]


# -- stale litter of killed processes ---------------------------------------------------------------
def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_temporary_files_of_dead_processes_are_removed(tmp_path: Path) -> None:
    sleeper = subprocess.Popen(["sleep", "60"])  # a live process that is not this one
    try:
        _stale_litter(tmp_path, _dead_pid(), sleeper.pid)
    finally:
        sleeper.kill()
        sleeper.wait()


def _stale_litter(tmp_path: Path, dead: int, alive: int) -> None:
    stale = [tmp_path / f".r.duckdb.migrating-{dead}", tmp_path / f".r.duckdb.migrating-{dead}.wal"]
    live = tmp_path / f".r.duckdb.migrating-{alive}"
    other = tmp_path / f".x.duckdb.migrating-{dead}"  # another store's: not this open's business
    for p in [*stale, live, other]:
        p.write_bytes(b"partial")
    Store.open(str(tmp_path / "r.duckdb")).close()
    assert [p.exists() for p in stale] == [False, False]
    assert live.exists() and other.exists()
    # report folders: a killed render's temporary folder and swapped-out old report
    reports = tmp_path / "reports"
    (reports / f".harness-xai-report-{dead}-abc").mkdir(parents=True)
    (reports / f".harness-xai-old-{dead}-abc" / "run-1").mkdir(parents=True)
    (reports / f".harness-xai-report-{alive}-abc").mkdir()
    check_destination(reports / "out", "--out")
    assert sorted(p.name for p in reports.iterdir()) == [f".harness-xai-report-{alive}-abc"]


# -- right words ------------------------------------------------------------------------------------
def test_corrupt_duckdb_is_not_called_in_use(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "corrupt.duckdb"
    Store.open(str(path)).close()
    data = bytearray(path.read_bytes())
    data[4096:] = b"\xab" * (len(data) - 4096)  # headers kept, every block garbage
    path.write_bytes(bytes(data))
    before = _sha(path)
    code = cli_main(["db", "upgrade", "--db", str(path)])
    line = _one_line(capsys.readouterr().err)
    assert code == 2 and "in use" not in line and "cannot open database" in line, line
    assert _sha(path) == before
    (tmp_path / "text.sqlite").write_text("not a database at all " * 100)
    assert cli_main(["db", "upgrade", "--db", str(tmp_path / "text.sqlite")]) == 2
    line = _one_line(capsys.readouterr().err)
    assert "not a database" in line and "in use" not in line


def test_relative_url_is_printed_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    assert normalize_url("duckdb:///data/x.duckdb") == f"duckdb:///{tmp_path}/data/x.duckdb"
    assert normalize_url("sqlite:///y.sqlite") == f"sqlite:///{tmp_path}/y.sqlite"
    assert normalize_url("duckdb:///:memory:") == "duckdb:///:memory:"
    assert cli_main(["db", "upgrade", "--db", "duckdb:///data/x.duckdb"]) == 0
    assert f"duckdb:///{tmp_path}/data/x.duckdb: upgraded" in capsys.readouterr().out


# -- destinations ---------------------------------------------------------------------------------
def test_export_refuses_a_foreign_non_empty_folder(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    db = str(tmp_path / "s.duckdb")
    Store.open(db).close()
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert cli_main(["export", "--db", db, "--out", str(out)]) == 2
    assert "non-empty directory" in _one_line(capsys.readouterr().err)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    (out / "notes.txt").unlink()
    assert cli_main(["export", "--db", db, "--out", str(out)]) == 0
    assert cli_main(["export", "--db", db, "--out", str(out)]) == 0  # a previous export is replaced


@pytest.fixture
def mounted(tmp_path: Path):
    """mount(options) → a fresh tmpfs folder, unmounted after the test (tests/tmpfs.py)."""
    with ExitStack() as stack:
        points = iter(range(1_000))
        yield lambda options: stack.enter_context(tmpfs(tmp_path / f"mnt{next(points)}", options))


def test_read_only_destinations_are_refused(tmp_path: Path, mounted, capsys: pytest.CaptureFixture) -> None:
    db = str(tmp_path / "s.duckdb")
    with Store.open(db) as store:
        store.write_case(store.ensure_run(make_run()), *make_case())
    before = _sha(Path(db))
    ro = mounted("ro,size=1m")
    for argv in (["report", "--db", db, "--out", str(ro / "report")],
                 ["export", "--db", db, "--out", str(ro / "export")]):
        assert cli_main(argv) == 2, argv
        line = _one_line(capsys.readouterr().err)
        assert "read-only file system" in line and str(ro) in line, line
    with pytest.raises(UserError, match="--xai-report .*read-only file system"):
        with preflight(normalize_url(db), report_dir=str(ro / "report")):
            raise AssertionError("the session must not start")
    assert _sha(Path(db)) == before


# -- disk full ------------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", FILE_BACKENDS)
def test_disk_full_on_a_small_tmpfs(suffix: str, mounted, capsys: pytest.CaptureFixture) -> None:
    """Creation on a too-small disk: one line, nothing left. Mid-run: one line saying how much
    was written, every stored case complete; after freeing space the same writes complete."""
    tiny = mounted("size=64k")
    assert cli_main(["db", "upgrade", "--db", str(tiny / f"s.{suffix}")]) == 2
    line = _one_line(capsys.readouterr().err)
    assert "disk full while creating" in line and "nothing was written" in line, line
    assert list(tiny.iterdir()) == []
    with pytest.raises(UserError, match="disk full") as full:
        with preflight(normalize_url(str(tiny / f"s.{suffix}"))):
            pass
    assert "nothing was written" in str(full.value)
    assert list(tiny.iterdir()) == []
    small = mounted("size=24m" if suffix == "duckdb" else "size=4m")  # DuckDB: 256 KiB blocks
    url = normalize_url(str(small / f"s.{suffix}"))
    written = 0
    with pytest.raises(UserError, match="disk full writing the store") as full:
        with preflight(url) as session:
            run_id = session.store.ensure_run(make_run())
            for doc in range(10_000):
                session.store.write_case(run_id, *make_case(doc_id=doc, n_tokens=100, n_layers=4, seed=doc))
                written += 1
    assert 0 < written < 10_000
    assert f"run {run_id}: {written} cases written by this process" in str(full.value)
    remount(small, "size=256m")
    assert _consistent(url) == []
    assert run_sql(url, "SELECT count(*) FROM cases")[1] == [(written,)]
    with Store.open(url) as store:  # the re-run continues where the disk filled up
        for doc in range(written, written + 5):
            store.write_case(run_id, *make_case(doc_id=doc, n_tokens=100, n_layers=4, seed=doc))
    assert run_sql(url, "SELECT count(*) FROM cases")[1] == [(written + 5,)]
    assert _consistent(url) == []


def test_enospc_faked_at_the_write_call(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = normalize_url(str(tmp_path / "s.duckdb"))
    real, calls = bulk.insert_columns, []

    def insert_columns(conn, table, columns):
        calls.append(table.name)
        if len(calls) == 25:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(conn, table, columns)

    monkeypatch.setattr(bulk, "insert_columns", insert_columns)
    written = 0
    with pytest.raises(UserError, match="disk full writing the store") as full:
        with preflight(url) as session:
            run_id = session.store.ensure_run(make_run())
            for doc in range(100):
                session.store.write_case(run_id, *make_case(doc_id=doc, seed=doc))
                written += 1
    assert str(tmp_path / "s.duckdb") in str(full.value)
    assert f"{written} cases written by this process, {written} stored in all" in str(full.value)
    assert _consistent(url) == [] and run_sql(url, "SELECT count(*) FROM cases")[1] == [(written,)]


def test_interrupt_in_a_session_says_what_is_stored(tmp_path: Path) -> None:
    url = normalize_url(str(tmp_path / "s.sqlite"))
    with pytest.raises(Interrupted) as stop:
        with preflight(url) as session:
            run_id = session.store.ensure_run(make_run())
            for doc in range(3):
                session.store.write_case(run_id, *make_case(doc_id=doc))
            raise KeyboardInterrupt
    assert stop.value.exit_code == 130
    assert f"run {run_id}: 3 cases written by this process, 3 stored in all" in str(stop.value)
    assert "re-run the same command to resume" in str(stop.value)


def test_a_new_store_is_removed_when_the_run_fails_before_writing(tmp_path: Path) -> None:
    path = tmp_path / "new.duckdb"
    with pytest.raises(IndexError):
        with preflight(normalize_url(str(path))):
            assert path.exists()  # opened (and locked) before the work
            raise IndexError("gold index out of range")
    assert list(tmp_path.iterdir()) == []
    Store.open(str(path)).close()  # an existing store is kept as it was
    before = _sha(path)
    with pytest.raises(Interrupted):
        with preflight(normalize_url(str(path))):
            raise KeyboardInterrupt
    assert _sha(path) == before
