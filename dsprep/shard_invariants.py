"""One output shard, read row group by row group (`verify_shard`): its stage's schema and, tokenized or packed, its
rows' invariants. Packed rows: no nulls, `input_ids`, `labels` and `position_ids` of one length, `num_tokens`, one
`seq_lens` entry of at least 1 per example id and none empty, `position_ids` restarting exactly at the `seq_lens`
boundaries, each example's first label -100, no row over the packing length. Tokenized and packed rows hold token ids
in 0..`tokenizer.vocab_size`-1, every label is -100 or the input id at its position, and each unpacked row and each
packed example has a label other than -100 after its first token (else it trains nothing).

Example ids are not checked for uniqueness: an id is a hash of an input's file name, a row's place and its bytes, so
the rows of two copies of one file (in two folders, converted together) share their ids.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple, NoReturn

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from dsprep.errors import VerifyError
from dsprep.manifest_form import shown
from dsprep.pack import IGNORE

__all__ = ["ShardCounts", "verify_shard"]


class ShardCounts(NamedTuple):
    """What shards hold: rows, and for packed rows their tokens (`num_tokens`), examples (`seq_lens` entries) and the
    fewest and most examples in a row."""

    rows: int
    tokens: int = 0
    examples: int = 0
    fewest: int = 0
    most: int = 0

    def plus(self, other: ShardCounts) -> ShardCounts:
        """Both counts together (the fewest and most examples in a row: of those that hold rows)."""
        if not other.rows:
            return self
        if not self.rows:
            return other
        return ShardCounts(self.rows + other.rows, self.tokens + other.tokens, self.examples + other.examples,
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


def _packed_invariants(name: str, table: pa.Table, max_len: int, vocab: int | None, first_row: int = 0) -> ShardCounts:
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
        example = shown(columns["example_ids"].flatten()[k].as_py())
        fail(row, f"the example at token {token} of the row ({example}) has no label but -100 after its first "
             "token; expected one at least (it trains nothing)")  # fmt: skip
    fewest, most = (int(counts.min()), int(counts.max())) if len(counts) else (0, 0)
    return ShardCounts(table.num_rows, int(n.sum()), len(lens), fewest, most)


def verify_shard(path: Path, schema: pa.Schema, stage: str, max_len: int | None, vocab: int | None) -> ShardCounts:
    """Read one shard row group by row group (memory: one row group, whatever the shard's size), checking its schema
    and, packed (`max_len`) or tokenized, each row's invariants; returns its counts (an unpacked row is one
    example)."""
    counts = ShardCounts(0)
    try:
        with pq.ParquetFile(path) as parquet:
            if not parquet.schema_arrow.equals(schema, check_metadata=False):
                raise VerifyError(f"{path}: schema differs from the {stage} schema")
            for group in range(parquet.metadata.num_row_groups):
                table = parquet.read_row_group(group)
                got = ShardCounts(table.num_rows, 0, table.num_rows)
                if max_len is not None:
                    got = _packed_invariants(str(path), table, max_len, vocab, counts.rows)
                elif stage == "tokenized":
                    _tokenized_invariants(str(path), table, vocab, counts.rows)
                counts = counts.plus(got)
    except (pa.ArrowException, OSError) as exc:
        raise VerifyError(f"{path}: cannot read as Parquet ({exc})") from None
    return counts
