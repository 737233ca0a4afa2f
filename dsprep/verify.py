"""`dsprep verify`: prove an output folder is exactly what its manifest says, before anything trains on it.

Checks: the manifest parses; every shard it lists exists with its sha256 and row count, and no other shard is
present; each shard has the schema of its stage; packed rows keep their invariants (`input_ids`, `labels` and
`position_ids` of one length, `position_ids` restarting exactly at the `seq_lens` boundaries, each example's first
label -100, no row over the packing length); a tokenizer fingerprint is recorded, and matches the tokenizer given.
A recipe output is verified split by split, each split's manifest against the checksum the recipe manifest records.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from dsprep.errors import VerifyError
from dsprep.schema import NORMALIZED, PACKED, TOKENIZED
from dsprep.shards import MANIFEST, file_sha256

__all__ = ["check_fingerprint", "read_manifest", "verify_output"]

SCHEMAS = {"normalized": NORMALIZED, "tokenized": TOKENIZED, "packed": PACKED}


def read_manifest(folder: Path) -> dict[str, Any]:
    """An output folder's manifest, read and checked for its form (not against the shards); VerifyError if absent or
    malformed."""
    path = folder / MANIFEST
    if not folder.is_dir():
        raise VerifyError(f"{folder}: {'a file' if folder.exists() else 'no such folder'}, not a dsprep output folder")
    if not path.is_file():
        raise VerifyError(f"{folder}: no {MANIFEST}; not a complete dsprep output (a run may have stopped early)")
    try:
        manifest = orjson.loads(path.read_bytes())
    except orjson.JSONDecodeError as exc:
        raise VerifyError(f"{path}: not valid JSON ({exc})") from None
    if isinstance(manifest, dict) and manifest.get("stage") == "recipe" and isinstance(manifest.get("splits"), dict):
        return manifest
    if not isinstance(manifest, dict) or manifest.get("stage") not in SCHEMAS or "shards" not in manifest:
        raise VerifyError(f"{path}: not a dsprep manifest (no known stage or shard list)")
    return manifest


def _packed_invariants(name: str, table: pa.Table, max_len: int, first_row: int = 0) -> None:
    """Raise VerifyError naming the first row (counted in the shard: `table` starts at row `first_row`) whose packed
    invariants do not hold."""
    ids, labels, positions, seq_lens = (
        table.column(c).combine_chunks() for c in ("input_ids", "labels", "position_ids", "seq_lens")
    )
    n = pc.list_value_length(ids).to_numpy()
    if not (
        np.array_equal(n, pc.list_value_length(labels).to_numpy())
        and np.array_equal(n, pc.list_value_length(positions).to_numpy())
    ):
        raise VerifyError(f"{name}: input_ids, labels and position_ids differ in length in some row")
    if len(n) and n.max() > max_len:
        row = int(np.argmax(n))
        raise VerifyError(f"{name}: row {first_row + row} has {int(n[row])} tokens, over the packing length {max_len}")
    lens = seq_lens.flatten().to_numpy().astype(np.int64)
    per_row = np.add.reduceat(lens, seq_lens.offsets.to_numpy()[:-1]) if len(lens) else np.zeros(len(n), np.int64)
    counts = pc.list_value_length(seq_lens).to_numpy()
    sums = np.where(counts > 0, per_row, 0)
    if not np.array_equal(sums, n):
        row = int(np.flatnonzero(sums != n)[0])
        raise VerifyError(
            f"{name}: row {first_row + row}: seq_lens add up to {int(sums[row])}, the row has {int(n[row])} tokens"
        )
    starts = np.concatenate([[0], np.cumsum(lens)[:-1]]).astype(np.int64)
    expected = np.arange(int(lens.sum()), dtype=np.int64) - np.repeat(starts, lens)
    flat_positions = positions.flatten().to_numpy().astype(np.int64)
    ends = np.cumsum(n)

    def located(at: int) -> tuple[int, int]:
        """The row (counted in the shard) holding token `at` of the table's flattened tokens, and its place there."""
        row = int(np.searchsorted(ends, at, side="right"))
        return first_row + row, at - int(ends[row] - n[row])

    if not np.array_equal(flat_positions, expected):
        row, token = located(int(np.flatnonzero(flat_positions != expected)[0]))
        raise VerifyError(
            f"{name}: row {row}: position_ids do not restart at the seq_lens boundaries (token {token} of the row)"
        )
    first_labels = labels.flatten().to_numpy()[starts]
    if (first_labels != -100).any():
        row, token = located(int(starts[np.flatnonzero(first_labels != -100)[0]]))
        raise VerifyError(
            f"{name}: row {row}: an example's first label is not -100 (token {token} of the row), so a label crosses "
            "a boundary"
        )


