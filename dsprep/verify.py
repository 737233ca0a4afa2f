"""`dsprep verify`: prove an output folder is exactly what its manifest says, before anything trains on it.

Checks: the manifest parses and has the form dsprep writes (`read_manifest`: each value of the type it must have,
shards named as dsprep names them and each listed once, the schema version this dsprep reads); every shard it lists
exists with its sha256 and row count, and no other shard is present; the rejects file has its recorded sha256 and
rows; each shard has the schema of its stage; packed rows keep their invariants (no nulls, `input_ids`, `labels` and
`position_ids` of one length, `num_tokens`, one `seq_lens` entry of at least 1 per example id and none empty,
`position_ids` restarting exactly at the `seq_lens` boundaries, each example's first label -100, no row over the
packing length); the counts the shards determine are the manifest's (packed rows and tokens, rows kept); a tokenizer
fingerprint is recorded, and matches the tokenizer given. A recipe output is verified split by split, each split's
manifest against the checksum the recipe manifest records, and each split's rows and examples against its manifest.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple, NoReturn

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
        form.get(packing, "tokens", "packing", "count")
        form.get(packing, "efficiency", "packing", "number")
    if "options" in m:  # read as `manifest.get("options", {})`: absent, or an object
        form.get(form.get(m, "options", "", "object"), "max_len", "options", "length", optional=True)
    if (template := form.get(m, "template", "", "object", optional=True)) is not None:
        form.get(template, "name", "template", "text", optional=True)
    form.get(form.get(m, "totals", "", "object"), "rows_kept", "totals", "count")
    if "inputs" in m:
        for where, item in form.items(m, "inputs"):
            form.get(item, "rows_kept", where, "count")


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
        form.get(split, "examples", f"splits.{name}", "count")
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


class _Counts(NamedTuple):
    """What shards hold: rows, and for packed rows their tokens (`num_tokens`) and examples (`seq_lens` entries)."""

    rows: int
    tokens: int = 0
    examples: int = 0

    def plus(self, other: _Counts) -> _Counts:
        """Both counts together."""
        return _Counts(*(a + b for a, b in zip(self, other, strict=True)))


_LISTS = ("input_ids", "labels", "position_ids", "seq_lens", "example_ids")


def _packed_invariants(name: str, table: pa.Table, max_len: int, first_row: int = 0) -> _Counts:
    """Raise VerifyError naming the first row (counted in the shard: `table` starts at row `first_row`) whose packed
    invariants do not hold; else the table's counts. The shape the arithmetic relies on is checked first: no nulls,
    `labels` and `position_ids` as long as `input_ids` and `num_tokens`, as many `seq_lens` as `example_ids`, each
    at least 1, and no empty row."""

    def fail(row: int, message: str) -> NoReturn:
        raise VerifyError(f"{name}: row {first_row + row}: {message}")

    columns = {c: table.column(c).combine_chunks() for c in (*_LISTS, "num_tokens")}
    for column, values in columns.items():
        if values.null_count:
            fail(int(np.flatnonzero(values.is_null().to_numpy(zero_copy_only=False))[0]), f"{column} is null")
        if column in _LISTS and (flat := values.flatten()).null_count:
            first = int(np.flatnonzero(flat.is_null().to_numpy(zero_copy_only=False))[0])
            fail(int(pc.list_parent_indices(values)[first].as_py()), f"{column} holds a null")
    ids, labels, positions, seq_lens = (columns[c] for c in ("input_ids", "labels", "position_ids", "seq_lens"))
    n = pc.list_value_length(ids).to_numpy()
    for column, other in (
        ("labels", pc.list_value_length(labels).to_numpy()),
        ("position_ids", pc.list_value_length(positions).to_numpy()),
        ("num_tokens", columns["num_tokens"].to_numpy()),
    ):
        if not np.array_equal(n, other):
            row = int(np.flatnonzero(n != other)[0])
            said = f"says {int(other[row])}" if column == "num_tokens" else f"has {int(other[row])} values"
            fail(row, f"{column} {said}, input_ids has {int(n[row])}")
    counts = pc.list_value_length(seq_lens).to_numpy()
    named = pc.list_value_length(columns["example_ids"]).to_numpy()
    if not np.array_equal(counts, named):
        row = int(np.flatnonzero(counts != named)[0])
        fail(row, f"seq_lens has {int(counts[row])} entries, example_ids {int(named[row])}")
    if (counts == 0).any():
        fail(int(np.flatnonzero(counts == 0)[0]), "an empty packed row (seq_lens lists no example)")
    lens = seq_lens.flatten().to_numpy().astype(np.int64)
    if len(lens) and lens.min() < 1:
        at = int(np.flatnonzero(lens < 1)[0])
        row = int(pc.list_parent_indices(seq_lens)[at].as_py())
        fail(row, f"seq_lens holds {int(lens[at])}; every example has at least 1 token")
    if len(n) and n.max() > max_len:
        row = int(np.argmax(n))
        fail(row, f"{int(n[row])} tokens, over the packing length {max_len}")
    offsets = seq_lens.offsets.to_numpy()
    sums = np.add.reduceat(lens, offsets[:-1] - offsets[0]) if len(lens) else np.zeros(0, np.int64)
    if not np.array_equal(sums, n):
        row = int(np.flatnonzero(sums != n)[0])
        fail(row, f"seq_lens add up to {int(sums[row])}, the row has {int(n[row])} tokens")
    starts = np.cumsum(lens) - lens
    expected = np.arange(int(lens.sum()), dtype=np.int64) - np.repeat(starts, lens)
    flat_positions = positions.flatten().to_numpy().astype(np.int64)
    ends = np.cumsum(n)

    def located(at: int) -> tuple[int, int]:
        """The row (counted in the table) holding token `at` of the table's flattened tokens, and its place there."""
        row = int(np.searchsorted(ends, at, side="right"))
        return row, at - int(ends[row] - n[row])

    if not np.array_equal(flat_positions, expected):
        row, token = located(int(np.flatnonzero(flat_positions != expected)[0]))
        fail(row, f"position_ids do not restart at the seq_lens boundaries (token {token} of the row)")
    first_labels = labels.flatten().to_numpy()[starts]
    if (first_labels != -100).any():
        row, token = located(int(starts[np.flatnonzero(first_labels != -100)[0]]))
        fail(row, f"an example's first label is not -100 (token {token} of the row), so a label crosses a boundary")
    return _Counts(table.num_rows, int(n.sum()), len(lens))


