"""Per-rank shard files for file stores (DuckDB/SQLite have one writer) and their merge.

A rank other than 0 cannot write a DuckDB/SQLite store that rank 0 holds open, so it appends
each finished case to its own shard file; rank 0 merges the files through the normal store API.

File format (``<db>.shards/run<ID>-rank<R>-<NONCE>.shard``): a sequence of frames
``[8-byte little-endian payload length][4-byte CRC32 of the payload][payload]``; the first
payload is a header dict ``{"format", "run_id", "rank"}``, every other one a pickled pair
(``Case``, ``Explanation``) (numpy arrays included).

1. ``ShardWriter``: creates the file, holds an exclusive ``flock`` on it while writing, and
   ``fsync``s after every case — a killed rank leaves whole cases plus at most one torn frame.
2. ``read_shard``: yields the cases of the complete, checksum-valid frames and stops at the first
   torn one. Unpickling only admits the record classes and numpy's array reconstruction (a
   restricted ``Unpickler``), nothing else.
3. ``merge_shards(store, run_id, paths)``: ``store.write_case`` for every case (its own
   transaction each; unit keys make it idempotent, so a merge interrupted half-way and redone
   writes each case exactly once), then deletes the file.
4. ``leftover_shards``: files of the same run that no live process holds (a rank that died in an
   earlier run): merged before a run decides what is still to do, so no finished work is lost.
"""

from __future__ import annotations

import fcntl
import io
import os
import pickle
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

from harness_xai.records import Case, Explained, Explanation

FORMAT = "harness-xai-shard/2"
_FRAME = struct.Struct("<QI")  # payload length, crc32
_ALLOWED = {
    ("harness_xai.records", "Case"), ("harness_xai.records", "Explanation"),
    ("harness_xai.records", "Faithfulness"),
    ("harness_xai.records", "GraphRecord"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"), ("numpy.core.multiarray", "scalar"),
    ("numpy._core.numeric", "_frombuffer"), ("numpy.core.numeric", "_frombuffer"),
    ("builtins", "set"), ("builtins", "frozenset"), ("builtins", "complex"),
}


class _RecordUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED and not module.startswith("numpy.dtypes"):
            raise pickle.UnpicklingError(f"shard file holds a disallowed object {module}.{name}")
        return super().find_class(module, name)


def _loads(payload: bytes):
    return _RecordUnpickler(io.BytesIO(payload)).load()


def shard_dir(db_path: Path) -> Path:
    """Where the ranks of a run on the store file ``db_path`` put their shard files."""
    return db_path.with_name(db_path.name + ".shards")


class ShardWriter:
    """Append-only shard file of one rank (see module docstring)."""

    def __init__(self, path: Path, run_id: int, rank: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._file = open(path, "xb")  # noqa: SIM115 (closed in close())
        fcntl.flock(self._file.fileno(), fcntl.LOCK_EX)
        self.n_cases = 0
        self._frame({"format": FORMAT, "run_id": int(run_id), "rank": int(rank)})

    def _frame(self, obj) -> None:
        payload = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
        self._file.write(_FRAME.pack(len(payload), zlib.crc32(payload)) + payload)
        self._file.flush()
        os.fsync(self._file.fileno())

    def write_case(self, case: Case, explanation: Explanation | None = None) -> None:
        self._frame((case, explanation))
        self.n_cases += 1

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()  # drops the flock

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_header(path: Path) -> dict | None:
    """The header of a shard file, or None if it has none / is not one."""
    for item in _frames(path):
        return item if isinstance(item, dict) and item.get("format") == FORMAT else None
    return None


def read_shard(path: Path) -> Iterator[Explained]:
    """The (case, explanation) pairs of a shard file (complete frames only)."""
    frames = _frames(path)
    header = next(frames, None)
    if not (isinstance(header, dict) and header.get("format") == FORMAT):
        raise ValueError(f"{path} is not a harness-xai shard file")
    for item in frames:
        if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], Case)
                and (item[1] is None or isinstance(item[1], Explanation))):
            raise ValueError(f"{path}: unexpected {type(item).__name__} in a shard file")
        yield item


def _frames(path: Path) -> Iterator[object]:
    with open(path, "rb") as f:
        while True:
            head = f.read(_FRAME.size)
            if len(head) < _FRAME.size:
                return
            length, crc = _FRAME.unpack(head)
            payload = f.read(length)
            if len(payload) < length or zlib.crc32(payload) != crc:
                return  # torn last frame of a killed writer
            yield _loads(payload)


def merge_shards(store, run_id: int, paths: list[Path]) -> int:
    """Write every case of ``paths`` into ``store`` (idempotent); delete each merged file.
    Returns the number of cases newly written."""
    written = 0
    for path in paths:
        header = read_header(path)
        if header is None or header.get("run_id") != int(run_id):
            raise ValueError(f"{path} does not belong to run {run_id}")
        done = store.done_keys(run_id)
        for case, explanation in read_shard(path):
            if case.unit_key not in done:
                store.write_case(run_id, case, explanation)
                done.add(case.unit_key)
                written += 1
        path.unlink()
    return written


def leftover_shards(directory: Path | None, run_id: int) -> list[Path]:
    """Shard files of ``run_id`` in ``directory`` that no live writer holds (sorted)."""
    if directory is None or not directory.is_dir():
        return []
    found = []
    for path in sorted(directory.glob(f"run{int(run_id)}-rank*.shard")):
        try:
            with open(path, "rb") as f:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # a rank of a run still going writes it
            continue
        except OSError:
            continue
        found.append(path)
    return found


def shard_path(directory: Path, run_id: int, rank: int, nonce: str) -> Path:
    return directory / f"run{int(run_id)}-rank{int(rank)}-{nonce}.shard"
