"""`dsprep verify`: prove an output folder is exactly what its manifest says, before anything trains on it.

Checks: the manifest parses and has the form dsprep writes (`read_manifest`: each value of the type it must have,
shards named as dsprep names them and each listed once, the schema version this dsprep reads); every shard it lists
exists with its sha256 and row count, and no other shard is present; the rejects file has its recorded sha256 and
rows; each shard has the schema of its stage; packed rows keep their invariants (no nulls, `input_ids`, `labels` and
`position_ids` of one length, `num_tokens`, one `seq_lens` entry of at least 1 per example id and none empty,
`position_ids` restarting exactly at the `seq_lens` boundaries, each example's first label -100, no row over the
packing length); tokenized and packed rows hold token ids in 0..`tokenizer.vocab_size`-1, every label is -100 or the
input id at its position, and each unpacked row and each packed example has a label other than -100 after its first
token (else it trains nothing); the counts the shards determine are the manifest's (packed rows and tokens, the rest
of the packing report, rows kept), and `packing` agrees with `options`; a tokenizer fingerprint is recorded, and
matches the tokenizer given, as does its vocabulary size. An output that holds no row is refused where a trainer is
to read it. A recipe output is verified split by split, each split's manifest against the checksum the recipe
manifest records, and each split's rows and examples against its manifest; its train split must hold a row.

Example ids are not checked for uniqueness: an id is a hash of an input's file name, a row's place and its bytes, so
the rows of two copies of one file (in two folders, converted together) share their ids.
"""

from __future__ import annotations

import hashlib
import math
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
from dsprep.pack import IGNORE
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
        form.get(tokenizer, "vocab_size", "tokenizer", "length", optional=True)
    packing = form.get(m, "packing", "", "object", optional=stage != "packed")
    if packing is not None:
        form.get(packing, "max_len", "packing", "length")
        form.get(packing, "rows", "packing", "count")
        form.get(packing, "tokens", "packing", "count")
        form.get(packing, "efficiency", "packing", "number")
        for key in ("slots", "lower_bound", "rows_above_bound", "examples_per_row_min", "examples_per_row_max"):
            form.get(packing, key, "packing", "number" if key == "rows_above_bound" else "count")
        form.get(packing, "examples_per_row_mean", "packing", "number")
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
    """What shards hold: rows, and for packed rows their tokens (`num_tokens`), examples (`seq_lens` entries) and the
    fewest and most examples in a row."""

    rows: int
    tokens: int = 0
    examples: int = 0
    fewest: int = 0
    most: int = 0

    def plus(self, other: _Counts) -> _Counts:
        """Both counts together (the fewest and most examples in a row: of those that hold rows)."""
        if not other.rows:
            return self
        if not self.rows:
            return other
        return _Counts(self.rows + other.rows, self.tokens + other.tokens, self.examples + other.examples,
                       min(self.fewest, other.fewest), max(self.most, other.most))  # fmt: skip


_LISTS = ("input_ids", "labels", "position_ids", "seq_lens", "example_ids")
_TOKEN_LISTS = ("input_ids", "prompt_input_ids", "chosen_input_ids", "rejected_input_ids", "completion_input_ids")
_Fail = Callable[[int, str], NoReturn]  # fail(row counted in the table, message)


class _Flat(NamedTuple):
    """A list column's values laid end to end, and each row's offsets into them (from 0; a null row is empty)."""

    values: np.ndarray
    offsets: np.ndarray  # int64, one more than the rows

    @classmethod
    def of(cls, column: str, array: pa.ListArray, fail: _Fail) -> _Flat:
        """`array`'s values and offsets; a null value among them fails its row."""
        offsets = array.offsets.to_numpy().astype(np.int64)
        values = array.values.slice(int(offsets[0]), int(offsets[-1] - offsets[0]))
        offsets -= offsets[0]
        if values.null_count:
            at = int(np.flatnonzero(values.is_null().to_numpy(zero_copy_only=False))[0])
            fail(int(np.searchsorted(offsets[1:], at, side="right")), f"{column} holds a null")
        return cls(values.to_numpy(), offsets)

    def locate(self, at: int) -> tuple[int, int]:
        """The row holding value `at`, and its place in that row."""
        row = int(np.searchsorted(self.offsets[1:], at, side="right"))
        return row, at - int(self.offsets[row])


