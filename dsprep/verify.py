"""`dsprep verify`: prove an output folder is exactly what its manifest says, before anything trains on it.

Checks: the manifest parses and has the form dsprep writes (`read_manifest`: each value of the type it must have,
shards named as dsprep names them and each listed once, the schema version this dsprep reads); every shard it lists
exists with its sha256 and row count, and no other shard is present; the rejects file has its recorded sha256 and
rows; each shard has the schema of its stage; packed rows keep their invariants (`input_ids`, `labels` and
`position_ids` of one length, `position_ids` restarting exactly at the `seq_lens` boundaries, each example's first
label -100, no row over the packing length); a tokenizer fingerprint is recorded, and matches the tokenizer given.
A recipe output is verified split by split, each split's manifest against the checksum the recipe manifest records.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from dsprep.errors import VerifyError
from dsprep.schema import NORMALIZED, PACKED, SCHEMA_VERSION, TOKENIZED
from dsprep.shards import MANIFEST, REJECTS, SHARD_NAME, SPLIT_FOLDERS, file_sha256

__all__ = ["check_fingerprint", "read_manifest", "shard_paths", "verify_output"]

SCHEMAS = {"normalized": NORMALIZED, "tokenized": TOKENIZED, "packed": PACKED}
SHA256 = re.compile(r"[0-9a-f]{64}")
_ABSENT = object()

# what a manifest value must be: its description in a message, and the test
_KINDS: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "object": ("an object", lambda v: isinstance(v, dict)),
    "list": ("a list", lambda v: isinstance(v, list)),
    "text": ("a string", lambda v: isinstance(v, str)),
    "fingerprint": ("a tokenizer fingerprint (a non-empty string)", lambda v: isinstance(v, str) and v != ""),
    "count": ("a whole number >= 0", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0),
    "length": ("a whole number >= 1", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1),
    "number": ("a number", lambda v: isinstance(v, int | float) and not isinstance(v, bool)),
    "sha256": ("a sha256 (64 hex digits)", lambda v: isinstance(v, str) and SHA256.fullmatch(v) is not None),
}


def _shown(value: Any) -> str:
    """A manifest value as a message shows it: its JSON, cut to 200 characters; `nothing` when absent."""
    if value is _ABSENT:
        return "nothing"
    text = orjson.dumps(value).decode()
    return text if len(text) <= 200 else text[:199] + "…"


class _Form:
    """Checks one manifest's values against the form dsprep writes; each failure names the field
    (`shards[2].sha256`), what it must be and what it is."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, field: str, expected: str, value: Any = _ABSENT) -> NoReturn:
        raise VerifyError(f"{self.path}: {field}: expected {expected}, got {_shown(value)}")

    def get(self, parent: dict[str, Any], key: str, where: str, kind: str, *, optional: bool = False) -> Any:
        """`parent[key]` if it is of `kind` (`_KINDS`); `optional`: absent or null is allowed too (gives None)."""
        field = f"{where}.{key}" if where else key
        value = parent.get(key, _ABSENT)
        if optional and (value is _ABSENT or value is None):
            return None
        expected, test = _KINDS[kind]
        if value is _ABSENT or not test(value):
            self.fail(field, expected, value)
        return value

    def items(self, parent: dict[str, Any], key: str) -> list[tuple[str, dict[str, Any]]]:
        """The elements of the list `parent[key]`, each an object, with its field name (`shards[2]`)."""
        out = []
        for i, item in enumerate(self.get(parent, key, "", "list")):
            if not isinstance(item, dict):
                self.fail(f"{key}[{i}]", "an object", item)
            out.append((f"{key}[{i}]", item))
        return out


def read_manifest(folder: Path) -> dict[str, Any]:
    """An output folder's manifest, read and checked for its form (`_check_form`; not against the shards);
    VerifyError if absent or malformed. Whatever reads a manifest's values reads them through this."""
    path = folder / MANIFEST
    if not folder.is_dir():
        raise VerifyError(f"{folder}: {'a file' if folder.exists() else 'no such folder'}, not a dsprep output folder")
    if not path.is_file():
        raise VerifyError(f"{folder}: no {MANIFEST}; not a complete dsprep output (a run may have stopped early)")
    try:
        manifest = orjson.loads(path.read_bytes())
    except orjson.JSONDecodeError as exc:
        raise VerifyError(f"{path}: not valid JSON ({exc})") from None
    except OSError as exc:
        raise VerifyError(f"{path}: cannot be read ({exc.strerror})") from None
    if not isinstance(manifest, dict) or "stage" not in manifest:
        raise VerifyError(f"{path}: not a dsprep manifest (expected an object with a stage, got {_shown(manifest)})")
    _check_form(_Form(path), manifest)
    return manifest


