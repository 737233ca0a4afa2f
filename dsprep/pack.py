"""Stage 4: pack tokenized examples into rows of at most L tokens, globally, with best-fit decreasing.

The plan needs only the lengths. Examples are taken longest first; each goes to the open row with the least free
space that still fits it, or opens a new row. Examples of equal length are interchangeable, so the plan works per
distinct length rather than per example: a row with free space ``s`` takes ``s // x`` examples of length ``x`` at
once (it stays the best fit until it cannot take another), rows with equal free space are filled in the order they
were opened, and rows are moved between free-space buckets in bulk. The cost is O(n log n) for the sort plus
O(distinct lengths × occupied free-space buckets) — no loop over examples.

A packed row (L = 16, three examples of lengths 5, 4 and 6)::

    input_ids     a0 a1 a2 a3 a4 | b0 b1 b2 b3 | c0 c1 c2 c3 c4 c5
    labels        -- a1 a2 a3 a4 | -- b1 b2 b3 | -- c1 c2 c3 c4 c5      (-- = -100: no label crosses a boundary)
    position_ids   0  1  2  3  4 |  0  1  2  3 |  0  1  2  3  4  5
    seq_lens      [5, 4, 6]

Rows are not padded; padding is the loader's job. The first label of every example is -100, so after the model's
internal shift no example is trained to predict the next one's first token, and the number of supervised targets
is the same packed and unpacked.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from dsprep.schema import PACKED, int32_array

__all__ = ["PackPlan", "PackReport", "materialize", "packed_table", "plan_packing"]

IGNORE = -100
REPAIR_MAX_EXAMPLES = 50_000_000  # the repair visits every row left with slack; beyond this best fit alone is used
SINK_ROWS = 64


@dataclass(frozen=True)
class PackPlan:
    """Which examples go to which row: `order` lists example indices row by row, `row_counts` how many per row."""

    max_len: int
    order: np.ndarray  # int64, every example index exactly once
    row_counts: np.ndarray  # int64, examples per row
    lengths: np.ndarray  # int64, the length of each example (indexed by example)

    @property
    def rows(self) -> int:
        return len(self.row_counts)

    def row_lengths(self) -> np.ndarray:
        """Tokens in each packed row."""
        starts = np.concatenate([[0], np.cumsum(self.row_counts)[:-1]]) if self.rows else np.zeros(0, np.int64)
        return np.add.reduceat(self.lengths[self.order], starts) if self.rows else np.zeros(0, np.int64)

    def shuffled(self, seed: int) -> PackPlan:
        """The same rows in a seeded random order."""
        perm = np.random.default_rng(seed).permutation(self.rows)
        starts = np.concatenate([[0], np.cumsum(self.row_counts)])
        order = np.concatenate([self.order[starts[r] : starts[r + 1]] for r in perm]) if self.rows else self.order
        return PackPlan(self.max_len, order, self.row_counts[perm], self.lengths)


@dataclass(frozen=True)
class PackReport:
    """How good a plan is: efficiency against the slots, and distance from the lower bound ⌈Σlen / L⌉."""

    rows: int
    tokens: int
    slots: int
    efficiency: float
    lower_bound: int
    rows_above_bound: int
    examples_per_row_min: int
    examples_per_row_mean: float
    examples_per_row_max: int

    @classmethod
    def of(cls, plan: PackPlan) -> PackReport:
        tokens = int(plan.lengths.sum())
        bound = math.ceil(tokens / plan.max_len) if tokens else 0
        counts = plan.row_counts
        return cls(
            rows=plan.rows,
            tokens=tokens,
            slots=plan.rows * plan.max_len,
            efficiency=tokens / (plan.rows * plan.max_len) if plan.rows else 1.0,
            lower_bound=bound,
            rows_above_bound=plan.rows - bound,
            examples_per_row_min=int(counts.min()) if plan.rows else 0,
            examples_per_row_mean=float(counts.mean()) if plan.rows else 0.0,
            examples_per_row_max=int(counts.max()) if plan.rows else 0,
        )


class _Buckets:
    """Rows grouped by free space; within a space, rows leave in the order they arrived (deterministic). Only the
    occupied spaces are kept, so memory does not grow with the row length."""

    def __init__(self) -> None:
        self.chunks: dict[int, deque[np.ndarray]] = {}
        self.sizes: dict[int, int] = {}
        self.occupied: list[int] = []  # the spaces holding rows, ascending

    def spaces_from(self, x: int) -> list[int]:
        return self.occupied[bisect.bisect_left(self.occupied, x) :]

    def take(self, space: int, k: int) -> np.ndarray:
        chunks = self.chunks[space]
        out = []
        while k > 0:
            head = chunks[0]
            if len(head) <= k:
                out.append(chunks.popleft())
                k -= len(head)
            else:
                out.append(head[:k])
                chunks[0] = head[k:]
                k = 0
        taken = out[0] if len(out) == 1 else np.concatenate(out)
        self.sizes[space] -= len(taken)
        if not self.sizes[space]:
            del self.chunks[space], self.sizes[space]
            del self.occupied[bisect.bisect_left(self.occupied, space)]
        return taken

    def put(self, space: int, rows: np.ndarray) -> None:
        if len(rows):
            if space not in self.sizes:
                bisect.insort(self.occupied, space)
                self.sizes[space] = 0
            self.chunks.setdefault(space, deque()).append(rows)
            self.sizes[space] += len(rows)


def plan_packing(lengths: np.ndarray, max_len: int, *, repair: bool = True) -> PackPlan:
    """Best-fit-decreasing plan for `lengths` (each 1..max_len) into rows of at most `max_len` tokens.

    With `repair`, the slack left by best fit is then moved into a few rows and those are re-packed (`_repair`).
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    if len(lengths) and (lengths.min() < 1 or lengths.max() > max_len):
        raise ValueError(f"every length must lie in 1..{max_len}")
    # examples longest first; equal lengths keep their input order (a stable radix sort on small keys)
    longest = int(lengths.max()) if len(lengths) else 0
    key = (longest - lengths).astype(np.uint16 if longest < 1 << 16 else np.int64)
    by_length = np.argsort(key, kind="stable")
    counts = np.bincount(lengths)  # counts by length: sized by the longest example, not by max_len
    buckets = _Buckets()
    row_of = np.empty(len(lengths), dtype=np.int64)  # row of each example in `by_length` order
    n_rows = 0
    cursor = 0
    for x in np.flatnonzero(counts)[::-1].tolist():
        hi = cursor + int(counts[x])
        for s in buckets.spaces_from(x):
            if cursor == hi:
                break
            per_row = s // x
            rows = buckets.take(s, min(buckets.sizes[s], -(-(hi - cursor) // per_row)))
            cursor = _fill(rows, per_row, x, s, cursor, hi, row_of, buckets)
        if cursor < hi:
            per_row = max_len // x
            rows = np.arange(n_rows, n_rows + -(-(hi - cursor) // per_row), dtype=np.int64)
            n_rows += len(rows)
            cursor = _fill(rows, per_row, x, max_len, cursor, hi, row_of, buckets)
    plan_rows = row_of
    if repair and 0 < len(lengths) <= REPAIR_MAX_EXAMPLES:
        plan_rows, n_rows = _repair(lengths[by_length], row_of, n_rows, max_len)
    # order examples row by row; within a row, in placement order (longest first)
    placement = np.argsort(plan_rows.astype(np.int32 if n_rows < 1 << 31 else np.int64), kind="stable")
    order = by_length[placement]
    row_counts = np.bincount(plan_rows, minlength=n_rows).astype(np.int64)
    return PackPlan(max_len, order, row_counts, lengths)


def _fill(rows: np.ndarray, per_row: int, x: int, space: int, cursor: int, hi: int, row_of: np.ndarray,
          buckets: _Buckets) -> int:  # fmt: skip
    """Give each of `rows` (free space `space`) up to `per_row` examples of length `x`; returns the new cursor."""
    n = min(hi - cursor, len(rows) * per_row)
    row_of[cursor : cursor + n] = np.repeat(rows[: -(-n // per_row)], min(per_row, n))[:n]  # never per_row × rows
    full, partial = divmod(n, per_row)
    buckets.put(space - per_row * x, rows[:full])
    if partial:
        buckets.put(space - partial * x, rows[full : full + 1])
    return cursor + n


def _repair(sizes: np.ndarray, row_of: np.ndarray, n_rows: int, max_len: int) -> tuple[np.ndarray, int]:
    """Move the plan's slack into a few sink rows by swaps, then re-pack the sink: fewer rows, never more.

    After best fit most rows are exactly full, and the rest are short by less than the smallest example — slack
    no example can fill. The SINK_ROWS emptiest rows become a pool; every other row with slack ``s`` swaps one of
    its examples ``a`` for the longest pooled example ``b`` with ``a < b <= a + s``, moving ``b - a`` of slack into
    the pool. The pool is then re-packed with best fit, and the result is kept only if it needs fewer rows.
    Deterministic: rows and examples are visited in index order, ties go to the lowest index.
    """
    sink_count = min(n_rows, SINK_ROWS)
    used = np.bincount(row_of, weights=sizes, minlength=n_rows).astype(np.int64)
    free = max_len - used
    sink_rows = np.sort(np.argsort(-free, kind="stable")[:sink_count])
    in_sink = np.zeros(n_rows, dtype=bool)
    in_sink[sink_rows] = True
    original = row_of
    pooled = in_sink[row_of]
    pool: dict[int, list[int]] = {}
    for i in np.flatnonzero(pooled).tolist():
        pool.setdefault(int(sizes[i]), []).append(i)
    longest = int(sizes.max())
    available = np.zeros(longest + 1, dtype=np.int64)  # pooled examples by length
    for length, items in pool.items():
        available[length] = len(items)
        items.reverse()  # pop() hands out the lowest index first
    row_of = row_of.copy()
    by_row = np.argsort(row_of, kind="stable")
    starts = np.searchsorted(row_of[by_row], np.arange(n_rows + 1))
    for r in np.flatnonzero((free > 0) & ~in_sink).tolist():
        slack = int(free[r])
        for a in by_row[starts[r] : starts[r + 1]].tolist():
            size = int(sizes[a])
            window = available[size + 1 : min(size + slack, longest) + 1]
            if not window.any():
                continue
            length = size + 1 + int(np.flatnonzero(window)[-1])
            b = pool[length].pop()
            available[length] -= 1
            row_of[b], row_of[a] = r, -1
            pool.setdefault(size, []).append(a)  # `a` joins the pool
            available[size] += 1
            slack -= length - size
            if not slack:
                break
    pooled_items = [i for items in pool.values() for i in items]
    pooled_items.sort()
    pooled_sizes = sizes[pooled_items]
    repacked = plan_packing(pooled_sizes, max_len, repair=False)
    if repacked.rows >= sink_count:
        return original, n_rows  # no gain: keep the best-fit plan as it was
    keep = ~in_sink
    renumber = np.cumsum(keep) - 1
    new_rows = np.empty(len(pooled_items), dtype=np.int64)
    new_rows[repacked.order] = np.repeat(np.arange(repacked.rows), repacked.row_counts)
    out = np.where(row_of >= 0, renumber[np.maximum(row_of, 0)], -1)
    out[np.asarray(pooled_items, dtype=np.int64)] = int(keep.sum()) + new_rows
    return out, int(keep.sum()) + repacked.rows


def _positions(example_lengths: np.ndarray, tokens: int) -> np.ndarray:
    """Each token's position in its example (int32): its index in the whole run of `tokens` tokens less its
    example's first index (half the time of a running sum of ones reset at each example's first token)."""
    lengths = example_lengths[example_lengths > 0]
    kind = np.int32 if tokens < 1 << 31 else np.int64
    starts = (np.cumsum(lengths) - lengths).astype(kind)
    positions = np.arange(tokens, dtype=kind)
    np.subtract(positions, np.repeat(starts, lengths), out=positions)
    return positions.astype(np.int32, copy=False)


def _flat_list(column: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """An int32 list column as (offsets as int64, values), whatever its slicing or chunking."""
    array = column.combine_chunks()
    offsets = array.offsets.to_numpy().astype(np.int64)
    values = array.values.to_numpy()
    return offsets, values


def materialize(table: pa.Table, plan: PackPlan, *, first_row: int = 0, rows: int | None = None) -> pa.Table:
    """Packed rows `first_row`… of `plan` from a table of examples with `input_ids` and `labels` (int32 lists)."""
    rows = plan.rows - first_row if rows is None else rows
    starts = np.concatenate([[0], np.cumsum(plan.row_counts)])
    lo, hi = int(starts[first_row]), int(starts[first_row + rows])
    order = plan.order[lo:hi]
    ids = _flat_list(table.column("input_ids"))
    labels = _flat_list(table.column("labels"))
    example_lengths = np.diff(ids[0])[order]
    example_starts = np.concatenate([[0], np.cumsum(example_lengths)[:-1]]) if len(order) else np.zeros(0, np.int64)
    tokens = np.arange(int(example_lengths.sum())) + np.repeat(ids[0][:-1][order] - example_starts, example_lengths)
    example_ids = table.column("id").take(pa.array(order)).combine_chunks()
    counts = plan.row_counts[first_row : first_row + rows]
    return packed_table(ids[1][tokens], labels[1][tokens], example_lengths, counts, example_ids)


def packed_table(
    flat_ids: np.ndarray, flat_labels: np.ndarray, example_lengths: np.ndarray, counts: np.ndarray,
    example_ids: pa.Array,
) -> pa.Table:  # fmt: skip
    """Packed rows from their examples' tokens laid end to end (int32, in row order): `counts` examples per row, of
    `example_lengths` tokens each. `flat_labels` is changed in place: each example's first label becomes -100."""
    example_lengths = np.asarray(example_lengths, np.int64)
    example_starts = np.concatenate([[0], np.cumsum(example_lengths)[:-1]]) if len(example_lengths) else example_lengths
    flat_labels[example_starts[example_lengths > 0]] = IGNORE
    positions = _positions(example_lengths, len(flat_ids))
    example_offsets = np.concatenate([[0], np.cumsum(counts)])
    token_offsets = np.concatenate([[0], np.cumsum(example_lengths)])[example_offsets].astype(np.int32)
    offsets = int32_array(token_offsets)
    seq_offsets = int32_array(example_offsets)
    return pa.Table.from_pydict(
        {
            "input_ids": pa.ListArray.from_arrays(offsets, int32_array(flat_ids)),
            "labels": pa.ListArray.from_arrays(offsets, int32_array(flat_labels)),
            "position_ids": pa.ListArray.from_arrays(offsets, int32_array(positions)),
            "seq_lens": pa.ListArray.from_arrays(seq_offsets, int32_array(example_lengths)),
            "example_ids": pa.ListArray.from_arrays(seq_offsets, example_ids),
            "num_tokens": int32_array(np.diff(token_offsets)),
        },
        schema=PACKED,
    )
