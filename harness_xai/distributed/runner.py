"""Attribute a run's pending cases — on one process or sharded over the ranks of a launch.

``explain_cases`` (rank 0, inside ``pipeline.explain``; the store is open):
1. Merge shard files a rank of an earlier, killed run of the same run left behind (file stores),
   so finished work is kept; then drop the cases whose unit key is stored.
2. Apply the budget (``plan.plan_cases``): write the skipped cases, cut to ``max_cases``.
3. One process: attribute every case, writing each to the store as soon as it is done.
   Several ranks: split the cases by token count (``plan.balance``) and send each rank its share
   with the run id, the method, the budget and where to write (``World.scatter``). Every rank
   checks it can write there (shard directory visible: same machine or a shared file system)
   and all agree (``all_gather``) before anyone starts. Rank 0 writes into the open store; the
   others write PostgreSQL directly (it has many writers) or, for DuckDB/SQLite (one writer),
   append to their own shard file (``shards.ShardWriter``).
4. Each rank: ``work`` — its cases in passes (``plan.passes``: cases of similar length share the
   engine's one forward+backward), progress bar with ETA per rank
   (tqdm, ``position=rank``, measured in tokens since cost grows with them), stopping when the
   time budget is spent. An error stops the rank's loop; it is reported, not raised, so the
   other ranks finish cleanly.
5. Outcomes gathered on rank 0 (``World.gather``); rank 0 merges the shard files into the store
   (``shards.merge_shards``: one transaction per case, idempotent unit keys), then raises the
   first rank's error if there was one.
``follow`` is steps 3–4 on the other ranks; they return nothing (rank 0 reports the run).
A case the time budget did not reach is never written: a re-run attributes exactly those.
"""

from __future__ import annotations

import contextlib
import sys
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from harness_xai.distributed import shards
from harness_xai.distributed.plan import (Budget, balance, case_cost, passes, plan_cases,
                                          resolve_batch_size)
from harness_xai.distributed.world import World
from harness_xai.errors import UserError
from harness_xai.records import SKIPPED, Case, Explained, Explanation

clock = time.monotonic  # the time budget's clock (tests replace it)


@dataclass
class CaseWorker:
    """How a rank explains its pending cases (built by the pipeline from the run's config).

    ``explain(cases)`` returns one ``Explanation`` per case of one pass group (the engine's
    forward+backward; the pipeline decides which cases share a pass); ``finish(done)`` runs on
    each group of up to ``group`` explained cases before they are written and returns them
    completed (e.g. batched faithfulness curves, then each case's analysis).
    """

    explain: Callable[[list[Case]], list[Explanation]]
    finish: Callable[[list[Explained]], list[Explained]] | None = None
    group: int = 1
    #: ``--xai-batch-size auto``: n_max → the rows one pass may hold (``memory.fitter``);
    #: None: the model cannot share passes, one case each
    rows_for: Callable[[int], int] | None = None
    on_cuda: bool = False  # the option's default is ``auto`` there


#: rank → CaseWorker, built on each rank from the options rank 0 sends (pipeline side)
MakeWorker = Callable[[dict], CaseWorker]


@dataclass
class Outcome:
    """What ``explain_cases`` did (summed over ranks)."""

    attributed: int = 0
    already_stored: int = 0
    left: int = 0  # pending cases not attributed this run (budget); not written
    skipped: Counter = field(default_factory=Counter)  # skip reason → count (all cases)
    per_rank: list[int] = field(default_factory=list)  # attributed per rank (several ranks)


@dataclass
class _Work:
    """One rank's result (sent to rank 0)."""

    rank: int
    attributed: int = 0
    left: int = 0
    shard: str | None = None
    error: str | None = None
    exc: BaseException | None = field(default=None, repr=False)  # stays on its own rank


