"""Stages 4–5 over completed pieces: shards in input order, or packed rows — in memory bounded by a shard's pieces.

Unpacked, the pieces' rows stream into the shard writer in task order as the pieces complete (`UnpackedShards`).
Packed, the plan (`dsprep.pack`) needs only the lengths (each row's ``num_tokens``, carried by the workers' results: a
few bytes per example). The packed rows are written in chunks of ``chunk_rows`` rows, and each shard is a run of whole
chunks fixed by the plan (at most about ``--shard-size``, estimated from its tokens, so no chunk is larger; a multiple
of `SHARD_MULTIPLE` of them where the rows fill that many chunks, so that threads, and a trainer's data-parallel
ranks splitting the shards between them, get equal shares). Several shards are written at once — as many as there
are workers, one thread each — and the output is the same for any number of them.

A chunk reads exactly its examples' bytes from the piece files: the pieces are uncompressed Arrow IPC files, so
where each example's tokens and id lie is known from each file's layout, read as each piece completes
(`PieceLocations`: a few more bytes per example), and each example's tokens are read straight into their place in the
chunk (`_chunk`: one ``preadv`` each for its ids, labels and id; no memory map, whose pages, mapped a few dozen
kilobytes around each read, counted several times the chunks' size towards the process's resident memory). Memory
holds the lengths, those locations and, per thread, two chunks, whatever the size of the input.
"""

from __future__ import annotations

import math
import os
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from dsprep.errors import OutputError
from dsprep.pack import PackPlan, PackReport, packed_table, plan_packing
from dsprep.pieces import load_piece, piece_path, piece_table
from dsprep.schema import PACKED
from dsprep.shards import ShardFile, ShardWriter, parquet_options, shard_name, writing
from dsprep.workers import BatchResult

__all__ = ["CHUNK_TOKENS", "OnWriting", "PieceLocations", "UnpackedShards", "write_packed"]

CHUNK_TOKENS = 1 << 21  # tokens per materialized chunk of packed rows (at most)
SHARD_MULTIPLE = 8  # shards come in multiples of 8: 2, 4 or 8 threads or data-parallel ranks get equal shares
PACKED_BYTES_PER_TOKEN = 2.5  # about what a token takes in a packed shard (zstd; 2.3 measured with a 131k vocabulary)
OPEN_FILES = 1024  # piece files a writing thread keeps open at most (all threads: at most half the process's limit)
TOKEN_BYTES = 4  # int32 token ids and labels


# told the number of steps in writing the shards when that starts; returns what each finished step is reported to
OnWriting = Callable[[int], Callable[[int], None]]


class UnpackedShards:
    """Writes completed pieces' rows into unpacked shards in task order as the pieces come in, so that the writing
    overlaps the workers' processing of later pieces instead of waiting for the last one; `finish` returns the shard
    list."""

    def __init__(self, pieces: Path, writer: ShardWriter) -> None:
        self.pieces = pieces
        self.writer = writer

    def add(self, result: BatchResult) -> None:
        """Append a completed (stored) piece's rows; a piece that kept none adds nothing."""
        if result.rows_kept:
            with writing(self.writer.folder):
                stored = load_piece(self.pieces, result.seq)
                assert stored is not None
                self.writer.append(piece_table(self.pieces, result.seq), stored.approx)

    def finish(self, on_writing: OnWriting | None = None) -> list[dict[str, Any]]:
        """Write the rows still buffered and close the shards (`on_writing` is told of that one step)."""
        step = on_writing(1) if on_writing else None
        with writing(self.writer.folder):
            shards = self.writer.close()
        if step:
            step(1)
        return shards

    def __enter__(self) -> UnpackedShards:
        return self

    def __exit__(self, kind: type[BaseException] | None, *exc: object) -> None:
        if kind is not None:  # the run is failing: close the open shard, whose file is about to go
            self.writer.abort()


def _lengths(kept: Sequence[BatchResult]) -> list[np.ndarray]:
    """Each piece's example lengths, as its result carries them (a kept record may have become several rows)."""
    assert all(r.lengths for r in kept), "a tokenized piece's result carries its rows' lengths"
    return [np.asarray(r.lengths, np.int64) for r in kept]