def verify_output(folder: Path, *, tokenizer: str | None = None, tokens_required: bool = True) -> dict[str, Any]:
    """Verify `folder` against its manifest; returns the manifest, or raises VerifyError naming the problem.

    With `tokenizer`, tokenized shards must have been made with it, and normalized ones (which hold no tokens) are
    refused unless `tokens_required` is False.
    """
    folder = Path(folder)
    manifest = read_manifest(folder)
    if manifest["stage"] == "recipe":
        return _verify_recipe(folder, manifest, tokenizer, tokens_required)
    return _verify_shards(folder, manifest, tokenizer, tokens_required)


def _verify_shards(
    folder: Path, manifest: dict[str, Any], tokenizer: str | None, tokens_required: bool
) -> dict[str, Any]:
    """A non-recipe output: its shards, its rejects file and its tokenizer fingerprint."""
    stage = manifest["stage"]
    listed = {s["file"] for s in manifest["shards"]}
    for extra in sorted(p.name for p in folder.glob("part-*.parquet") if p.name not in listed):
        raise VerifyError(f"{folder / extra}: shard not listed in the manifest")
    max_len = int(manifest["packing"]["max_len"]) if stage == "packed" else None
    total = _Counts(0)
    for shard, path in zip(manifest["shards"], shard_paths(folder, manifest), strict=True):
        if not path.is_file():
            raise VerifyError(f"{path}: shard listed in the manifest is missing")
        if file_sha256(path) != shard["sha256"]:
            raise VerifyError(
                f"{path}: checksum mismatch (sha256 differs from the manifest): the shard was changed or damaged"
            )
        counts = _verify_shard(path, SCHEMAS[stage], stage, max_len)
        if counts.rows != shard["rows"]:
            raise VerifyError(f"{path}: {counts.rows} rows, the manifest says {shard['rows']}")
        total = total.plus(counts)
    _verify_counts(folder / MANIFEST, manifest, total)
    _verify_rejects(folder, manifest["rejects"])
    if tokenizer is not None:
        if stage == "normalized":
            if not tokens_required:
                return manifest
            raise VerifyError(
                f"{folder}: normalized output, made without a tokenizer: it holds no tokens to match {tokenizer}"
            )
        from dsprep.tokenizers import load_tokenizer

        check_fingerprint(manifest, load_tokenizer(tokenizer).fingerprint, tokenizer)
    return manifest