def explain_cases(store, run_id: int, cases: list[Case], make_worker: MakeWorker,
                    options: dict, *, budget: Budget | None = None, world: World | None = None,
                    progress: bool = True) -> Outcome:
    """Steps 1–5 on rank 0 (module docstring); ``cases``: every case of the run; ``options``
    (picklable: method, …) are sent to every rank, where ``make_worker(options)`` builds the
    ``CaseWorker`` — rank 0 included, so all ranks attribute the same way."""
    budget = budget or Budget()
    world = world or World()
    directory = _shard_dir(store.url)
    leftovers = shards.leftover_shards(directory, run_id)
    if leftovers:
        shards.merge_shards(store, run_id, leftovers)
        with contextlib.suppress(OSError):
            directory.rmdir()  # type: ignore[union-attr]
    done = store.done_keys(run_id)
    todo = [c for c in cases if c.unit_key not in done]
    outcome = Outcome(already_stored=len(cases) - len(todo))
    outcome.skipped.update(c.skip_reason for c in cases
                           if c.status == SKIPPED and c.unit_key in done)
    plan = plan_cases(todo, budget)
    for case in plan.write:
        store.write_case(run_id, case, None)
        outcome.skipped[case.skip_reason] += 1
    outcome.left = plan.left
    if world.size == 1:
        mine = work(plan.attribute, make_worker(options), budget,
                    lambda c, e: store.write_case(run_id, c, e), rank=0, progress=progress,
                    write_many=lambda pairs: store.write_cases(run_id, pairs))
        if mine.exc is not None:
            raise mine.exc
        outcome.attributed, outcome.left = mine.attributed, outcome.left + mine.left
        return outcome

    shares = balance([case_cost(c) for c in plan.attribute], world.size)
    nonce = uuid.uuid4().hex[:12]
    header = {"run_id": run_id, "options": options, "budget": budget, "nonce": nonce,
              "url": store.url if directory is None and _is_server(store.url) else None,
              "shard_dir": None if directory is None else str(directory)}
    if directory is None and not _is_server(store.url):
        header["shard_dir"] = str(_temp_shard_dir(nonce))
    if header["shard_dir"]:
        Path(header["shard_dir"]).mkdir(parents=True, exist_ok=True)
    world.plan_sent = True
    world.scatter([(header, [plan.attribute[i] for i in share]) for share in shares])
    _agree(world, header)
    try:
        worker = make_worker(options)
    except Exception as exc:  # noqa: BLE001 — the other ranks still wait for the outcomes
        mine = _Work(rank=0, left=len(shares[0]), error=_describe(exc), exc=exc)
    else:
        mine = work([plan.attribute[i] for i in shares[0]], worker, budget,
                    lambda c, e: store.write_case(run_id, c, e), rank=0, progress=progress)
    reports: list[_Work] = world.gather(_sendable(mine))  # type: ignore[assignment]
    files = {Path(r.shard) for r in reports if r.shard}
    if header["shard_dir"]:  # also the file of a rank that failed half-way
        files |= set(shards.leftover_shards(Path(header["shard_dir"]), run_id))
    shards.merge_shards(store, run_id, sorted(f for f in files if f.exists()))
    if header["shard_dir"]:
        with contextlib.suppress(OSError):  # not empty: files of another run stay
            Path(header["shard_dir"]).rmdir()
    outcome.attributed = sum(r.attributed for r in reports)
    outcome.left += sum(r.left for r in reports)
    outcome.per_rank = [r.attributed for r in reports]
    if mine.exc is not None:  # rank 0's own error, as it was raised
        raise mine.exc
    failed = [r for r in reports if r.error]
    if failed:
        raise RuntimeError(f"attribution failed on rank {failed[0].rank}: {failed[0].error} "
                           f"(finished cases are stored; re-run to resume)")
    return outcome


def follow(world: World, make_worker: MakeWorker, *, progress: bool = True) -> None:
    """Steps 3–4 on a rank other than 0: receive a share, attribute it, report back."""
    if world.size == 1:
        return
    message = world.scatter(None)
    if message is None:  # rank 0 failed before planning; it reports the error
        return
    header, cases = message
    if not _agree(world, header):
        return
    budget: Budget = header["budget"]
    try:
        worker = make_worker(header["options"])
        if header["url"]:
            from harness_xai.store import Store

            with Store.open(header["url"], create=False) as store:
                mine = work(cases, worker, budget,
                            lambda c, e: store.write_case(header["run_id"], c, e), world.rank,
                            progress)
        else:
            path = shards.shard_path(Path(header["shard_dir"]), header["run_id"], world.rank,
                                     header["nonce"])
            with shards.ShardWriter(path, header["run_id"], world.rank) as writer:
                mine = work(cases, worker, budget, writer.write_case, world.rank, progress)
            mine.shard = str(path)
    except Exception as exc:  # noqa: BLE001 — setting up failed: report instead of hanging rank 0
        mine = _Work(rank=world.rank, left=len(cases), error=_describe(exc))
    world.gather(_sendable(mine))
    if mine.error:
        print(f"harness-xai: rank {world.rank}: attribution failed: {mine.error}",
              file=sys.stderr, flush=True)


#: explained cases written per transaction when the writer takes several (``write_many``): at
#: most WRITE_BATCH, and no case waits longer than WRITE_SECONDS (a kill loses at most that work)
WRITE_BATCH, WRITE_SECONDS = 16, 0.25