@dataclass(frozen=True)
class _Layout:
    """Where packed rows go: chunks of `chunk_rows` rows, shards of whole chunks."""

    chunk_rows: int
    chunks: int
    shard_starts: np.ndarray  # the first chunk of each shard, then `chunks`

    @classmethod
    def of(cls, plan: PackPlan, shard_bytes: int) -> _Layout:
        """Shards of at most about `shard_bytes` (estimated from the plan's tokens), a multiple of `SHARD_MULTIPLE` of
        them once the rows fill that many chunks (chunks are then made smaller where there are fewer than shards), as
        even as whole chunks allow; a chunk holds no more than a shard. A smaller output has a shard per chunk."""
        chunk_tokens = min(CHUNK_TOKENS, int(shard_bytes / PACKED_BYTES_PER_TOKEN))
        chunk_rows = max(1, chunk_tokens // plan.max_len)
        chunks = math.ceil(plan.rows / chunk_rows)
        estimate = int(plan.lengths.sum()) * PACKED_BYTES_PER_TOKEN
        shards = SHARD_MULTIPLE * math.ceil(estimate / shard_bytes / SHARD_MULTIPLE)
        if SHARD_MULTIPLE <= chunks < shards:  # chunks too large to go round: smaller ones, a row at least
            chunk_rows = max(1, plan.rows // shards)
            chunks = math.ceil(plan.rows / chunk_rows)
            shards = min(shards, SHARD_MULTIPLE * (chunks // SHARD_MULTIPLE))  # fewer rows than shards: round down
        shards = max(1, min(chunks, shards))
        return cls(chunk_rows, chunks, np.arange(shards + 1) * chunks // shards)


@dataclass(frozen=True)
class _Locations:
    """Where each example's input_ids, labels and id lie in the piece files, as byte offsets (examples numbered in
    piece order)."""

    files: list[str]
    piece: np.ndarray  # int32: each example's file
    ids_at: np.ndarray  # uint32 (int64 for a piece of 4 GiB or more): offset of its first token id
    labels_at: np.ndarray  # the same: offset of its first label
    id_at: np.ndarray  # the same: offset of its id (UTF-8)
    id_len: np.ndarray  # int32: bytes of its id


def _offsets(column: pa.Array) -> np.ndarray:
    """The int32 offsets of a list or string array, read from its buffer (`Array.to_numpy` would import pandas)."""
    offsets = np.frombuffer(column.buffers()[1], np.int32)
    return offsets[column.offset : column.offset + len(column) + 1]


def _list_starts(column: pa.ListArray, base: int) -> tuple[np.ndarray, np.ndarray]:
    """The file offset of each row's first value in an int32 list column of a memory-mapped record batch, and each
    row's number of values."""
    values = column.values
    data = values.buffers()[1]
    assert column.null_count == 0 and values.type == pa.int32() and data is not None
    offsets = _offsets(column).astype(np.int64)
    return data.address - base + (values.offset + offsets[:-1]) * TOKEN_BYTES, np.diff(offsets)


def _locate_piece(path: Path, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(ids_at, labels_at, id_at, id_len) of a piece's rows, from its file's layout (read without copying); the rows'
    token counts, and their labels', must be `lengths`."""
    parts: list[tuple[np.ndarray, ...]] = []
    with pa.memory_map(str(path)) as source:
        size = source.size()
        base = source.read_buffer(1).address
        reader = pa.ipc.open_file(source)
        for i in range(reader.num_record_batches):
            batch = reader.get_batch(i)
            ids_at, ids_len = _list_starts(batch.column("input_ids"), base)
            labels_at, labels_len = _list_starts(batch.column("labels"), base)
            names = batch.column("id")
            offsets = _offsets(names)
            id_at = names.buffers()[2].address - base + offsets[:-1].astype(np.int64)
            parts.append((ids_at, labels_at, id_at, np.diff(offsets).astype(np.int32), ids_len, labels_len))
            del batch, names, offsets
        del reader
    if not parts:
        raise OutputError(f"{path}: this staged piece does not hold the {len(lengths)} rows its result counts")
    ids_at, labels_at, id_at, id_len, ids_len, labels_len = (np.concatenate(c) for c in zip(*parts, strict=True))
    inside = all(a.min(initial=0) >= 0 and a.max(initial=0) < size for a in (ids_at, labels_at, id_at))
    if not inside or not np.array_equal(ids_len, lengths) or not np.array_equal(labels_len, lengths):
        raise OutputError(f"{path}: this staged piece does not hold the {len(lengths)} rows its result counts")
    return ids_at, labels_at, id_at, id_len


def _located(path: Path, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """`_locate_piece`, with a piece that cannot be read reported in one line."""
    try:
        return _locate_piece(path, lengths)
    except (OSError, pa.ArrowException) as exc:
        raise OutputError(
            f"{path}: cannot read this staged piece ({exc}); delete {path.parent.parent} to start the run over"
        ) from None


class PieceLocations:
    """Where the examples of the completed pieces lie in their files (`_Locations`), found piece by piece as each
    completes (`add`): the convert process does it while the workers go on, rather than all at once before packing.
    Offsets take 4 bytes where a piece file is under 4 GiB (as they are: a piece holds `TASK_ROWS` records)."""

    def __init__(self, pieces: Path) -> None:
        self.pieces = pieces
        self.seqs: list[int] = []
        self.parts: tuple[list[np.ndarray], ...] = ([], [], [], [])  # ids_at, labels_at, id_at, id_len

    def add(self, result: BatchResult) -> None:
        """Locate the examples of a completed piece (nothing to do where it kept no row)."""
        if not result.rows_kept:
            return
        *offsets, id_len = _located(piece_path(self.pieces, result.seq), np.asarray(result.lengths, np.int64))
        if max(int(a.max(initial=0)) for a in offsets) < 1 << 32:
            offsets = [a.astype(np.uint32) for a in offsets]
        for part, values in zip(self.parts, (*offsets, id_len), strict=True):
            part.append(values)
        self.seqs.append(result.seq)

    def of(self, kept: Sequence[BatchResult]) -> _Locations:
        """The locations of the examples of `kept`: the results added that kept rows, in the order added."""
        if [r.seq for r in kept] != self.seqs:
            raise OutputError("the staged pieces to pack are not the ones located as they completed")
        counts = [len(a) for a in self.parts[0]]
        columns = []
        for part in self.parts:  # one column at a time: no more than one column's parts are held twice
            columns.append(np.concatenate(part) if part else np.zeros(0, np.uint32))
            part.clear()
        piece = np.repeat(np.arange(len(kept), dtype=np.int32), counts)
        files = [str(piece_path(self.pieces, seq)) for seq in self.seqs]
        return _Locations(files, piece, columns[0], columns[1], columns[2], columns[3].astype(np.int32, copy=False))


def _seek_readv(fd: int, buffers: Sequence[memoryview], offset: int) -> int:
    """``os.preadv`` where there is none (each thread has its own descriptors: nobody else moves this one)."""
    os.lseek(fd, offset, os.SEEK_SET)
    done = 0
    for into in buffers:
        data = os.read(fd, len(into))
        into[: len(data)] = data
        done += len(data)
        if len(data) < len(into):
            break
    return done


_readv_at: Callable[[int, Sequence[memoryview], int], int] = getattr(os, "preadv", _seek_readv)


class _Files:
    """Piece files open for reading on one thread, at most `capacity` at once (the least recently used closes)."""

    def __init__(self, files: Sequence[str], capacity: int) -> None:
        self.files = files
        self.capacity = max(1, capacity)
        self.open: OrderedDict[int, int] = OrderedDict()

    def fd(self, piece: int) -> int:
        """An open descriptor of the piece file `piece`."""
        fd = self.open.get(piece)
        if fd is None:
            if len(self.open) >= self.capacity:
                os.close(self.open.popitem(last=False)[1])
            fd = self.open[piece] = os.open(self.files[piece], os.O_RDONLY | getattr(os, "O_BINARY", 0))
        else:
            self.open.move_to_end(piece)
        return fd

    def short(self, piece: int) -> OSError:
        return OSError(f"{self.files[piece]}: a staged piece is shorter than its layout says")

    def close(self) -> None:
        while self.open:
            os.close(self.open.popitem()[1])


def _chunk(loc: _Locations, lengths: np.ndarray, order: np.ndarray, counts: np.ndarray, files: _Files) -> pa.Table:
    """The packed rows of `order` (examples in row order, `counts` per row), each example's bytes read into place."""
    example_lengths = lengths[order]
    at = np.concatenate([[0], np.cumsum(example_lengths)]) * TOKEN_BYTES
    id_len = loc.id_len[order]
    id_offsets = np.concatenate([[0], np.cumsum(id_len, dtype=np.int64)])
    if id_offsets[-1] >= 1 << 31:
        raise OutputError("the example ids of one chunk of packed rows pass 2 GiB")
    flat_ids = np.empty(int(example_lengths.sum()), np.int32)
    flat_labels = np.empty_like(flat_ids)
    names = np.empty(int(id_offsets[-1]), np.uint8)
    ids_view, labels_view, names_view = (a.data.cast("B") for a in (flat_ids, flat_labels, names))
    visit = np.argsort(loc.piece[order], kind="stable")  # piece by piece: each file opened once per chunk at most
    picked = order[visit]
    read, current, fd = _readv_at, -1, -1
    for piece, lo, hi, ids_at, labels_at, name_lo, name_hi, id_at in zip(
        loc.piece[picked].tolist(), at[visit].tolist(), at[visit + 1].tolist(), loc.ids_at[picked].tolist(),
        loc.labels_at[picked].tolist(), id_offsets[visit].tolist(), id_offsets[visit + 1].tolist(),
        loc.id_at[picked].tolist(), strict=True,
    ):  # fmt: skip
        if piece != current:
            current, fd = piece, files.fd(piece)
        if (
            read(fd, [ids_view[lo:hi]], ids_at) != hi - lo
            or read(fd, [labels_view[lo:hi]], labels_at) != hi - lo
            or read(fd, [names_view[name_lo:name_hi]], id_at) != name_hi - name_lo
        ):
            raise files.short(piece)
    example_ids = pa.StringArray.from_buffers(
        len(order), pa.py_buffer(id_offsets.astype(np.int32)), pa.py_buffer(names)
    )
    return packed_table(flat_ids, flat_labels, example_lengths, counts, example_ids)


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


def _write_shard(
    folder: Path, index: int, options: dict[str, Any], loc: _Locations, plan: PackPlan, layout: _Layout, capacity: int,
    step: Callable[[int], None] | None,
) -> dict[str, Any]:  # fmt: skip
    """Write shard `index` (its chunks of packed rows, each read from the pieces; `step` is told of each one written)
    and return its manifest entry."""
    shard = ShardFile(folder / shard_name("part", index), PACKED, options)
    starts = np.concatenate([[0], np.cumsum(plan.row_counts)])
    files = _Files(loc.files, capacity)

    def write(table: pa.Table) -> None:
        shard.write(table)
        if step:
            step(1)

    try:
        with _Behind(write) as behind:
            for c in range(int(layout.shard_starts[index]), int(layout.shard_starts[index + 1])):
                lo_row, hi_row = c * layout.chunk_rows, min((c + 1) * layout.chunk_rows, plan.rows)
                order = plan.order[starts[lo_row] : starts[hi_row]]
                behind.write(_chunk(loc, plan.lengths, order, plan.row_counts[lo_row:hi_row], files))
    except OSError as exc:
        shard.abort()
        raise OutputError(f"cannot read the staged pieces: {exc.strerror or exc}") from None
    except BaseException:
        shard.abort()
        raise
    finally:
        files.close()
    return shard.close()


def _open_files_each(threads: int) -> int:
    """How many piece files each of `threads` threads may keep open: at most half the process's limit in all."""
    try:
        import resource

        limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if limit == resource.RLIM_INFINITY or limit <= 0:
            limit = 1 << 16
    except ImportError:  # pragma: no cover - not on Unix
        limit = 512
    return max(8, min(OPEN_FILES, limit // (2 * max(1, threads))))


def write_packed(
    located: PieceLocations, results: Sequence[BatchResult], folder: Path, *, max_len: int, shuffle_seed: int | None,
    shard_bytes: int, threads: int, on_writing: OnWriting | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Plan packing from the lengths of the pieces `results` name (each piece `located` as it completed), then write
    the packed rows' shards into `folder`, `threads` shards at a time; returns the packing report with the shard
    list. `on_writing` is told the number of chunks of packed rows once the plan is made, and each chunk written
    (from the writing threads).

    The worker processes have ended by now: chunks are read and built on helper threads (file reads, NumPy and
    Parquet release the GIL) while other threads write.
    """
    kept = [r for r in results if r.rows_kept]
    per_piece = _lengths(kept)
    lengths = np.concatenate(per_piece) if per_piece else np.zeros(0, np.int64)
    plan = plan_packing(lengths, max_len)
    if shuffle_seed is not None:
        plan = plan.shuffled(shuffle_seed)
    del per_piece
    layout = _Layout.of(plan, shard_bytes)
    loc = located.of(kept)
    options = parquet_options(PACKED)
    capacity = _open_files_each(threads)
    step = on_writing(layout.chunks) if on_writing else None
    with ThreadPoolExecutor(threads, "dsprep-assemble") as pool:
        shard_jobs = [
            pool.submit(_write_shard, folder, s, options, loc, plan, layout, capacity, step)
            for s in range(len(layout.shard_starts) - 1)
        ]  # fmt: skip
        shards = [job.result() for job in shard_jobs]
    report = asdict(PackReport.of(plan))
    return {"max_len": max_len, "shuffle_seed": shuffle_seed, **report, "shards": shards}
