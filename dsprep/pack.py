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

import math
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dsprep.schema import PACKED

__all__ = ["PackPlan", "PackReport", "materialize", "plan_packing"]

IGNORE = -100


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


def plan_packing(lengths: np.ndarray, max_len: int) -> PackPlan:
    """Best-fit-decreasing plan for `lengths` (each 1..max_len) into rows of at most `max_len` tokens."""
    lengths = np.asarray(lengths, dtype=np.int64)
    if len(lengths) and (lengths.min() < 1 or lengths.max() > max_len):
        raise ValueError(f"every length must lie in 1..{max_len}")
    # examples longest first; equal lengths keep their input order (deterministic)
    by_length = np.argsort(-lengths, kind="stable")
    sorted_lengths = lengths[by_length]
    distinct, first = np.unique(-sorted_lengths, return_index=True)
    bounds = [*first.tolist(), len(sorted_lengths)]
    space_bins: dict[int, np.ndarray] = {}  # free space -> ids of rows with exactly that space, in opening order
    occupied = np.zeros(max_len + 1, dtype=bool)
    row_of = np.empty(len(lengths), dtype=np.int64)  # row of each example in `by_length` order
    n_rows = 0
    for group, x in enumerate((-distinct).tolist()):
        lo, hi = bounds[group], bounds[group + 1]
        cursor = lo
        for s in (np.flatnonzero(occupied[x:]) + x).tolist():
            if cursor == hi:
                break
            bins = space_bins[s]
            per_bin = s // x
            take_bins = min(len(bins), -(-(hi - cursor) // per_bin))
            used = bins[:take_bins]
            n_items = min(hi - cursor, take_bins * per_bin)
            row_of[cursor : cursor + n_items] = np.repeat(used, per_bin)[:n_items]
            cursor += n_items
            rest = bins[take_bins:]
            if len(rest):
                space_bins[s] = rest
            else:
                del space_bins[s]
                occupied[s] = False
            full, partial = divmod(n_items, per_bin)
            _move(space_bins, occupied, used[:full], s - per_bin * x)
            if partial:
                _move(space_bins, occupied, used[full : full + 1], s - partial * x)
        if cursor < hi:
            per_bin = max_len // x
            need = hi - cursor
            new_bins = np.arange(n_rows, n_rows + -(-need // per_bin), dtype=np.int64)
            n_rows += len(new_bins)
            row_of[cursor:hi] = np.repeat(new_bins, per_bin)[:need]
            full, partial = divmod(need, per_bin)
            _move(space_bins, occupied, new_bins[:full], max_len - per_bin * x)
            if partial:
                _move(space_bins, occupied, new_bins[full : full + 1], max_len - partial * x)
    # order examples row by row; within a row, in placement order (longest first)
    placement = np.argsort(row_of, kind="stable")
    order = by_length[placement]
    row_counts = np.bincount(row_of, minlength=n_rows).astype(np.int64)
    return PackPlan(max_len, order, row_counts, lengths)


def _move(space_bins: dict[int, np.ndarray], occupied: np.ndarray, bins: np.ndarray, space: int) -> None:
    if not len(bins):
        return
    if space in space_bins:
        space_bins[space] = np.sort(np.concatenate([space_bins[space], bins]), kind="stable")
    else:
        space_bins[space] = bins
        occupied[space] = True


def materialize(table: pa.Table, plan: PackPlan, *, first_row: int = 0, rows: int | None = None) -> pa.Table:
    """Packed rows `first_row`… of `plan` from a table of examples with `input_ids` and `labels` (int32 lists)."""
    rows = plan.rows - first_row if rows is None else rows
    starts = np.concatenate([[0], np.cumsum(plan.row_counts)])
    lo, hi = int(starts[first_row]), int(starts[first_row + rows])
    order = plan.order[lo:hi]
    counts = plan.row_counts[first_row : first_row + rows]
    taken = table.take(pa.array(order))
    ids = taken.column("input_ids").combine_chunks()
    labels = taken.column("labels").combine_chunks()
    example_lengths = pc.list_value_length(ids).to_numpy().astype(np.int64)
    flat_ids = ids.flatten().to_numpy().astype(np.int32)
    flat_labels = labels.flatten().to_numpy().astype(np.int32).copy()
    example_starts = np.concatenate([[0], np.cumsum(example_lengths)[:-1]]) if len(order) else np.zeros(0, np.int64)
    flat_labels[example_starts] = IGNORE
    positions = np.arange(len(flat_ids), dtype=np.int64) - np.repeat(example_starts, example_lengths)
    example_offsets = np.concatenate([[0], np.cumsum(counts)])
    token_offsets = np.concatenate([[0], np.cumsum(example_lengths)])[example_offsets].astype(np.int32)
    offsets = pa.array(token_offsets, pa.int32())
    seq_offsets = pa.array(example_offsets.astype(np.int32), pa.int32())
    return pa.Table.from_pydict(
        {
            "input_ids": pa.ListArray.from_arrays(offsets, pa.array(flat_ids, pa.int32())),
            "labels": pa.ListArray.from_arrays(offsets, pa.array(flat_labels, pa.int32())),
            "position_ids": pa.ListArray.from_arrays(offsets, pa.array(positions.astype(np.int32), pa.int32())),
            "seq_lens": pa.ListArray.from_arrays(seq_offsets, pa.array(example_lengths.astype(np.int32), pa.int32())),
            "example_ids": pa.ListArray.from_arrays(seq_offsets, taken.column("id").combine_chunks()),
            "num_tokens": pa.array(np.diff(token_offsets).astype(np.int32), pa.int32()),
        },
        schema=PACKED,
    )