def work(cases: list[Case], worker: CaseWorker, budget: Budget,
         write: Callable[[Case, Explanation | None], object], rank: int = 0,
         progress: bool = True,
         write_many: Callable[[list[Explained]], object] | None = None) -> _Work:
    """Explain ``cases`` (one rank's share) and ``write`` each — or ``write_many`` up to
    ``WRITE_BATCH`` at a time, in one transaction, and the rest at the end or on an error;
    stop at the time budget."""
    from tqdm.auto import tqdm

    result = _Work(rank=rank)
    written = 0
    groups = passes([len(c.token_ids) for c in cases],
                    resolve_batch_size(budget.batch_size, worker.on_cuda),
                    rows_for=worker.rows_for)
    total = sum(len(c.token_ids) for c in cases)
    # smoothing=0: the ETA uses the average rate since the start (converges; a moving average
    # swings with every long or short case)
    bar = tqdm(total=total, unit="tok", unit_scale=total >= 10_000, smoothing=0,
               position=rank, file=sys.stderr, desc=f"attributing (rank {rank})",
               disable=not progress, leave=True, dynamic_ncols=True)
    start = clock()
    ready: list[Explained] = []  # explained, waiting for ``finish`` and the write

    explained = 0  # shown by the bar (written: ``result.attributed``)
    pending: list[Explained] = []  # finished, waiting for ``write_many``
    last_write = [time.monotonic()]  # not ``clock``: that one is the time budget's

    def flush(final: bool = False) -> None:
        nonlocal written, ready
        if ready and worker.finish is not None:
            ready = worker.finish(ready)
        if write_many is not None:
            pending.extend(ready)
            ready = []
            if pending and (final or len(pending) >= WRITE_BATCH
                            or time.monotonic() - last_write[0] >= WRITE_SECONDS):
                write_many(list(pending))
                last_write[0] = time.monotonic()
                written += len(pending)
                result.attributed += sum(e is not None for _, e in pending)
                pending.clear()
            return
        while ready:
            case, explanation = ready.pop(0)
            write(case, explanation)
            written += 1
            result.attributed += explanation is not None

    try:
        for indices in groups:
            if budget.seconds is not None and clock() - start >= budget.seconds:
                break
            group = [cases[i] for i in indices]
            for case, explanation in zip(group, worker.explain(group)):
                ready.append((case, explanation))
                explained += explanation is not None
                bar.update(len(case.token_ids))
                if len(ready) >= worker.group:
                    flush()
                    bar.set_postfix_str(f"{explained}/{len(cases)} cases", refresh=False)
        flush(final=True)
        bar.set_postfix_str(f"{result.attributed}/{len(cases)} cases", refresh=False)
    except KeyboardInterrupt:  # Ctrl-C: the explained cases are kept, then the run stops
        with contextlib.suppress(Exception):
            flush(final=True)
        raise
    except Exception as exc:  # noqa: BLE001 — reported to rank 0, which raises it
        result.error, result.exc = _describe(exc), exc
        try:  # cases explained before the error are kept
            flush(final=True)
        except Exception:  # noqa: BLE001
            pass
    finally:
        bar.close()
    result.left = len(cases) - written
    return result


def _describe(exc: BaseException) -> str:
    return "".join(traceback.format_exception_only(type(exc), exc)).strip()


def _agree(world: World, header: dict) -> bool:
    """Every rank can write where the plan says; False on all ranks (rank 0 raises) if not."""
    problem = None
    if header.get("shard_dir") and not Path(header["shard_dir"]).is_dir():
        problem = (f"rank {world.rank} cannot see the shard directory {header['shard_dir']} "
                   f"(ranks on several machines need the store on a shared file system, or "
                   f"--xai-db postgresql://…)")
    problems = [p for p in world.all_gather(problem) if p]
    if problems and world.leader:
        raise UserError(problems[0])
    return not problems


def _sendable(work_result: _Work) -> _Work:
    return _Work(rank=work_result.rank, attributed=work_result.attributed,
                 left=work_result.left, shard=work_result.shard, error=work_result.error)


def _shard_dir(url: str) -> Path | None:
    from harness_xai.store.engine import db_file

    path = db_file(url)
    return None if path is None else shards.shard_dir(path)


def _is_server(url: str) -> bool:
    from sqlalchemy.engine import make_url

    return make_url(url).get_backend_name() == "postgresql"


def _temp_shard_dir(nonce: str) -> Path:
    import tempfile

    return Path(tempfile.gettempdir()) / f"harness-xai-shards-{nonce}"
