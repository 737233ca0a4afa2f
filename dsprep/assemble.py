"""Stages 4–5 over completed pieces: shards in input order, or packed rows — in memory bounded by a shard's pieces.

Unpacked, the pieces' rows stream into the shard writer in task order. Packed, the plan (`dsprep.pack`) needs only
the lengths (the ``num_tokens`` column, a few bytes per example). The packed rows are then written in chunks of
``chunk_rows`` rows: one streaming pass over the pieces routes each example to the bucket file of the chunk its row
lands in (at most `MAX_BUCKETS` files open, a bounded buffer in front of them), and each chunk is materialized from
its bucket alone. Memory holds the lengths, one chunk and the routing buffer, whatever the size of the input.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from dsprep.pack import PackPlan, PackReport, materialize, plan_packing
from dsprep.pieces import load_piece, piece_column, piece_table
from dsprep.schema import TOKENIZED
from dsprep.shards import ShardWriter, writing
from dsprep.workers import BatchResult

__all__ = ["CHUNK_TOKENS", "write_packed", "write_unpacked"]

CHUNK_TOKENS = 1 << 22  # tokens per materialized chunk of packed rows (at most)
MAX_BUCKETS = 256
ROUTE_BUFFER_BYTES = 64 << 20
ROUTED = ["id", "input_ids", "labels"]


def write_unpacked(pieces: Path, results: Sequence[BatchResult], writer: ShardWriter) -> list[dict[str, Any]]:
    """Stream the pieces' rows into `writer` in task order; returns the shard list."""
    for result in results:
        if result.rows_kept:
            stored = load_piece(pieces, result.seq)
            assert stored is not None
            writer.append(piece_table(pieces, result.seq), stored.approx)
    return writer.close()


def _lengths(pieces: Path, results: Sequence[BatchResult]) -> np.ndarray:
    parts = [piece_column(pieces, r.seq, "num_tokens") for r in results if r.rows_kept]
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)


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


def write_packed(
    pieces: Path, results: Sequence[BatchResult], writer: ShardWriter, *, max_len: int, shuffle_seed: int | None
) -> dict[str, Any]:
    """Plan packing from the pieces' lengths, then write the packed rows chunk by chunk; returns the packing report."""
    lengths = _lengths(pieces, results)
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
    first = 0
    for result in results:
        if not result.rows_kept:
            continue
        table = piece_table(pieces, result.seq).select(ROUTED)
        n = table.num_rows
        index = np.arange(first, first + n, dtype=np.int64)
        target = bucket_of[first : n + first]
        order = np.argsort(target, kind="stable")
        table = table.take(pa.array(order)).append_column("example", pa.array(index[order]))
        bounds = np.searchsorted(target[order], np.arange(buckets + 1))
        for b in np.flatnonzero(np.diff(bounds)):
            router.add(int(b), table.slice(int(bounds[b]), int(bounds[b + 1] - bounds[b])))
        first += n
    router.close()
    del bucket_of
    starts = np.concatenate([[0], np.cumsum(plan.row_counts)])
    for b in range(buckets):
        bucket = router.read(b)
        examples = bucket.column("example").to_numpy()
        sorter = np.argsort(examples)
        for c in range(b * per_bucket, min((b + 1) * per_bucket, chunks)):
            lo_row, hi_row = c * chunk_rows, min((c + 1) * chunk_rows, plan.rows)
            wanted = plan.order[starts[lo_row] : starts[hi_row]]
            local = sorter[np.searchsorted(examples, wanted, sorter=sorter)]
            sub = PackPlan(max_len, local, plan.row_counts[lo_row:hi_row], plan.lengths)
            writer.write_table(materialize(bucket, sub))
        del bucket
    shutil.rmtree(scratch, ignore_errors=True)
    report = asdict(PackReport.of(plan))
    return {"max_len": max_len, "shuffle_seed": shuffle_seed, **report, "shards": writer.close()}