def _check_form(form: _Form, m: dict[str, Any]) -> None:
    """Every value of a manifest that dsprep reads (verify, inspect, the trainer integrations) has the type dsprep
    writes it with; shard files are plain `part-NNNNN.parquet` names, each listed once; a recipe's splits are its
    split folders (`train`, `eval`), at least one."""
    version = m.get("schema_version", _ABSENT)
    if type(version) is not int or version != SCHEMA_VERSION:
        form.fail("schema_version", f"{SCHEMA_VERSION} (the schema version this dsprep reads)", version)
    stage = m["stage"]
    if stage not in (*SCHEMAS, "recipe"):
        form.fail("stage", f"one of {', '.join(SCHEMAS)}, recipe", stage)
    rejects = form.get(m, "rejects", "", "object")
    if rejects.get("file") != REJECTS:
        form.fail("rejects.file", f'"{REJECTS}"', rejects.get("file", _ABSENT))
    form.get(rejects, "rows", "rejects", "count")
    form.get(rejects, "sha256", "rejects", "sha256")
    if stage == "recipe":
        _check_recipe_form(form, m)
        return
    seen: dict[str, str] = {}
    for where, shard in form.items(m, "shards"):
        file = form.get(shard, "file", where, "text")
        if not SHARD_NAME.fullmatch(file):
            form.fail(f"{where}.file", "a shard file name in the output folder (part-NNNNN.parquet)", file)
        if file in seen:
            raise VerifyError(f"{form.path}: {where}.file: {file} is listed twice (also as {seen[file]})")
        seen[file] = where
        form.get(shard, "rows", where, "count")
        form.get(shard, "sha256", where, "sha256")
        form.get(shard, "bytes", where, "count", optional=True)
    tokenizer = form.get(m, "tokenizer", "", "object", optional=stage == "normalized")
    if tokenizer is not None:
        form.get(tokenizer, "fingerprint", "tokenizer", "fingerprint", optional=stage == "normalized")
        form.get(tokenizer, "name", "tokenizer", "text", optional=True)
    packing = form.get(m, "packing", "", "object", optional=stage != "packed")
    if packing is not None:
        form.get(packing, "max_len", "packing", "length")
        form.get(packing, "rows", "packing", "count")
        form.get(packing, "efficiency", "packing", "number")
    if "options" in m:  # read as `manifest.get("options", {})`: absent, or an object
        form.get(form.get(m, "options", "", "object"), "max_len", "options", "length", optional=True)
    if (template := form.get(m, "template", "", "object", optional=True)) is not None:
        form.get(template, "name", "template", "text", optional=True)
    if "inputs" in m:
        form.items(m, "inputs")


def _check_recipe_form(form: _Form, m: dict[str, Any]) -> None:
    splits = form.get(m, "splits", "", "object")
    if not splits:
        form.fail("splits", f"at least one split ({', '.join(SPLIT_FOLDERS)})", splits)
    for name, split in splits.items():
        if name not in SPLIT_FOLDERS:
            form.fail("splits", f"only the splits {', '.join(SPLIT_FOLDERS)}", name)
        if not isinstance(split, dict):
            form.fail(f"splits.{name}", "an object", split)
        if split.get("path") != name:
            form.fail(
                f"splits.{name}.path", f'"{name}" (the split\'s folder in this output)', split.get("path", _ABSENT)
            )
        form.get(split, "rows", f"splits.{name}", "count")
        form.get(split, "manifest_sha256", f"splits.{name}", "sha256")
    for where, source in form.items(m, "sources"):
        form.get(source, "name", where, "text")
        form.get(source, "rows_read", where, "count")
        form.get(source, "rows_rejected", where, "count")
        for name in splits:
            stats = form.get(source, name, where, "object")
            for key in ("examples", "tokens", "trained_tokens"):
                form.get(stats, key, f"{where}.{name}", "count")


