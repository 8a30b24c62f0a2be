"""The result store: open (and migrate) a database, write runs, task summaries and cases.

``Store.open``:
1. normalize the URL; a missing file with ``create=False`` → UserError naming the path;
2. take the writer lock: SQLite files get an exclusive ``flock`` (lock.py); DuckDB locks its file
   itself on connect. A second writer is refused at once with the path and the holder's pid;
3. connect and classify the schema (store/migrate.py): empty → alembic upgrade to head (only if
   ``create``); behind head → UserError naming ``harness-xai db upgrade --db URL``; unknown
   revision or foreign tables → UserError. A file created by a failed open is removed again.
   DuckDB files are migrated on a checkpointed copy renamed into place (duckfile.py: DuckDB 1.5
   cannot replay a WAL holding the migration's ALTER TABLE after a crash).

``Store.write_task_summaries`` replaces, in ONE transaction, the ``task_results`` row and all
``doc_outcomes`` rows of each given (run, task): delete them, insert the new ones (outcomes through
the bulk path, bulk.py). Outcomes are checked first (no duplicate (doc_id, doc_hash, filter),
correct in {0, 1, None}); an identical re-run writes identical rows.

``Store.write_case`` writes one case in ONE transaction:
1. validate every array's shape before touching the database (caserows.validate_case);
2. return the existing id if the unit key (run, task, doc_id, doc_hash, filter) is stored;
3. insert the ``cases`` row (its presence is the case's "done" mark), then the child rows of
   every array the record carries (tokens with segments and evidence marks, layers, states,
   heads, faithfulness curve, graph summary/nodes/edges, analysis metrics and triage labels)
   through each backend's bulk path (bulk.py: DuckDB from
   Arrow with a checked insert in place of the relevance tables' keys, revision 0009; PostgreSQL
   binary COPY; SQLite executemany);
4. commit. Any failure rolls the whole case back, so a killed or failed run leaves either the
   complete case or nothing, and a re-run attributes exactly the missing cases.
Several writers may share one PostgreSQL store: schema checks/migrations are serialized by an
advisory lock, and a writer that finds the same run key or unit key stored first by another
(the insert fails on the unique key) returns the stored id.
"""

from __future__ import annotations

import datetime as _dt
import json

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from harness_xai.errors import UserError
from harness_xai.records import Case, DocOutcome, Explanation, RunRecord, TaskSummary
from harness_xai.store import bulk, duckfile, migrate
from harness_xai.store.caserows import (CaseRow, _py, case_row, case_values, child_rows, opt_float,
                                       opt_int, validate_case)
from harness_xai.store.engine import (db_file, disk_full, display_url, make_engine, normalize_url,
                                     open_error, remove_new_file)
from harness_xai.store.lock import DirectoryLock, WriterLock
from harness_xai.store.models import cases, doc_outcomes, runs, task_results
from harness_xai.store.names import short_model_name


#: PostgreSQL advisory lock held while a writer checks / migrates the schema ("hxai" in ASCII)
MIGRATION_LOCK_KEY = 0x68786169


def _utc_naive(ts: _dt.datetime | None) -> _dt.datetime | None:
    """Timestamps are stored as naive UTC (portable TIMESTAMP)."""
    if ts is None or ts.tzinfo is None:
        return ts
    return ts.astimezone(_dt.timezone.utc).replace(tzinfo=None)


def migrate_or_refuse(conn: Connection, url: str, *, create: bool, upgrade: bool = False,
                 init: bool = False) -> migrate.SchemaState:
    """Migrate in place (one transaction) if needed, or refuse; returns the state found before."""
    with conn.begin():
        if conn.dialect.name == "postgresql":  # concurrent writers: one migrates, the others wait
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
        state = migrate.schema_state(conn)
        if migrate.needs_migration(state, url, create=create, upgrade=upgrade, init=init):
            migrate.upgrade(conn, "head")
    return state


