"""Completed pieces of a run, on disk: each task's rows (Arrow IPC) and, written last, its counts and reject lines.

A piece is complete once its ``.json`` exists; that file is written under a temporary name and renamed, so a run
killed at any moment leaves only complete pieces (plus temporary files, ignored). A rerun of the same run (same
cache key, `dsprep.cache`) finds them in the staging folder and processes only the missing tasks (`dsprep.pipeline`).
"""

from __future__ import annotations

import os
from dataclasses import fields
from pathlib import Path

import orjson
import pyarrow as pa

from dsprep.shards import writing
from dsprep.workers import BatchResult

__all__ = ["load_piece", "piece_path", "piece_table", "store_piece"]


def _name(seq: int) -> str:
    return f"{seq:09d}"


def store_piece(folder: Path, result: BatchResult) -> BatchResult:
    """Write a result's rows and then its marker; returns the result without its table."""
    base = folder / _name(result.seq)
    table = result.table if result.table is not None else pa.table({})
    with writing(base.with_suffix(".arrow")):
        tmp = base.with_suffix(".arrow.tmp")
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)
        os.replace(tmp, base.with_suffix(".arrow"))
        meta = {f.name: getattr(result, f.name) for f in fields(result) if f.name != "table"}
        marker = base.with_suffix(".json.tmp")
        marker.write_bytes(orjson.dumps(meta))
        os.replace(marker, base.with_suffix(".json"))
    result.table = None
    return result


def load_piece(folder: Path, seq: int) -> BatchResult | None:
    """A complete piece's result (without its table), or None: no marker, or a damaged one (not the JSON of this
    task's result), which marks no complete piece; the task is then run again and its piece rewritten."""
    try:
        meta = orjson.loads((folder / _name(seq)).with_suffix(".json").read_bytes())
        result = BatchResult(**meta)
    except (FileNotFoundError, orjson.JSONDecodeError, TypeError):
        return None
    return result if result.seq == seq else None


def piece_path(folder: Path, seq: int) -> Path:
    """The file of a piece's rows: one uncompressed Arrow IPC file."""
    return (folder / _name(seq)).with_suffix(".arrow")


def piece_table(folder: Path, seq: int) -> pa.Table:
    """A complete piece's rows, memory-mapped."""
    source = pa.memory_map(str(piece_path(folder, seq)))
    return pa.ipc.open_file(source).read_all()