def _check_ids(column: str, flat: _Flat, vocab: int | None, fail: _Fail) -> None:
    """Every value of a token column is a token id: at least 0, and below `vocab` (`tokenizer.vocab_size`) if known.
    Vectorized: the min and max first, the first offending value only when there is one."""
    ids = flat.values
    if not len(ids) or (ids.min() >= 0 and (vocab is None or ids.max() < vocab)):
        return
    at = int(np.flatnonzero((ids < 0) | (ids >= vocab) if vocab is not None else ids < 0)[0])
    row, token = flat.locate(at)
    expected = "of at least 0" if vocab is None else f"from 0 to {vocab - 1} (tokenizer.vocab_size is {vocab})"
    fail(row, f"{column}[{token}] is {int(ids[at])}; expected a token id {expected}")


def _check_labels(ids: _Flat, labels: np.ndarray, fail: _Fail) -> None:
    """Every label is -100 or the input id at its position (as long as `ids.values`); a label equal to a neighbouring
    id (labels shifted by one) or to any other value breaks the trainers' own shift."""
    bad = (labels != IGNORE) & (labels != ids.values)
    if bad.any():
        at = int(np.flatnonzero(bad)[0])
        row, token = ids.locate(at)
        fail(row, f"labels[{token}] is {int(labels[at])}; expected -100 or input_ids[{token}] ({int(ids.values[at])})")


