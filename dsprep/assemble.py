"""Stages 4–5 over completed pieces: shards in input order, or packed rows — in memory bounded by a shard's pieces.

Unpacked, the pieces' rows stream into the shard writer in task order. Packed, the plan (`dsprep.pack`) needs only
the lengths (each row's ``num_tokens``, carried by the workers' results: a few bytes per example). The packed rows
are then written in chunks of ``chunk_rows`` rows: one streaming pass over the pieces routes each example to the
bucket file of the chunk its row lands in (at most `MAX_BUCKETS` files open, a bounded buffer in front of them), and
each chunk is materialized from its bucket alone (the next one while the one before is written). Memory holds the
lengths, two chunks and the routing buffer, whatever the size of the input.
"""

from __future__ import annotations

import functools
import math
import shutil
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa

from dsprep.pack import PackPlan, PackReport, materialize, plan_packing
from dsprep.pieces import load_piece, piece_table
from dsprep.schema import TOKENIZED
from dsprep.shards import ShardWriter, writing
from dsprep.workers import BatchResult

__all__ = ["CHUNK_TOKENS", "write_packed", "write_unpacked"]

CHUNK_TOKENS = 1 << 21  # tokens per materialized chunk of packed rows (at most)
MAX_BUCKETS = 256
ROUTE_BUFFER_BYTES = 64 << 20
ROUTED = ["id", "input_ids", "labels"]
THREADS = 1  # threads that read pieces and build chunks ahead of the main thread
T = TypeVar("T")


def write_unpacked(pieces: Path, results: Sequence[BatchResult], writer: ShardWriter) -> list[dict[str, Any]]:
    """Stream the pieces' rows into `writer` in task order; returns the shard list."""
    for result in results:
        if result.rows_kept:
            stored = load_piece(pieces, result.seq)
            assert stored is not None
            writer.append(piece_table(pieces, result.seq), stored.approx)
    return writer.close()


def _lengths(results: Sequence[BatchResult]) -> list[np.ndarray]:
    """Each piece's example lengths, as its result carries them (a kept record may have become several rows)."""
    kept = [r for r in results if r.rows_kept]
    assert all(r.lengths for r in kept), "a tokenized piece's result carries its rows' lengths"
    return [np.asarray(r.lengths, np.int64) for r in kept]


class _Router:
    """Appends example rows to per-bucket Arrow stream files through one bounded buffer."""

    def __init__(self, folder: Path, buckets: int, schema: pa.Schema) -> None:
        self.folder = folder
        self.schema = schema
        with writing(folder):
            folder.mkdir(parents=True, exist_ok=True)
            self.writers = [pa.ipc.new_stream(str(folder / f"{b:05d}.arrow"), schema) for b in range(buckets)]
        self.buffer: list[list[pa.Table]] = [[] for _ in range(buckets)]
        self.buffered = 0

    def add(self, bucket: int, table: pa.Table) -> None:
        self.buffer[bucket].append(table)
        self.buffered += table.nbytes
        if self.buffered >= ROUTE_BUFFER_BYTES:
            self.flush()

    def flush(self) -> None:
        with writing(self.folder):
            for writer, tables in zip(self.writers, self.buffer, strict=True):
                if tables:
                    writer.write_table(pa.concat_tables(tables).combine_chunks())
                    tables.clear()
        self.buffered = 0

    def close(self) -> None:
        self.flush()
        with writing(self.folder):
            for writer in self.writers:
                writer.close()

    def read(self, bucket: int) -> pa.Table:
        with pa.memory_map(str(self.folder / f"{bucket:05d}.arrow")) as source:
            return pa.ipc.open_stream(source).read_all()


def _in_order(pool: ThreadPoolExecutor, jobs: Iterator[Callable[[], T]]) -> Iterator[T]:
    """Run `jobs` on `pool`, at most THREADS of them ahead of the one whose result is yielded, in job order."""
    pending: deque[Future[T]] = deque()
    for job in jobs:
        pending.append(pool.submit(job))
        if len(pending) > THREADS:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


class _Behind:
    """Writes tables to a `ShardWriter` on one background thread, in order, at most one table behind the caller.

    Arrow and Parquet release the GIL while they encode and compress, so the next table is built meanwhile; the
    writer is only touched by that thread until the block ends, and a failed write is raised in the caller.
    """

    def __init__(self, writer: ShardWriter) -> None:
        self.writer = writer
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dsprep-shard-writer")
        self.pending: Future[None] | None = None

    def write(self, table: pa.Table) -> None:
        self._wait()
        self.pending = self.pool.submit(self.writer.write_table, table)

    def _wait(self) -> None:
        if self.pending is not None:
            pending, self.pending = self.pending, None
            pending.result()

    def __enter__(self) -> _Behind:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self._wait()
        finally:
            self.pool.shutdown(wait=True, cancel_futures=True)