def verify_output(folder: Path, *, tokenizer: str | None = None) -> dict[str, Any]:
    """Verify `folder` against its manifest; returns the manifest, or raises VerifyError naming the problem."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    if manifest["stage"] == "recipe":
        return _verify_recipe(folder, manifest, tokenizer)
    schema = SCHEMAS[manifest["stage"]]
    listed = {s["file"] for s in manifest["shards"]}
    for extra in sorted(p.name for p in folder.glob("part-*.parquet") if p.name not in listed):
        raise VerifyError(f"{folder / extra}: shard not listed in the manifest")
    for shard in manifest["shards"]:
        path = folder / shard["file"]
        if not path.is_file():
            raise VerifyError(f"{path}: shard listed in the manifest is missing")
        if file_sha256(path) != shard["sha256"]:
            raise VerifyError(
                f"{path}: checksum mismatch (sha256 differs from the manifest): the shard was changed or damaged"
            )
        max_len = int(manifest["packing"]["max_len"]) if manifest["stage"] == "packed" else None
        rows = _verify_shard(path, schema, manifest["stage"], max_len)
        if rows != shard["rows"]:
            raise VerifyError(f"{path}: {rows} rows, the manifest says {shard['rows']}")
    if manifest["stage"] != "normalized":
        recorded = manifest.get("tokenizer", {}).get("fingerprint")
        if not recorded:
            raise VerifyError(f"{folder / MANIFEST}: no tokenizer fingerprint recorded")
        if tokenizer is not None:
            from dsprep.tokenizers import load_tokenizer

            check_fingerprint(manifest, load_tokenizer(tokenizer).fingerprint, tokenizer)
    return manifest


def _verify_shard(path: Path, schema: pa.Schema, stage: str, max_len: int | None) -> int:
    """Read one shard row group by row group (memory: one row group, whatever the shard's size), checking its schema
    and, with `max_len` (packed), each row's invariants; returns its rows."""
    rows = 0
    try:
        with pq.ParquetFile(path) as parquet:
            if not parquet.schema_arrow.equals(schema, check_metadata=False):
                raise VerifyError(f"{path}: schema differs from the {stage} schema")
            for group in range(parquet.metadata.num_row_groups):
                table = parquet.read_row_group(group)
                if max_len is not None:
                    _packed_invariants(str(path), table, max_len, rows)
                rows += table.num_rows
    except (pa.ArrowException, OSError) as exc:
        raise VerifyError(f"{path}: cannot read as Parquet ({exc})") from None
    return rows


def _verify_recipe(folder: Path, manifest: dict[str, Any], tokenizer: str | None) -> dict[str, Any]:
    """A recipe output: its rejects file and each split folder's manifest as recorded, and each split in full."""
    rejects = manifest.get("rejects") or {}
    if rejects and file_sha256(folder / rejects["file"]) != rejects["sha256"]:
        raise VerifyError(f"{folder / rejects['file']}: checksum mismatch (sha256 differs from the manifest)")
    for name, split in manifest["splits"].items():
        sub = folder / split["path"]
        if not (sub / MANIFEST).is_file() or file_sha256(sub / MANIFEST) != split["manifest_sha256"]:
            raise VerifyError(f"{sub / MANIFEST}: missing, or not the {name} manifest the recipe manifest records")
        verify_output(sub, tokenizer=tokenizer)
    return manifest


def check_fingerprint(manifest: dict[str, Any], fingerprint: str, name: str) -> None:
    """Raise VerifyError unless the manifest's tokenizer fingerprint equals `fingerprint`."""
    recorded = manifest.get("tokenizer", {})
    if recorded.get("fingerprint") != fingerprint:
        raise VerifyError(
            f"tokenizer mismatch: the shards were tokenized with {recorded.get('name')!r} "
            f"(fingerprint {str(recorded.get('fingerprint'))[:12]}…), "
            f"but {name!r} has fingerprint {fingerprint[:12]}…; "
            "re-run dsprep convert with this tokenizer"
        )