def shard_paths(folder: Path, manifest: dict[str, Any]) -> list[Path]:
    """The shard files a checked manifest (`read_manifest`) of a non-recipe output lists, in order."""
    return [Path(folder) / s["file"] for s in manifest["shards"]]


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
    return _verify_shards(folder, manifest, tokenizer)


def _verify_shards(folder: Path, manifest: dict[str, Any], tokenizer: str | None) -> dict[str, Any]:
    """A non-recipe output: its shards, its rejects file and its tokenizer fingerprint."""
    stage = manifest["stage"]
    listed = {s["file"] for s in manifest["shards"]}
    for extra in sorted(p.name for p in folder.glob("part-*.parquet") if p.name not in listed):
        raise VerifyError(f"{folder / extra}: shard not listed in the manifest")
    max_len = int(manifest["packing"]["max_len"]) if stage == "packed" else None
    for shard, path in zip(manifest["shards"], shard_paths(folder, manifest), strict=True):
        if not path.is_file():
            raise VerifyError(f"{path}: shard listed in the manifest is missing")
        if file_sha256(path) != shard["sha256"]:
            raise VerifyError(
                f"{path}: checksum mismatch (sha256 differs from the manifest): the shard was changed or damaged"
            )
        rows = _verify_shard(path, SCHEMAS[stage], stage, max_len)
        if rows != shard["rows"]:
            raise VerifyError(f"{path}: {rows} rows, the manifest says {shard['rows']}")
    _verify_rejects(folder, manifest["rejects"])
    if stage != "normalized" and tokenizer is not None:
        from dsprep.tokenizers import load_tokenizer

        check_fingerprint(manifest, load_tokenizer(tokenizer).fingerprint, tokenizer)
    return manifest


def _verify_rejects(folder: Path, rejects: dict[str, Any]) -> None:
    """The rejects file has the sha256 and the number of lines (one per rejected row) the manifest records."""
    path = folder / REJECTS
    h, lines = hashlib.sha256(), 0
    try:
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
                lines += chunk.count(b"\n")
    except FileNotFoundError:
        raise VerifyError(f"{path}: missing; the manifest records {rejects['rows']} rejected rows there") from None
    except OSError as exc:
        raise VerifyError(f"{path}: cannot be read ({exc.strerror})") from None
    if h.hexdigest() != rejects["sha256"]:
        raise VerifyError(f"{path}: checksum mismatch (sha256 differs from the manifest): the file was changed")
    if lines != rejects["rows"]:
        raise VerifyError(f"{path}: {lines} rejected rows, the manifest says {rejects['rows']}")


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
    """A recipe output: its rejects file, no split folder left out of the manifest, and each split folder's manifest
    as recorded, and each split in full."""
    _verify_rejects(folder, manifest["rejects"])
    for extra in (name for name in SPLIT_FOLDERS if name not in manifest["splits"] and (folder / name).exists()):
        raise VerifyError(f"{folder / extra}: split folder not listed in the manifest")
    for name, split in manifest["splits"].items():
        sub = folder / split["path"]
        if not (sub / MANIFEST).is_file() or file_sha256(sub / MANIFEST) != split["manifest_sha256"]:
            raise VerifyError(f"{sub / MANIFEST}: missing, or not the {name} manifest the recipe manifest records")
        split_manifest = read_manifest(sub)
        if split_manifest["stage"] == "recipe":
            raise VerifyError(f"{sub / MANIFEST}: a recipe manifest, not the manifest of a split's shards")
        _verify_shards(sub, split_manifest, tokenizer)
    return manifest


def check_fingerprint(manifest: dict[str, Any], fingerprint: str, name: str) -> None:
    """Raise VerifyError unless the manifest's tokenizer fingerprint equals `fingerprint`."""
    recorded = manifest.get("tokenizer") or {}
    if recorded.get("fingerprint") != fingerprint:
        raise VerifyError(
            f"tokenizer mismatch: the shards were tokenized with {recorded.get('name')!r} "
            f"(fingerprint {str(recorded.get('fingerprint'))[:12]}…), "
            f"but {name!r} has fingerprint {fingerprint[:12]}…; "
            "re-run dsprep convert with this tokenizer"
        )