class Store:
    """A harness-xai result database (DuckDB, SQLite or PostgreSQL) at the current schema."""

    def __init__(self, url: str, engine: Engine, lock: WriterLock | None = None) -> None:
        self.url = url
        self.engine = engine
        self._lock = lock
        self.run_id: int | None = None  # the last run ensure_run returned (run summaries, faults)
        self.cases_written = 0  # cases this Store inserted (not those found stored)

    # -- opening -----------------------------------------------------------------------------
    @classmethod
    def open(cls, db: str, *, create: bool = True, init: bool = False) -> Store:
        """Open ``db`` (path or URL); create and migrate a new/empty one when ``create``;
        ``init``: also add the schema to another program's (non-empty) database."""
        url = normalize_url(db)
        engine, lock, _ = open_for_writing(url, create=create, init=init)
        return cls(url, engine, lock)

    def close(self) -> None:
        """Release the database (DuckDB keeps the file locked until the engine is disposed)."""
        self.engine.dispose()
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- writing -----------------------------------------------------------------------------
    def ensure_run(self, run: RunRecord) -> int:
        """Id of the run with ``run.run_key``, inserting the run row if it is new."""
        select = sa.select(runs.c.id).where(runs.c.run_key == run.run_key)
        values = {
            "run_key": run.run_key,
            "created_at": _utc_naive(run.created_at),
            "model": run.model,
            "model_args": run.model_args,
            "pretrained": run.pretrained,
            "revision": run.revision,
            "model_type": run.model_type,
            "n_params": opt_int(run.n_params),
            "tasks": json.dumps(list(run.tasks)),
            "method": run.method,
            "lm_eval_version": run.lm_eval_version,
            "harness_xai_version": run.harness_xai_version,
            "config": json.dumps(run.config, sort_keys=True, default=str),
            "step": opt_int(getattr(run, "step", None)),
            "model_name": getattr(run, "model_name", None)
            or short_model_name(run.pretrained or run.model),
        }
        try:
            with self.engine.begin() as conn:
                existing = conn.execute(select).scalar()
                if existing is None:
                    existing = conn.execute(sa.insert(runs).values(values)).inserted_primary_key[0]
        except sa.exc.IntegrityError:  # another writer inserted the same run key meanwhile
            with self.engine.connect() as conn:
                existing = conn.execute(select).scalar()
            if existing is None:
                raise
        self.run_id = int(existing)
        return self.run_id

    def case_count(self, run_id: int) -> int:
        """Cases stored for ``run_id``."""
        stmt = sa.select(sa.func.count()).select_from(cases).where(cases.c.run_id == int(run_id))
        with self.engine.connect() as conn:
            return int(conn.execute(stmt).scalar())

    def write_task_summaries(self, run_id: int, items: list[TaskSummary]) -> None:
        """Insert or replace the task_results and doc_outcomes rows of ``run_id`` for the given
        tasks (one transaction; a task's previous outcome rows are all replaced)."""
        if not items:
            return
        outcomes = [(item.task, outcome_columns(int(run_id), item.task, item.outcomes))
                    for item in items]  # validated before anything is written
        rows = [
            {
                "run_id": int(run_id),
                "task": item.task,
                "metric": item.metric,
                "value": opt_float(_py(item.value)),
                "n_samples": opt_int(item.n_samples),
                "n_incorrect": opt_int(item.n_incorrect),
                "output_type": item.output_type,
            }
            for item in items
        ]
        tasks = [r["task"] for r in rows]
        with self.engine.begin() as conn:
            for table in (task_results, doc_outcomes):
                conn.execute(sa.delete(table).where(table.c.run_id == int(run_id), table.c.task.in_(tasks)))
            conn.execute(sa.insert(task_results), rows)
            for _, columns in outcomes:
                bulk.insert_columns(conn, doc_outcomes, columns)

    def done_keys(self, run_id: int) -> set[tuple[str, int, str, str]]:
        """Unit keys (task, doc_id, doc_hash, filter) of the cases stored for ``run_id``."""
        stmt = sa.select(cases.c.task, cases.c.doc_id, cases.c.doc_hash, cases.c.filter).where(
            cases.c.run_id == int(run_id)
        )
        with self.engine.connect() as conn:
            return {(t, int(d), h, f) for t, d, h, f in conn.execute(stmt)}

    def _existing_case(self, conn: Connection, run_id: int, case: CaseRow) -> int | None:
        task, doc_id, doc_hash, filter_ = case.unit_key
        found = conn.execute(
            sa.select(cases.c.id).where(
                cases.c.run_id == int(run_id),
                cases.c.task == task,
                cases.c.doc_id == int(doc_id),
                cases.c.doc_hash == doc_hash,
                cases.c.filter == filter_,
            )
        ).scalar()
        return None if found is None else int(found)

    def write_case(self, run_id: int, case: Case | CaseRow,
                   explanation: Explanation | None = None) -> int:
        """Write the case row (``explanation``: what was computed for it; None for a skipped
        case) and all its relevance rows in one transaction; returns cases.id."""
        case = case_row(case, explanation)
        validate_case(case)
        try:
            with self.engine.begin() as conn:
                existing = self._existing_case(conn, run_id, case)
                if existing is not None:
                    return existing
                case_id = int(conn.execute(sa.insert(cases).values(case_values(run_id, case))).inserted_primary_key[0])
                for table, columns in child_rows(case_id, case):
                    bulk.insert_columns(conn, table, columns)
            self.cases_written += 1
            return case_id
        except sa.exc.IntegrityError:  # a concurrent writer may have stored this unit key first
            with self.engine.connect() as conn:
                existing = self._existing_case(conn, run_id, case)
            if existing is None:
                raise
            return existing


    def write_cases(self, run_id: int, pairs: list[tuple[Case | CaseRow, Explanation | None]]
                    ) -> list[int]:
        """``write_case`` for several cases in ONE transaction (steps 1–4 per case; each child
        table gets one bulk insert for all of them): the per-case commit and statement costs
        dominate short cases. A concurrent writer's key → one case at a time, as ``write_case``."""
        rows = [case_row(c, e) for c, e in pairs]
        for row in rows:
            validate_case(row)
        try:
            ids, per_table, new = [], {}, 0
            with self.engine.begin() as conn:
                for row in rows:
                    existing = self._existing_case(conn, run_id, row)
                    if existing is not None:
                        ids.append(existing)
                        continue
                    case_id = int(conn.execute(sa.insert(cases).values(
                        case_values(run_id, row))).inserted_primary_key[0])
                    ids.append(case_id)
                    new += 1
                    for table, columns in child_rows(case_id, row):
                        per_table.setdefault(table.name, (table, []))[1].append(columns)
                for table, parts in per_table.values():
                    bulk.insert_columns(conn, table, bulk.concat_columns(table, parts))
            self.cases_written += new
            return ids
        except sa.exc.IntegrityError:
            return [self.write_case(run_id, c, e) for c, e in pairs]


