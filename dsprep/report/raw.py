"""Inspect one raw input: format detection, row accounting, findings, duplicates.

The format is chosen from a sample (`choose_format`); then each batch of records is checked by `check_batch`, a pure
function (run in any process), and the batches' parts are merged in input order (`RawInspection.merge`), so the
result does not depend on where they ran. Memory stays bounded: rows are read in batches and dropped; per row only
a 64-bit hash of the raw record, its position and its character length are kept (24 bytes), so duplicates and
train/valid overlap are found from the hashes alone (sorted once, `np.unique`, `np.isin`) at the end.
"""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dsprep.detect import detect_format, mapping_snippet, spec_snippet
from dsprep.errors import FormatDetectionError, RowError
from dsprep.normalize import normalize_record, row_id
from dsprep.report.checks import conversation_findings, lenient_messages, row_messages, row_texts, text_findings
from dsprep.report.stats import MAX_EXAMPLES, Tally, histogram, summary
from dsprep.sources import InputFile, Record, read_records
from dsprep.specs import FormatSpec, load_spec

__all__ = ["RawInspection", "check_batch", "choose_format", "location", "overlaps"]

Row = dict[str, Any]


def location(f: InputFile, row: int) -> str:
    """`file:line` (1-based) for line-oriented inputs, `file[index]` otherwise — as in rejects.jsonl."""
    return f"{f.display}:{row + 1}" if f.line_oriented else f"{f.display}[{row}]"


def _hash(raw: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(raw, digest_size=8).digest(), "little")


@dataclass
class RawInspection:
    """What one input holds; `hashes`/`rows` stay in memory only until overlaps are computed."""

    file: InputFile
    format: dict[str, Any]
    read: int = 0
    kept: int = 0
    rejected: dict[str, Tally] = field(default_factory=dict)
    findings: dict[str, Tally] = field(default_factory=dict)
    kinds: dict[str, int] = field(default_factory=dict)
    hashes: array[int] = field(default_factory=lambda: array("Q"))
    rows: array[int] = field(default_factory=lambda: array("q"))
    chars: array[int] = field(default_factory=lambda: array("q"))
    longest: dict[str, Any] = field(default_factory=lambda: {"chars": 0, "location": None, "role": None})

    def finding(self, name: str, where: str, detail: str) -> None:
        self.findings.setdefault(name, Tally()).add(where, detail)

    def reject(self, where: str, kind: str, reason: str, detail: str) -> None:
        """Count a kept row of kind `kind` as rejected for `reason` after all (convert rejects it at encoding)."""
        self.kept -= 1
        self.kinds[kind] -= 1
        if not self.kinds[kind]:
            del self.kinds[kind]
        self.rejected.setdefault(reason, Tally()).add(where, detail)

    def merge(self, part: RawInspection) -> None:
        """Add what a later batch of the same input found (`check_batch`): the result is the same as one pass."""
        self.read += part.read
        self.kept += part.kept
        for mine, theirs in ((self.rejected, part.rejected), (self.findings, part.findings)):
            for name, tally in theirs.items():
                mine.setdefault(name, Tally()).merge(tally)
        for kind, n in part.kinds.items():
            self.kinds[kind] = self.kinds.get(kind, 0) + n
        self.hashes.extend(part.hashes)
        self.rows.extend(part.rows)
        self.chars.extend(part.chars)
        if part.longest["chars"] > self.longest["chars"]:
            self.longest = part.longest

    def duplicates(self) -> dict[str, Any]:
        """Rows whose raw record equals an earlier row's, with up to MAX_EXAMPLES `row duplicates first` pairs."""
        h = np.frombuffer(self.hashes, dtype=np.uint64) if len(self.hashes) else np.zeros(0, np.uint64)
        _, first, inverse = np.unique(h, return_index=True, return_inverse=True)
        dup = np.flatnonzero(first[inverse] != np.arange(len(h)))
        rows = np.frombuffer(self.rows, dtype=np.int64) if len(self.rows) else np.zeros(0, np.int64)
        at = [
            (location(self.file, int(rows[i])), location(self.file, int(rows[first[inverse[i]]])))
            for i in dup[:MAX_EXAMPLES]
        ]
        examples = [{"location": here, "detail": f"same as {there}"} for here, there in at]
        return {"rows": len(dup), "distinct": len(first), "share": len(dup) / len(h) if len(h) else 0.0,
                "examples": examples}  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        chars = np.frombuffer(self.chars, dtype=np.int64) if len(self.chars) else np.zeros(0, np.int64)
        f = self.file
        return {
            "path": f.display, "container": f.container, "compression": f.compression, "bytes": f.size,
            "format": self.format,
            "rows": {"read": self.read, "kept": self.kept, "rejected": self.read - self.kept},
            "kinds": dict(sorted(self.kinds.items())),
            "rejected_by_reason": {k: v.to_dict() for k, v in sorted(self.rejected.items())},
            "findings": {k: v.to_dict() for k, v in sorted(self.findings.items())},
            "duplicates": self.duplicates(),
            "chars": {**summary(chars), "histogram": histogram(chars), "longest_message": self.longest},
        }  # fmt: skip