def _untrained(labels: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """The indices of the spans [start, end) of `labels` with no label but -100 after their first position: they
    train nothing, since a trainer compares each token's prediction with the next token's label."""
    trained = np.concatenate([[0], np.cumsum(labels != IGNORE, dtype=np.int64)])
    return np.flatnonzero(trained[ends] == trained[np.minimum(starts + 1, ends)])


def _tokenized_invariants(name: str, table: pa.Table, vocab: int | None, first_row: int = 0) -> None:
    """Raise VerifyError naming the first row (counted in the shard) of a tokenized table whose token columns hold
    a value that is no token id, or whose `labels` do not match `input_ids` (null together, as long, each label -100
    or the id at its position, one at least after the first token)."""

    def fail(row: int, message: str) -> NoReturn:
        raise VerifyError(f"{name}: row {first_row + row}: {message}")

    arrays = {c: table.column(c).combine_chunks() for c in (*_TOKEN_LISTS, "labels")}
    flats = {c: _Flat.of(c, a, fail) for c, a in arrays.items()}
    for column in _TOKEN_LISTS:
        _check_ids(column, flats[column], vocab, fail)
    has_ids = arrays["input_ids"].is_valid().to_numpy(zero_copy_only=False)
    has_labels = arrays["labels"].is_valid().to_numpy(zero_copy_only=False)
    if not np.array_equal(has_ids, has_labels):
        row = int(np.flatnonzero(has_ids != has_labels)[0])
        fail(row, "labels is null, input_ids is not" if has_ids[row] else "input_ids is null, labels is not")
    ids, labels = flats["input_ids"], flats["labels"]
    n, m = np.diff(ids.offsets), np.diff(labels.offsets)
    if not np.array_equal(n, m):
        row = int(np.flatnonzero(n != m)[0])
        fail(row, f"labels has {int(m[row])} values, input_ids has {int(n[row])}")
    _check_labels(ids, labels.values, fail)
    rows = np.flatnonzero(has_ids)
    if len(untrained := _untrained(labels.values, ids.offsets[rows], ids.offsets[rows + 1])):
        fail(int(rows[untrained[0]]), "no label but -100 after the first token; expected one at least (the row "
             "trains nothing)")  # fmt: skip


def _packed_invariants(name: str, table: pa.Table, max_len: int, vocab: int | None, first_row: int = 0) -> _Counts:
    """Raise VerifyError naming the first row (counted in the shard: `table` starts at row `first_row`) whose packed
    invariants do not hold; else the table's counts. The shape the arithmetic relies on is checked first: no nulls,
    `labels` and `position_ids` as long as `input_ids` and `num_tokens`, as many `seq_lens` as `example_ids`, each
    at least 1, and no empty row. Then the tokens: ids below `vocab`, labels -100 or their input id, and each
    example trained after its first token."""

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
    flat_labels = labels.flatten().to_numpy()
    first_labels = flat_labels[starts]
    if (first_labels != -100).any():
        row, token = located(int(starts[np.flatnonzero(first_labels != -100)[0]]))
        fail(row, f"an example's first label is not -100 (token {token} of the row), so a label crosses a boundary")
    flat_ids = _Flat(ids.flatten().to_numpy(), np.concatenate([[0], ends]))
    _check_ids("input_ids", flat_ids, vocab, fail)
    _check_labels(flat_ids, flat_labels, fail)
    if len(untrained := _untrained(flat_labels, starts, starts + lens)):
        k = int(untrained[0])
        row, token = located(int(starts[k]))
        example = _shown(columns["example_ids"].flatten()[k].as_py())
        fail(row, f"the example at token {token} of the row ({example}) has no label but -100 after its first "
             "token; expected one at least (it trains nothing)")  # fmt: skip
    fewest, most = (int(counts.min()), int(counts.max())) if len(counts) else (0, 0)
    return _Counts(table.num_rows, int(n.sum()), len(lens), fewest, most)


def verify_output(folder: Path, *, tokenizer: str | None = None, tokens_required: bool = True) -> dict[str, Any]:
    """Verify `folder` against its manifest; returns the manifest, or raises VerifyError naming the problem.

    `tokens_required` (the default) is for a caller that trains on the output: an output that holds no row (a
    recipe's: no train row) is refused, and with `tokenizer` so are normalized ones (which hold no tokens); inspect,
    which reports what an output holds, passes False. With `tokenizer`, tokenized shards must have been made with it.
    """
    folder = Path(folder)
    manifest = read_manifest(folder)
    if manifest["stage"] == "recipe":
        return _verify_recipe(folder, manifest, tokenizer, tokens_required)
    return _verify_shards(folder, manifest, tokenizer, tokens_required, rows_required=tokens_required)


def _verify_shards(
    folder: Path, manifest: dict[str, Any], tokenizer: str | None, tokens_required: bool, *, rows_required: bool
) -> dict[str, Any]:
    """A non-recipe output: its shards, its rejects file and its tokenizer fingerprint; with `rows_required`, a row
    at least."""
    stage = manifest["stage"]
    listed = {s["file"] for s in manifest["shards"]}
    for extra in sorted(p.name for p in folder.glob("part-*.parquet") if p.name not in listed):
        raise VerifyError(f"{folder / extra}: shard not listed in the manifest")
    max_len = int(manifest["packing"]["max_len"]) if stage == "packed" else None
    vocab = (manifest.get("tokenizer") or {}).get("vocab_size")
    total = _Counts(0)
    for shard, path in zip(manifest["shards"], shard_paths(folder, manifest), strict=True):
        if not path.is_file():
            raise VerifyError(f"{path}: shard listed in the manifest is missing")
        if file_sha256(path) != shard["sha256"]:
            raise VerifyError(
                f"{path}: checksum mismatch (sha256 differs from the manifest): the shard was changed or damaged"
            )
        counts = _verify_shard(path, SCHEMAS[stage], stage, max_len, vocab)
        if counts.rows != shard["rows"]:
            raise VerifyError(f"{path}: {counts.rows} rows, the manifest says {shard['rows']}")
        total = total.plus(counts)
    _verify_counts(folder / MANIFEST, manifest, total)
    _verify_rejects(folder, manifest["rejects"])
    if rows_required and not total.rows:
        rejected = manifest["rejects"]["rows"]
        why = f": see {folder / REJECTS} for each row's reason" if rejected else ""
        raise VerifyError(f"{folder}: holds no rows a trainer can use (0 rows kept, {rejected} rejected{why})")
    if tokenizer is not None:
        if stage == "normalized":
            if not tokens_required:
                return manifest
            raise VerifyError(
                f"{folder}: normalized output, made without a tokenizer: it holds no tokens to match {tokenizer}"
            )
        from dsprep.tokenizers import load_tokenizer

        facts = load_tokenizer(tokenizer).facts
        check_fingerprint(manifest, facts.fingerprint, tokenizer)
        if vocab is not None and vocab != facts.vocab_size:
            raise VerifyError(
                f"{folder / MANIFEST}: tokenizer.vocab_size: {vocab} in the manifest, {tokenizer} has "
                f"{facts.vocab_size} tokens"
            )
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
        _verify_packing(path, packing, manifest.get("options", {}), total)
    kept = manifest["totals"]["rows_kept"]
    split = manifest.get("options", {}).get("overflow") == "split"
    if kept != total.examples and not (split and 0 < kept < total.examples):
        differs("totals.rows_kept", kept, total.examples, "examples")
    if "inputs" in manifest and (inputs := sum(i["rows_kept"] for i in manifest["inputs"])) != kept:
        raise VerifyError(f"{path}: inputs[].rows_kept: add up to {inputs}, totals.rows_kept is {kept}")


def _verify_packing(path: Path, packing: dict[str, Any], options: dict[str, Any], total: _Counts) -> None:
    """The rest of the packing report is what `dsprep.pack.PackReport` makes of the shards' rows, tokens and examples
    at `packing.max_len`, which (with `shuffle_seed`) is the run's `options.pack`."""
    max_len = packing["max_len"]
    for key, option in (("max_len", "pack"), ("shuffle_seed", "shuffle_seed")):
        if option in options and key in packing and options[option] != packing[key]:
            raise VerifyError(
                f"{path}: packing.{key}: {_shown(packing[key])} in the manifest, options.{option} is "
                f"{_shown(options[option])}"
            )
    rows, tokens = total.rows, total.tokens
    bound = -(-tokens // max_len)
    expected: list[tuple[str, float, str]] = [
        ("slots", rows * max_len, f"{rows} rows of {max_len}"),
        ("efficiency", tokens / (rows * max_len) if rows else 1.0, f"{tokens} tokens in {rows * max_len} slots"),
        ("lower_bound", bound, f"{tokens} tokens in rows of {max_len}"),
        ("rows_above_bound", rows - bound, f"{rows} rows, at least {bound}"),
        ("examples_per_row_min", total.fewest, "the fewest examples in a row"),
        ("examples_per_row_mean", total.examples / rows if rows else 0.0, f"{total.examples} examples in {rows} rows"),
        ("examples_per_row_max", total.most, "the most examples in a row"),
    ]
    for key, value, why in expected:
        if packing[key] != value if isinstance(value, int) else not math.isclose(packing[key], value, rel_tol=1e-12):
            raise VerifyError(f"{path}: packing.{key}: {packing[key]} in the manifest, expected {value} ({why})")


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


def _verify_shard(path: Path, schema: pa.Schema, stage: str, max_len: int | None, vocab: int | None) -> _Counts:
    """Read one shard row group by row group (memory: one row group, whatever the shard's size), checking its schema
    and, packed (`max_len`) or tokenized, each row's invariants; returns its counts (an unpacked row is one
    example)."""
    counts = _Counts(0)
    try:
        with pq.ParquetFile(path) as parquet:
            if not parquet.schema_arrow.equals(schema, check_metadata=False):
                raise VerifyError(f"{path}: schema differs from the {stage} schema")
            for group in range(parquet.metadata.num_row_groups):
                table = parquet.read_row_group(group)
                got = _Counts(table.num_rows, 0, table.num_rows)
                if max_len is not None:
                    got = _packed_invariants(str(path), table, max_len, vocab, counts.rows)
                elif stage == "tokenized":
                    _tokenized_invariants(str(path), table, vocab, counts.rows)
                counts = counts.plus(got)
    except (pa.ArrowException, OSError) as exc:
        raise VerifyError(f"{path}: cannot read as Parquet ({exc})") from None
    return counts


def _verify_recipe(
    folder: Path, manifest: dict[str, Any], tokenizer: str | None, tokens_required: bool
) -> dict[str, Any]:
    """A recipe output: its rejects file, no split folder left out of the manifest, and each split folder's manifest
    as recorded, and each split in full; with `tokens_required`, a train row at least (eval may be empty)."""
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
        _verify_shards(sub, split_manifest, tokenizer, tokens_required, rows_required=False)
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
    if tokens_required and not manifest["splits"].get("train", {}).get("rows"):
        raise VerifyError(
            f"{folder}: holds no rows a trainer can use (its train split kept no row: see {folder / REJECTS} for each "
            "row's reason)"
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