def outcome_columns(run_id: int, task: str, outcomes: list[DocOutcome]) -> dict:
    """Column-wise ``doc_outcomes`` rows of one task (bulk.insert_columns input); ValueError on
    a repeated (doc_id, doc_hash, filter) or a ``correct`` outside {0, 1, None}."""
    keys = [(int(o.doc_id), str(o.doc_hash), str(o.filter)) for o in outcomes]
    if len(set(keys)) != len(keys):
        seen: set = set()
        dup = next(k for k in keys if k in seen or seen.add(k))
        raise ValueError(f"task {task!r}: outcome of (doc_id, doc_hash, filter) {dup} given twice")
    correct = [opt_int(_py(o.correct)) for o in outcomes]
    if not set(correct) <= {0, 1, None}:
        raise ValueError(f"task {task!r}: correct must be 1, 0 or None, got {set(correct) - {0, 1, None}}")
    return {
        "run_id": run_id,
        "task": task,
        "doc_id": [k[0] for k in keys],
        "doc_hash": [k[1] for k in keys],
        "filter": [k[2] for k in keys],
        "metric": [o.metric for o in outcomes],
        "value": [opt_float(_py(o.value)) for o in outcomes],
        "correct": correct,
    }


def open_for_writing(
    url: str, *, create: bool, upgrade: bool = False, init: bool = False
) -> tuple[Engine, WriterLock | None, migrate.SchemaState]:
    """Lock (SQLite files), connect and check/migrate the schema; nothing is left behind on failure.

    ``create``: a missing file / empty database is created and migrated to head; ``upgrade``: a
    database behind head is migrated too (``harness-xai db upgrade``) instead of refused;
    ``init``: another program's database gets the harness-xai tables too (else refused untouched).
    DuckDB files are migrated on a copy that replaces the file when complete (duckfile.py). Files
    are created and opened under the folder's DirectoryLock (lock.py): a file is removed after a
    failure only by the process that created it, before anyone else could open it.
    """
    path = db_file(url)
    try:
        return _open(url, path, create=create, upgrade=upgrade, init=init)
    except UserError:
        raise
    except Exception as exc:
        if not disk_full(exc):
            raise
        where = path or display_url(url)
        raise UserError(f"disk full while creating/opening the store {where}: nothing was written "
                        "(a partial copy is removed): free space and re-run") from None


def _open(url: str, path, *, create: bool, upgrade: bool, init: bool
          ) -> tuple[Engine, WriterLock | None, migrate.SchemaState]:
    if path is not None and sa.engine.make_url(url).get_backend_name() == "duckdb":
        return duckfile.open_duckdb_file(url, path, create=create, upgrade=upgrade, init=init)
    if path is None:
        return _open_locked(url, None, create=create, upgrade=upgrade, init=init)
    if not path.exists() and not create:
        raise UserError(f"database file not found: {path} (check --db)")
    path.parent.mkdir(parents=True, exist_ok=True)
    with DirectoryLock(path.parent):
        return _open_locked(url, path, create=create, upgrade=upgrade, init=init)


def _open_locked(url: str, path, *, create: bool, upgrade: bool, init: bool
                 ) -> tuple[Engine, WriterLock | None, migrate.SchemaState]:
    created = False
    if path is not None and not path.exists():
        if not create:
            raise UserError(f"database file not found: {path} (check --db)")
        created = True
    lock = None
    engine = None
    try:
        if path is not None:
            lock = WriterLock.acquire(path)
        engine = make_engine(url)
        try:
            conn = engine.connect()
        except sa.exc.DBAPIError as exc:
            raise open_error(url, exc) from None
        with conn:
            try:
                state = migrate_or_refuse(conn, url, create=create, upgrade=upgrade, init=init)
            except sa.exc.DBAPIError as exc:  # e.g. "file is not a database"
                raise open_error(url, exc) from None
    except BaseException:
        if engine is not None:
            engine.dispose()
        if created and lock is not None:  # ours, and nobody else could open it (folder lock)
            remove_new_file(path)
        if lock is not None:
            lock.release()
        raise
    return engine, lock, state
