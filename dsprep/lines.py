"""A plain JSON Lines input in slices of lines: the convert process finds where each task's lines lie, and whoever
processes the task reads them.

`LineScanner` reads an uncompressed ``.jsonl`` input once, from start to end, through the checks and progress
reporting every input gets (`dsprep.sources.open_input`), and finds the byte range that holds each next n records:
a few microseconds a line, in a process that would otherwise make a `Record` of each. A `LineSlice` names that range
(a few numbers to send a worker process instead of a megabyte of pickled lines), and `LineSlice.records` reads it
back: the records ``read_records(f, defer_parsing=True)`` makes of those lines, numbered by line, with a UTF-8 BOM
before the first line, CR line ends and blank lines dropped.
"""

from __future__ import annotations

import io
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from dsprep.errors import InputError
from dsprep.sources import BOM, InputFile, Progress, Record, numbered_lines, open_input

__all__ = ["LineScanner", "LineSlice", "sliceable"]

BLOCK_BYTES = 4 << 20  # read at a time (more where one line is longer)
SPACE = frozenset(b" \t\n\r\x0b\x0c")  # what bytes.strip() removes: a line of only these is blank


def sliceable(f: InputFile) -> bool:
    """Whether `f` is read in slices: a JSON Lines file that is not compressed."""
    return f.container == "jsonl" and f.compression is None and f.path.is_file()


@dataclass(frozen=True)
class LineSlice:
    """Bytes `start` to `end` of a JSON Lines file: whole lines, the first of them line `first` (from 0), holding
    `rows` records (lines that are not blank)."""

    path: Path
    display: str
    start: int
    end: int
    first: int
    rows: int

    def records(self) -> list[Record]:
        """The slice's records, read from the file now (an `InputError` where it no longer holds them)."""
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self.start)
                data = fh.read(self.end - self.start)
        except OSError as exc:
            raise InputError(f"{self.display}: cannot read: {exc.strerror or exc}") from None
        lines = numbered_lines(io.BytesIO(data), self.first)
        records = [Record(i, None, line, pending=True) for i, line in lines]
        if len(data) != self.end - self.start or len(records) != self.rows:
            raise InputError(f"{self.display}: changed while it was read; run again once it is complete")
        return records


class LineScanner:
    """Finds the slices of a JSON Lines file's records, n at a time (`take`), reading it once; a context manager that
    opens the file."""

    def __init__(self, f: InputFile, progress: Progress | None = None) -> None:
        self.f = f
        self.progress = progress
        self._stack = ExitStack()
        self._stream: IO[bytes] | None = None
        self._buf = b""
        self._pos = 0  # where the next line starts in _buf
        self._offset = 0  # the file offset of _buf[0]
        self._line = 0  # the number of the next line
        self._eof = False

    def __enter__(self) -> LineScanner:
        self._stream = self._stack.enter_context(open_input(self.f, self.progress))
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def take(self, n: int) -> LineSlice | None:
        """The slice of the next `n` records (fewer at the end of the file); None once no record is left."""
        start, first, found = self._offset + self._pos, self._line, 0
        while found < n:
            end = self._buf.find(b"\n", self._pos)
            if end < 0 and self._more():
                continue
            if end < 0 and self._pos == len(self._buf):
                break  # the end of the file
            stop = end + 1 if end >= 0 else len(self._buf)  # the last line may have no line end
            found += not self._blank(end if end >= 0 else len(self._buf))
            self._pos = stop
            self._line += 1
        if not found:
            return None
        return LineSlice(self.f.path, self.f.display, start, self._offset + self._pos, first, found)

    def _blank(self, end: int) -> bool:
        """Whether the line from `_pos` to `end` (its line end) is blank."""
        at = self._pos
        if self._line == 0 and self._buf.startswith(BOM):
            at += len(BOM)
        return at >= end or (self._buf[at] in SPACE and not self._buf[at:end].strip())

    def _more(self) -> bool:
        """Read on (at least as much as the line begun holds, so a long line costs no more than its length twice);
        False at the end of the file."""
        if self._eof:
            return False
        assert self._stream is not None
        begun = len(self._buf) - self._pos
        block = self._stream.read(max(BLOCK_BYTES, begun))
        if not block:
            self._eof = True
            return False
        self._offset += self._pos
        self._buf = self._buf[self._pos :] + block
        self._pos = 0
        return True