def _route(
    pool: ThreadPoolExecutor, pieces: Path, kept: Sequence[BatchResult], firsts: np.ndarray, bucket_of: np.ndarray,
    router: _Router,
) -> None:  # fmt: skip
    """Append every example of the pieces to its bucket, reading and sorting pieces on `pool` (in piece order).

    firsts: the index of each piece's first example.
    """
    buckets = len(router.writers)

    def routed(k: int) -> tuple[pa.Table, np.ndarray]:
        """Piece k's examples sorted by bucket (stable), with each bucket's bounds."""
        table = piece_table(pieces, kept[k].seq).select(ROUTED)
        first = int(firsts[k])
        target = bucket_of[first : first + table.num_rows]
        order = np.argsort(target, kind="stable")
        table = table.take(pa.array(order)).append_column("example", pa.array(order + first))
        return table, np.searchsorted(target[order], np.arange(buckets + 1))

    for table, bounds in _in_order(pool, (functools.partial(routed, k) for k in range(len(kept)))):
        for b in np.flatnonzero(np.diff(bounds)):
            router.add(int(b), table.slice(int(bounds[b]), int(bounds[b + 1] - bounds[b])))
    router.close()


def _chunk_jobs(router: _Router, plan: PackPlan, chunk_rows: int, per_bucket: int) -> Iterator[Callable[[], pa.Table]]:
    """One job per chunk of packed rows, in order: build the chunk from its bucket."""
    starts = np.concatenate([[0], np.cumsum(plan.row_counts)])
    chunks = math.ceil(plan.rows / chunk_rows)
    for b in range(len(router.writers)):
        bucket = router.read(b)
        examples = bucket.column("example").combine_chunks().to_numpy()
        sorter = np.argsort(examples)
        for c in range(b * per_bucket, min((b + 1) * per_bucket, chunks)):
            lo_row, hi_row = c * chunk_rows, min((c + 1) * chunk_rows, plan.rows)
            wanted = plan.order[starts[lo_row] : starts[hi_row]]
            local = sorter[np.searchsorted(examples, wanted, sorter=sorter)]
            sub = PackPlan(plan.max_len, local, plan.row_counts[lo_row:hi_row], plan.lengths)
            yield functools.partial(materialize, bucket, sub)


def write_packed(
    pieces: Path, results: Sequence[BatchResult], writer: ShardWriter, *, max_len: int, shuffle_seed: int | None
) -> dict[str, Any]:
    """Plan packing from the pieces' lengths, then write the packed rows chunk by chunk; returns the packing report.

    The worker processes have ended by now: the next piece is read and sorted, and the next chunk built, on a
    helper thread (Arrow and NumPy release the GIL) while the main thread routes or the writer thread writes.
    """
    per_piece = _lengths(results)
    lengths = np.concatenate(per_piece) if per_piece else np.zeros(0, np.int64)
    firsts = np.cumsum([0, *(len(part) for part in per_piece)])
    del per_piece
    plan = plan_packing(lengths, max_len)
    if shuffle_seed is not None:
        plan = plan.shuffled(shuffle_seed)
    chunk_rows = max(1, CHUNK_TOKENS // max_len)
    chunks = math.ceil(plan.rows / chunk_rows)
    per_bucket = max(1, math.ceil(chunks / MAX_BUCKETS))
    buckets = math.ceil(chunks / per_bucket)
    row_of = np.empty(len(lengths), np.int64)
    row_of[plan.order] = np.repeat(np.arange(plan.rows, dtype=np.int64), plan.row_counts)
    bucket_of = row_of // (chunk_rows * per_bucket)
    del row_of
    scratch = pieces.parent / "buckets"
    schema = pa.schema([*(TOKENIZED.field(name) for name in ROUTED), pa.field("example", pa.int64())])
    router = _Router(scratch, buckets, schema)
    with ThreadPoolExecutor(THREADS, thread_name_prefix="dsprep-assemble") as pool:
        _route(pool, pieces, [r for r in results if r.rows_kept], firsts, bucket_of, router)
        del bucket_of
        with _Behind(writer) as behind:
            for table in _in_order(pool, _chunk_jobs(router, plan, chunk_rows, per_bucket)):
                behind.write(table)
    shutil.rmtree(scratch, ignore_errors=True)
    report = asdict(PackReport.of(plan))
    return {"max_len": max_len, "shuffle_seed": shuffle_seed, **report, "shards": writer.close()}
