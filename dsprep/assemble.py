"""Stages 4–5 over completed pieces: shards in input order, or packed rows — in memory bounded by a shard's pieces.

Unpacked, the pieces' rows stream into the shard writer in task order. Packed, the plan (`dsprep.pack`) needs only
the lengths (each row's ``num_tokens``, carried by the workers' results: a few bytes per example). The packed rows
are written in chunks of ``chunk_rows`` rows, and each shard is a run of whole chunks fixed by the plan (at most about
``--shard-size``, estimated from its tokens; a multiple of `SHARD_MULTIPLE` of them, so that threads, and a
trainer's data-parallel ranks splitting the shards between them, get equal shares), so several shards are written at
once — as many as there are workers, one thread each — and the output is the same for any number of them:

- one streaming pass over the pieces, split between as many threads as keep at most `ROUTE_FILES` bucket files
  open, routes each example to the bucket file of the chunk its row lands in (at most `MAX_BUCKETS` buckets, a
  bounded buffer in front of them);
- each chunk is materialized from its bucket alone (the next one while the one before is written).

Memory holds the lengths and, per thread, a bucket, two chunks and its share of the routing buffer, whatever the
size of the input.
"""

from __future__ import annotations

import functools
import math
import shutil
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa

from dsprep.pack import PackPlan, PackReport, materialize, plan_packing
from dsprep.pieces import load_piece, piece_table
from dsprep.schema import PACKED, TOKENIZED
from dsprep.shards import ShardFile, ShardWriter, parquet_options, shard_name, writing
from dsprep.workers import BatchResult

__all__ = ["CHUNK_TOKENS", "write_packed", "write_unpacked"]

CHUNK_TOKENS = 1 << 21  # tokens per materialized chunk of packed rows (at most)
MAX_BUCKETS = 512  # a bucket holds one chunk up to 512 chunks (1G packed tokens), a few beyond
ROUTE_FILES = 512  # bucket files open at once, all routing threads together (a common limit is 1024 files)
ROUTE_BUFFER_BYTES = 64 << 20  # shared by the routing threads
SHARD_MULTIPLE = 8  # shards come in multiples of 8: 2, 4 or 8 threads or data-parallel ranks get equal shares
PACKED_BYTES_PER_TOKEN = 2.5  # about what a token takes in a packed shard (zstd; 2.3 measured with a 131k vocabulary)
ROUTED = ["id", "input_ids", "labels"]
AHEAD = 1  # pieces read and sorted ahead of the one being routed, per thread
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