def choose_format(f: InputFile, fmt: str, sample_rows: int) -> tuple[FormatSpec | None, dict[str, Any]]:
    """The spec `f` is read as (`fmt`, or detected from its first `sample_rows` records; None when none fits) and
    the report's account of it."""
    if fmt != "auto":
        spec = load_spec(fmt)
        return spec, {"name": spec.name, "origin": spec.origin, "detected": False, "confidence": None,
                      "mapping": [], "unmapped": [], "spec": mapping_snippet(spec, None), "error": None}  # fmt: skip
    sample: list[Row] = []
    for batch in read_records(f):
        sample.extend(r.value for r in batch if r.value is not None)
        if len(sample) >= sample_rows:
            break
    sample = sample[:sample_rows]
    empty: dict[str, Any] = {
        "name": None, "origin": None, "detected": True, "confidence": None, "mapping": [], "unmapped": [],
    }  # fmt: skip
    if not sample:
        return None, {**empty, "spec": None, "error": "no parseable rows to detect a format from"}
    try:
        d = detect_format(sample, f.display)
    except FormatDetectionError as exc:
        return None, {**empty, "spec": spec_snippet(sample), "error": str(exc).splitlines()[0]}
    return d.spec, {"name": d.spec.name, "origin": d.spec.origin, "detected": True, "confidence": d.confidence,
                    "sampled": d.sampled, "matched": d.matched, "mapping": [list(m) for m in d.mapping],
                    "unmapped": list(d.unmapped), "spec": mapping_snippet(d.spec, d), "error": None}  # fmt: skip


def _check_row(ins: RawInspection, where: str, row: Row | None, messages: list[Row] | None, kind: str) -> None:
    if messages is not None:
        for name, detail in conversation_findings(messages, row.get("tools") if row else None, kind=kind):
            ins.finding(name, where, detail)
    if row is None:
        return
    total = 0
    seen: set[str] = set()
    for role, text in row_texts(row):
        total += len(text)
        if len(text) > ins.longest["chars"]:
            ins.longest = {"chars": len(text), "location": where, "role": role}
        for name, detail in text_findings(text):
            if name not in seen:
                seen.add(name)
                ins.finding(name, where, f"{role}: {detail}")
    ins.chars.append(total)


def check_batch(f: InputFile, spec: FormatSpec | None, no_format: str | None, records: list[Record]
                ) -> tuple[RawInspection, list[tuple[str, Row]]]:  # fmt: skip
    """What one batch of `f`'s records adds to its inspection, and its kept rows (location, normalized row); a pure
    function of its arguments, run in any process. Records not parsed yet (`Record.pending`) are parsed here.

    spec: the format the rows are read as (None: none was found, and `no_format` says why).
    """
    part = RawInspection(f, {})
    kept: list[tuple[str, Row]] = []
    for rec in map(Record.parsed, records):
        part.read += 1
        where = location(f, rec.row)
        part.hashes.append(_hash(rec.raw))
        part.rows.append(rec.row)
        error = rec.error or (None if spec is not None and rec.value is not None else
                              RowError("", "no_format", no_format or "no format"))  # fmt: skip
        row = None
        if error is None:
            try:
                row = normalize_record(rec.value, spec)  # type: ignore[arg-type]
            except RowError as exc:
                error = exc
        if error is not None:
            part.rejected.setdefault(error.reason, Tally()).add(where, str(error))
            if spec is not None and rec.value is not None and spec.kind == "conversation":
                _check_row(part, where, None, lenient_messages(rec.value, spec), spec.kind)
            continue
        assert row is not None and spec is not None
        part.kept += 1
        part.kinds[row["kind"]] = part.kinds.get(row["kind"], 0) + 1
        _check_row(part, where, row, row_messages(row), row["kind"])
        row.update(id=row_id(f.name, rec.row, rec.raw), source_file=f.display, source_row=rec.row)
        kept.append((where, row))
    return part, kept


def _hash_array(ins: RawInspection) -> np.ndarray:
    return np.frombuffer(ins.hashes, dtype=np.uint64) if len(ins.hashes) else np.zeros(0, np.uint64)


def overlaps(inspections: Sequence[RawInspection]) -> list[dict[str, Any]]:
    """For each pair of inputs (a before b) that share raw records: the rows of `b` whose raw record also occurs in
    `a` (e.g. valid rows that leak from train), ordered by b, then a.

    The hashes every input holds are sorted once, so the cost follows the rows and the overlaps found, not the number
    of pairs (thousands of small inputs are millions of pairs).
    """
    if len(inspections) < 2:
        return []
    hashes = [_hash_array(ins) for ins in inspections]
    distinct = [np.unique(h) for h in hashes]
    values = np.concatenate(distinct)
    owners = np.repeat(np.arange(len(distinct), dtype=np.int32), [len(u) for u in distinct])
    order = np.argsort(values, kind="stable")  # equal hashes stay in input order
    values, owners = values[order], owners[order]
    shared = np.zeros(len(values), bool)  # a hash that more than one input holds
    shared[1:] |= values[1:] == values[:-1]
    shared[:-1] |= values[:-1] == values[1:]
    holders: dict[int, list[int]] = {}
    for value, owner in zip(values[shared].tolist(), owners[shared].tolist(), strict=True):
        holders.setdefault(value, []).append(owner)  # in input order, as the sort put them
    if not holders:
        return []
    keys = np.fromiter(holders, np.uint64, len(holders))
    pairs: dict[tuple[int, int], list[int]] = {}
    for b, h in enumerate(hashes):
        for i in np.flatnonzero(np.isin(h, keys)).tolist():
            for a in holders[int(h[i])]:
                if a >= b:
                    break
                pairs.setdefault((b, a), []).append(i)
    out = []
    for (b, a), hit in sorted(pairs.items()):
        first, second = inspections[a], inspections[b]
        rows = np.frombuffer(second.rows, dtype=np.int64)
        examples = [{"location": location(second.file, int(rows[i])), "detail": f"also in {first.file.display}"}
                    for i in hit[:5]]  # fmt: skip
        out.append({"a": first.file.display, "b": second.file.display, "rows": len(hit), "examples": examples})
    return out