def _verify_counts(path: Path, manifest: dict[str, Any], total: _Counts) -> None:
    """The manifest's counts that the shards determine are theirs: packed, `packing.rows` and `packing.tokens`;
    `totals.rows_kept` is the examples the shards hold (at most that with `overflow: split`, which cuts a kept text
    row into several), and the sum of `inputs[].rows_kept`."""

    def differs(field: str, recorded: int, held: int, what: str) -> NoReturn:
        raise VerifyError(f"{path}: {field}: {recorded} in the manifest, the shards hold {held} {what}")

    if (packing := manifest.get("packing")) is not None:
        if packing["rows"] != total.rows:
            differs("packing.rows", packing["rows"], total.rows, "rows")
        if packing["tokens"] != total.tokens:
            differs("packing.tokens", packing["tokens"], total.tokens, "tokens")
    kept = manifest["totals"]["rows_kept"]
    split = manifest.get("options", {}).get("overflow") == "split"
    if kept != total.examples and not (split and 0 < kept < total.examples):
        differs("totals.rows_kept", kept, total.examples, "examples")
    if "inputs" in manifest and (inputs := sum(i["rows_kept"] for i in manifest["inputs"])) != kept:
        raise VerifyError(f"{path}: inputs[].rows_kept: add up to {inputs}, totals.rows_kept is {kept}")


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


def _verify_shard(path: Path, schema: pa.Schema, stage: str, max_len: int | None) -> _Counts:
    """Read one shard row group by row group (memory: one row group, whatever the shard's size), checking its schema
    and, with `max_len` (packed), each row's invariants; returns its counts (an unpacked row is one example)."""
    counts = _Counts(0)
    try:
        with pq.ParquetFile(path) as parquet:
            if not parquet.schema_arrow.equals(schema, check_metadata=False):
                raise VerifyError(f"{path}: schema differs from the {stage} schema")
            for group in range(parquet.metadata.num_row_groups):
                table = parquet.read_row_group(group)
                got = _Counts(table.num_rows, 0, table.num_rows)
                if max_len is not None:
                    got = _packed_invariants(str(path), table, max_len, counts.rows)
                counts = counts.plus(got)
    except (pa.ArrowException, OSError) as exc:
        raise VerifyError(f"{path}: cannot read as Parquet ({exc})") from None
    return counts


def _verify_recipe(
    folder: Path, manifest: dict[str, Any], tokenizer: str | None, tokens_required: bool
) -> dict[str, Any]:
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
        _verify_shards(sub, split_manifest, tokenizer, tokens_required)
        held = (
            ("rows", sum(s["rows"] for s in split_manifest["shards"]), "rows"),
            ("examples", split_manifest["totals"]["rows_kept"], "examples kept"),
        )
        for key, count, what in held:
            if split[key] != count:
                raise VerifyError(
                    f"{folder / MANIFEST}: splits.{name}.{key}: {split[key]} in the manifest, the split holds {count} "
                    f"{what}"
                )
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