@dataclass(frozen=True)
class _Layout:
    """Where packed rows go: chunks of `chunk_rows` rows, `per_bucket` chunks per bucket, shards of whole chunks."""

    chunk_rows: int
    chunks: int
    per_bucket: int
    shard_starts: np.ndarray  # the first chunk of each shard, then `chunks`

    @classmethod
    def of(cls, plan: PackPlan, shard_bytes: int) -> _Layout:
        """Shards of at most about `shard_bytes` (estimated from the plan's tokens), a multiple of `SHARD_MULTIPLE` of
        them where there are enough chunks, as even as whole chunks allow."""
        chunk_rows = max(1, CHUNK_TOKENS // plan.max_len)
        chunks = math.ceil(plan.rows / chunk_rows)
        per_bucket = max(1, math.ceil(chunks / MAX_BUCKETS))
        estimate = int(plan.lengths.sum()) * PACKED_BYTES_PER_TOKEN
        shards = SHARD_MULTIPLE * math.ceil(estimate / shard_bytes / SHARD_MULTIPLE)
        shards = max(1, min(chunks, shards))
        return cls(chunk_rows, chunks, per_bucket, np.arange(shards + 1) * chunks // shards)

    @property
    def buckets(self) -> int:
        return math.ceil(self.chunks / self.per_bucket)


class _Router:
    """Appends example rows to per-bucket Arrow stream files through one bounded buffer."""

    def __init__(self, folder: Path, buckets: int, schema: pa.Schema, buffer_bytes: int) -> None:
        self.folder = folder
        self.schema = schema
        self.buffer_bytes = buffer_bytes
        with writing(folder):
            folder.mkdir(parents=True, exist_ok=True)
            self.writers = [pa.ipc.new_stream(str(folder / f"{b:05d}.arrow"), schema) for b in range(buckets)]
        self.buffer: list[list[pa.Table]] = [[] for _ in range(buckets)]
        self.buffered = 0

    def add(self, bucket: int, table: pa.Table) -> None:
        self.buffer[bucket].append(table)
        self.buffered += table.nbytes
        if self.buffered >= self.buffer_bytes:
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
    """Run `jobs` on `pool`, at most AHEAD of them ahead of the one whose result is yielded, in job order."""
    pending: deque[Future[T]] = deque()
    for job in jobs:
        pending.append(pool.submit(job))
        if len(pending) > AHEAD:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


class _Behind:
    """Writes tables on one background thread, in order, at most one table behind the caller.

    Arrow and Parquet release the GIL while they encode and compress, so the next table is built meanwhile; `write`
    is only called by that thread until the block ends, and a failed write is raised in the caller.
    """

    def __init__(self, write: Callable[[pa.Table], None]) -> None:
        self.write_table = write
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dsprep-shard-writer")
        self.pending: Future[None] | None = None

    def write(self, table: pa.Table) -> None:
        self._wait()
        self.pending = self.pool.submit(self.write_table, table)

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
    readers: ThreadPoolExecutor, pieces: Path, kept: Sequence[BatchResult], firsts: np.ndarray, bucket_of: np.ndarray,
    router: _Router,
) -> None:  # fmt: skip
    """Append every example of the pieces `kept` to its bucket, reading and sorting pieces on `readers`.

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

    for table, bounds in _in_order(readers, (functools.partial(routed, k) for k in range(len(kept)))):
        for b in np.flatnonzero(np.diff(bounds)):
            router.add(int(b), table.slice(int(bounds[b]), int(bounds[b + 1] - bounds[b])))
    router.close()


class _Buckets:
    """The routed examples of one bucket at a time (every thread's part of it), found by example index."""

    def __init__(self, routers: Sequence[_Router]) -> None:
        self.routers = routers
        self.index = -1
        self.table = pa.table({})
        self.examples = np.zeros(0, np.int64)
        self.sorter = np.zeros(0, np.int64)

    def rows_of(self, bucket: int, wanted: np.ndarray) -> tuple[pa.Table, np.ndarray]:
        """Bucket `bucket`'s table and the positions in it of the examples `wanted`."""
        if bucket != self.index:
            self.table = pa.concat_tables([router.read(bucket) for router in self.routers])
            self.examples = self.table.column("example").combine_chunks().to_numpy()
            self.sorter = np.argsort(self.examples)
            self.index = bucket
        return self.table, self.sorter[np.searchsorted(self.examples, wanted, sorter=self.sorter)]


def _write_shard(
    folder: Path, index: int, options: dict[str, Any], routers: Sequence[_Router], plan: PackPlan, layout: _Layout
) -> dict[str, Any]:
    """Write shard `index` (its chunks of packed rows, each built from its bucket) and return its manifest entry."""
    shard = ShardFile(folder / shard_name("part", index), PACKED, options)
    starts = np.concatenate([[0], np.cumsum(plan.row_counts)])
    buckets = _Buckets(routers)
    with _Behind(shard.write) as behind:
        for c in range(int(layout.shard_starts[index]), int(layout.shard_starts[index + 1])):
            lo_row, hi_row = c * layout.chunk_rows, min((c + 1) * layout.chunk_rows, plan.rows)
            table, local = buckets.rows_of(c // layout.per_bucket, plan.order[starts[lo_row] : starts[hi_row]])
            chunk = PackPlan(plan.max_len, local, plan.row_counts[lo_row:hi_row], plan.lengths)
            behind.write(materialize(table, chunk))
    return shard.close()


def write_packed(
    pieces: Path, results: Sequence[BatchResult], folder: Path, *, max_len: int, shuffle_seed: int | None,
    shard_bytes: int, threads: int,
) -> dict[str, Any]:  # fmt: skip
    """Plan packing from the pieces' lengths, then write the packed rows' shards into `folder`, `threads` shards at a
    time; returns the packing report with the shard list.

    The worker processes have ended by now: pieces are read and sorted, and chunks built, on helper threads (Arrow,
    NumPy and Parquet release the GIL) while other threads route or write.
    """
    per_piece = _lengths(results)
    lengths = np.concatenate(per_piece) if per_piece else np.zeros(0, np.int64)
    firsts = np.cumsum([0, *(len(part) for part in per_piece)])
    del per_piece
    plan = plan_packing(lengths, max_len)
    if shuffle_seed is not None:
        plan = plan.shuffled(shuffle_seed)
    layout = _Layout.of(plan, shard_bytes)
    row_of = np.empty(len(lengths), np.int64)
    row_of[plan.order] = np.repeat(np.arange(plan.rows, dtype=np.int64), plan.row_counts)
    bucket_of = row_of // (layout.chunk_rows * layout.per_bucket)
    del row_of
    kept = [r for r in results if r.rows_kept]
    routing_threads = min(threads, len(kept), ROUTE_FILES // max(1, layout.buckets))  # each keeps its buckets open
    parts = np.array_split(np.arange(len(kept)), max(1, routing_threads))
    scratch = pieces.parent / "buckets"
    schema = pa.schema([*(TOKENIZED.field(name) for name in ROUTED), pa.field("example", pa.int64())])
    buffer = ROUTE_BUFFER_BYTES // len(parts)
    routers = [_Router(scratch / f"{t:03d}", layout.buckets, schema, buffer) for t in range(len(parts))]
    options = parquet_options(PACKED)
    with ThreadPoolExecutor(threads, "dsprep-assemble") as pool, ThreadPoolExecutor(threads, "dsprep-read") as readers:
        routing = [
            pool.submit(_route, readers, pieces, [kept[k] for k in part], firsts[part], bucket_of, router)
            for part, router in zip(parts, routers, strict=True)
        ]  # fmt: skip
        for job in routing:
            job.result()
        del bucket_of
        shard_jobs = [
            pool.submit(_write_shard, folder, s, options, routers, plan, layout)
            for s in range(len(layout.shard_starts) - 1)
        ]  # fmt: skip
        shards = [job.result() for job in shard_jobs]
    shutil.rmtree(scratch, ignore_errors=True)
    report = asdict(PackReport.of(plan))
    return {"max_len": max_len, "shuffle_seed": shuffle_seed, **report, "shards": shards}
