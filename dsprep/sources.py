"""Stage 1: find the input files and read them as batches of raw records, in bounded memory.

Containers: ``.jsonl`` (also ``.ndjson``), ``.json`` (an array, a single object, or an object holding the list
under ``data``/``rows``/``records``/``examples``/``items``/``instances``/``train``), ``.parquet``, ``.csv``/``.tsv``,
``.arrow``/``.feather``, ``.txt`` (one document per line) and a folder written by ``datasets.save_to_disk``; each may
be compressed as ``.gz``/``.zst``/``.bz2``/``.xz``. A UTF-8 BOM, CRLF line ends and a missing final newline are
accepted. A record that cannot be parsed (invalid JSON, invalid UTF-8, not an object, an Arrow value Python cannot
hold) is yielded with its `RowError`, so it reaches the rejects file instead of stopping the run.
"""

from __future__ import annotations

import bz2
import csv
import glob
import gzip
import io
import itertools
import lzma
import os
import re
import shutil
import tempfile
import zlib
from collections.abc import Callable, Generator, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import IO, Any, cast

import orjson

from dsprep import jsontext
from dsprep.errors import InputError, RowError

__all__ = ["InputFile", "Record", "discover", "printable", "read_records"]

BATCH_ROWS = 1024
CSV_FIELD_LIMIT = (1 << 31) - 1  # characters in one CSV cell (Python's default, 131072, is too small for documents)
SMALL_JSON_BYTES = 32 << 20  # .json arrays above this stream through ijson instead of one orjson.loads
JSON_CHUNK_BYTES = 1 << 20  # bytes of a streamed .json array read at a time
ZSTD_INPUT_BYTES = 1 << 16  # most compressed bytes decompressed in one call
ZSTD_OUTPUT_BYTES = 4 << 20  # decompressed bytes one call aims at: highly compressed input is fed in smaller slices
CONTAINERS = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".parquet": "parquet",
    ".csv": "csv",
    ".tsv": "tsv",
    ".arrow": "arrow",
    ".feather": "arrow",
    ".txt": "txt",
}
COMPRESSIONS = {".gz": "gzip", ".zst": "zstd", ".bz2": "bz2", ".xz": "xz"}
LIST_KEYS = ("data", "rows", "records", "examples", "items", "instances", "train")
BOM = b"\xef\xbb\xbf"
LIST_KINDS = ("list", "large_list", "fixed_size_list", "list_view", "large_list_view")  # pa.types.is_<kind>
JSON_SPACE = b" \t\r\n"
QUOTE, COMMA = ord('"'), ord(",")
_JSON_TOKEN = re.compile(rb'"(?:[^"\\]++|\\.)*+(")?|[\[\]{},]', re.DOTALL)  # a string (group 1: its end) or [ ] { } ,
_LONE_SURROGATE = re.compile(  # a \uD800-\uDFFF escape that may not be half of a pair (rarely a pair, never a miss)
    rb"\\u[dD](?:[89abAB][0-9a-fA-F]{2}(?!\\u[dD][c-fC-F][0-9a-fA-F]{2})"
    rb"|(?<![^\\]\\u[dD][89abAB][0-9a-fA-F]{2}\\u[dD])[c-fC-F][0-9a-fA-F]{2})"
)

Progress = Callable[[int], None]  # called with the number of input bytes consumed since the last call


def printable(name: str) -> str:
    """A file name as text that can be printed and stored: bytes that are not UTF-8 (which Python keeps as lone
    surrogates) written as ``\\xff`` escapes."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


@dataclass(frozen=True)
class InputFile:
    """One input to read: where it is, how it is stored, and the name it is reported under (`printable`)."""

    path: Path
    display: str
    container: str
    compression: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "display", printable(self.display))

    @property
    def name(self) -> str:
        """The file's name, printable: what row ids are made from."""
        return printable(self.path.name)

    @property
    def size(self) -> int:
        """Bytes on disk (for a dataset folder, of all its files)."""
        if self.path.is_dir():
            return sum(p.stat().st_size for p in self.path.rglob("*") if p.is_file())
        return self.path.stat().st_size

    @property
    def line_oriented(self) -> bool:
        """Whether `Record.row` is a 0-based line number (else a 0-based record index)."""
        return self.container in ("jsonl", "txt")


@dataclass(frozen=True)
class Record:
    """A raw input record: its position, the parsed value (or the error that stopped parsing) and its raw bytes.

    pending: the raw bytes are a JSON line not parsed yet (`parsed` parses it), so the parsing can happen where the
    record is processed rather than where it is read.
    """

    row: int
    value: dict[str, Any] | None
    raw: bytes
    error: RowError | None = None
    pending: bool = False

    def parsed(self) -> Record:
        """This record with its JSON line parsed (itself when there was nothing to parse)."""
        if not self.pending:
            return self
        value, error = _parse_json_line(self.raw)
        return _object_record(self.row, value, self.raw, error)


def _classify(path: Path) -> tuple[str, str | None]:
    suffixes = [s.lower() for s in path.suffixes]
    compression = COMPRESSIONS.get(suffixes[-1]) if suffixes else None
    if compression:
        suffixes = suffixes[:-1]
    container = CONTAINERS.get(suffixes[-1]) if suffixes else None
    if container is None:
        known = ", ".join(sorted(CONTAINERS))
        raise InputError(f"{path}: unknown file type; expected one of {known} (optionally .gz/.zst/.bz2/.xz)")
    return container, compression


def _is_hf_dataset(path: Path) -> bool:
    return (path / "state.json").is_file() or (path / "dataset_dict.json").is_file()


def _hf_listing(source: Path, key: str, field: str | None) -> list[str]:
    """The names a `datasets` metadata file lists (splits, data files); each must be a plain name inside its folder."""
    try:
        value = orjson.loads(source.read_bytes()).get(key, [])
    except (orjson.JSONDecodeError, AttributeError):
        raise InputError(f"{source}: not a JSON object as `datasets` writes it") from None
    if not isinstance(value, list):
        raise InputError(f"{source}: {key!r} must be a list")
    names: list[str] = []
    for item in value:
        name = item.get(field) if field and isinstance(item, dict) else item
        if not isinstance(name, str) or name in ("", ".", "..") or any(c in name for c in "/\\\0"):
            raise InputError(f"{source}: {name!r} is not a plain file or folder name inside {source.parent}")
        names.append(name)
    return names


def _hf_inputs(path: Path, display: str) -> list[InputFile]:
    if (path / "dataset_dict.json").is_file():
        splits = _hf_listing(path / "dataset_dict.json", "splits", None)
        return [InputFile(path / s, f"{display}/{s}", "hf") for s in splits]
    return [InputFile(path, display, "hf")]


def _folder_inputs(folder: Path, display: str) -> list[InputFile]:
    if _is_hf_dataset(folder):
        return _hf_inputs(folder, display)
    found: list[InputFile] = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        here = Path(root)
        for d in list(dirs):
            if _is_hf_dataset(here / d):
                dirs.remove(d)
                found.extend(_hf_inputs(here / d, str(here / d)))
        for name in sorted(files):
            if name.startswith("."):
                continue
            p = here / name
            try:
                container, compression = _classify(p)
            except InputError:
                continue
            found.append(InputFile(p, str(p), container, compression))
    if not found:
        raise InputError(f"{display}: folder holds no readable data files")
    return found


def discover(inputs: Sequence[str]) -> list[InputFile]:
    """Expand files, folders and glob patterns into a deterministic list of inputs (folders and globs sorted)."""
    out: list[InputFile] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            out.extend(_folder_inputs(path, item))
        elif path.is_file():
            container, compression = _classify(path)
            out.append(InputFile(path, item, container, compression))
        elif glob.has_magic(item):
            matches = sorted(glob.glob(item, recursive=True))
            if not matches:
                raise InputError(f"{item}: no file matches this pattern")
            out.extend(discover(matches))
        else:
            raise InputError(f"{item}: no such file or folder")
    seen: set[Path] = set()
    unique = []
    for f in out:
        if f.path.resolve() not in seen:
            seen.add(f.path.resolve())
            unique.append(f)
    return unique


class _Counting(io.RawIOBase):
    """Wraps a binary file and reports how many bytes were read (for progress bars)."""

    def __init__(self, raw: IO[bytes], progress: Progress | None) -> None:
        self._raw = raw
        self._progress = progress

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = self._raw.readinto(buffer)  # type: ignore[attr-defined]
        if n and self._progress:
            self._progress(n)
        return n or 0

    def close(self) -> None:
        self._raw.close()
        super().close()


class _Chunks(io.RawIOBase):
    """A readable stream of the byte chunks an iterator yields."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._left = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._left:
            chunk = next(self._chunks, None)
            if chunk is None:
                return 0
            self._left = memoryview(chunk)
        n = min(len(buffer), len(self._left))
        buffer[:n] = self._left[:n]
        self._left = self._left[n:]
        return n


def _zstd_frames(source: IO[bytes]) -> Iterator[bytes]:
    """The decompressed content of the zstd frames in `source`, in pieces of bounded size.

    Input that ends inside a frame is an EOFError, as for gzip/bz2/xz (zstandard's stream reader would end quietly);
    input that ends between two frames is complete. Corrupt input is an OSError.
    """
    import zstandard

    decompressor = zstandard.ZstdDecompressor()
    frame: Any = None  # the decompressor of the frame in progress
    data = b""
    take = 256  # input bytes per call, adjusted so that a call's output stays near ZSTD_OUTPUT_BYTES
    while True:
        data = data or source.read(ZSTD_INPUT_BYTES)
        if not data:
            if frame is not None:
                raise EOFError("Compressed file ended before the end-of-stream marker was reached")
            return
        if frame is None:
            frame = decompressor.decompressobj()
        try:
            out = frame.decompress(data[:take])
        except zstandard.ZstdError as exc:
            raise OSError(str(exc)) from None
        data = frame.unused_data + data[take:] if frame.eof else data[take:]
        frame = None if frame.eof else frame
        take = max(256, min(ZSTD_INPUT_BYTES, take * ZSTD_OUTPUT_BYTES // (len(out) + 1)))
        if out:
            yield out


@contextmanager
def _open_binary(f: InputFile, progress: Progress | None) -> Iterator[IO[bytes]]:
    try:
        raw = open(f.path, "rb")  # noqa: SIM115 - closed by the stack below
    except OSError as exc:
        raise InputError(f"{f.display}: cannot open: {exc.strerror}") from None
    counted = io.BufferedReader(_Counting(raw, progress), buffer_size=1 << 20)
    stream: IO[bytes]
    if f.compression == "gzip":
        stream = cast(IO[bytes], gzip.GzipFile(fileobj=counted))
    elif f.compression == "bz2":
        stream = bz2.BZ2File(counted)
    elif f.compression == "xz":
        stream = lzma.LZMAFile(counted)  # noqa: SIM115 - closed in the finally below
    elif f.compression == "zstd":
        stream = io.BufferedReader(_Chunks(_zstd_frames(counted)), buffer_size=1 << 20)
    else:
        stream = counted
    try:
        yield stream
    except (OSError, EOFError, lzma.LZMAError, zlib.error) as exc:
        raise InputError(f"{f.display}: cannot decompress ({f.compression}): {exc}") from None
    finally:
        stream.close()
        counted.close()


@contextmanager
def _seekable(f: InputFile, progress: Progress | None) -> Iterator[IO[bytes] | Path]:
    """A seekable view of the input: the path itself, or a decompressed temporary copy (bounded memory)."""
    if f.compression is None:
        if progress:
            progress(f.size)
        yield f.path
        return
    with _open_binary(f, progress) as stream, tempfile.TemporaryFile() as tmp:
        shutil.copyfileobj(stream, tmp, 1 << 20)
        tmp.seek(0)
        yield tmp


def _parse_json_line(line: bytes) -> tuple[Any, RowError | None]:
    try:
        return orjson.loads(line), None
    except orjson.JSONDecodeError as exc:
        try:
            line.decode("utf-8")
        except UnicodeDecodeError as uexc:
            return None, RowError("", "invalid_utf8", f"invalid UTF-8 byte at column {uexc.start + 1}")
        return None, RowError("", "invalid_json", f"invalid JSON: {exc}")


def _object_record(row: int, value: Any, raw: bytes, error: RowError | None = None) -> Record:
    if error is None and not isinstance(value, dict):
        kind = type(value).__name__ if value is not None else "null"
        error = RowError("", "wrong_type", f"expected a JSON object per record, got {kind}")
    return Record(row, value if error is None else None, raw, error)


def _batched(records: Iterator[Record]) -> Iterator[list[Record]]:
    batch: list[Record] = []
    for r in records:
        batch.append(r)
        if len(batch) >= BATCH_ROWS:
            yield batch
            batch = []
    if batch:
        yield batch


def _lines(stream: IO[bytes]) -> Iterator[tuple[int, bytes]]:
    for i, line in enumerate(stream):
        if i == 0 and line.startswith(BOM):
            line = line[len(BOM) :]
        line = line.rstrip(b"\r\n")
        if line.strip():
            yield i, line


def _jsonl(f: InputFile, progress: Progress | None) -> Iterator[Record]:
    with _open_binary(f, progress) as stream:
        for i, line in _lines(stream):
            value, error = _parse_json_line(line)
            yield _object_record(i, value, line, error)


def _jsonl_lines(f: InputFile, progress: Progress | None) -> Iterator[Record]:
    with _open_binary(f, progress) as stream:
        for i, line in _lines(stream):
            yield Record(i, None, line, pending=True)


def _txt(f: InputFile, progress: Progress | None) -> Iterator[Record]:
    with _open_binary(f, progress) as stream:
        for i, line in _lines(stream):
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield Record(
                    i, None, line, RowError("text", "invalid_utf8", f"invalid UTF-8 byte at column {exc.start + 1}")
                )
                continue
            yield Record(i, {"text": text}, line)


def _dumps(value: Any) -> bytes:
    try:
        return jsontext.dumps(value)
    except jsontext.TooDeepError as exc:
        return orjson.dumps(f"<{exc}>")  # stands in for the raw text in the rejects file


def _value_record(i: int, value: Any) -> Record:
    try:
        return _object_record(i, value, jsontext.dumps(value))
    except jsontext.TooDeepError as exc:
        return _object_record(i, None, _dumps(value), RowError("", "invalid_json", str(exc)))


def _element_record(i: int, raw: bytes) -> Record:
    value, error = _parse_json_line(raw)
    return _object_record(i, None, raw, error) if error else _value_record(i, value)


def _json(f: InputFile, progress: Progress | None) -> Iterator[Record]:
    with _open_binary(f, progress) as stream:
        head = stream.read(SMALL_JSON_BYTES + 1).removeprefix(BOM)
        if not head.strip():
            return
        if len(head) <= SMALL_JSON_BYTES or head.lstrip()[:1] != b"[":
            yield from _whole_json(head + stream.read(), f.display)
            return
        resume = yield from _streamed_array(head, stream)
    if resume is not None:  # ijson cannot go on: the elements from there on are parsed one by one
        with _open_binary(f, None) as stream:
            elements = _array_elements(stream.read(JSON_CHUNK_BYTES).removeprefix(BOM), stream, f.display)
            for i, raw in enumerate(elements):
                if i >= resume:
                    yield _element_record(i, raw)


def _whole_json(data: bytes, display: str) -> Iterator[Record]:
    """The records of a .json file read at once: its array's elements, the list an object holds, or the object."""
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        if data.lstrip(JSON_SPACE)[:1] != b"[":
            raise InputError(f"{display}: not valid JSON ({exc}); for one record per line use .jsonl") from None
        for i, raw in enumerate(_array_elements(data, io.BytesIO(), display)):  # a bad element is a bad row
            yield _element_record(i, raw)
        return
    if isinstance(value, dict):
        keys = [k for k in LIST_KEYS if isinstance(value.get(k), list)]
        value = value[keys[0]] if len(value) == 1 and keys else [value]
    if not isinstance(value, list):
        raise InputError(f"{display}: expected a JSON array or object at the top level")
    for i, item in enumerate(value):
        yield _value_record(i, item)


_END = object()


class _Unstreamable(ValueError):
    """Input that ijson would silently alter: it turns a lone surrogate escape into "?"."""


def _streamed_array(head: bytes, stream: IO[bytes]) -> Generator[Record, None, int | None]:
    """The records of a large JSON array that ijson parses as it streams in; returns None once all are read, or the
    number read before invalid JSON, invalid UTF-8 or a lone surrogate escape, which ijson cannot go past or would
    alter."""
    import ijson

    pieces = _checked_pieces(itertools.chain([head], iter(partial(stream.read, JSON_CHUNK_BYTES), b"")))
    values = ijson.items(io.BufferedReader(_Chunks(pieces)), "item", use_float=True)
    count, pending = 0, _END  # an element is kept back until the next one parses: what follows it may be invalid
    while True:
        try:
            value = next(values, _END)
        except (ijson.JSONError, ValueError):
            return count
        if pending is not _END:
            yield _value_record(count, pending)
            count += 1
        if value is _END:
            return None
        pending = value


def _checked_pieces(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """The bytes of `chunks` again, cut before a quote so that no \\u escape is split; `_Unstreamable` when a piece
    may hold a lone surrogate escape."""
    carry: list[bytes] = []
    for chunk in chunks:
        cut = chunk.rfind(b'"')
        if cut < 0:
            carry.append(chunk)
            continue
        yield _checked(b"".join([*carry, chunk[:cut]]))
        carry = [chunk[cut:]]
    yield _checked(b"".join(carry))


def _checked(piece: bytes) -> bytes:
    if (b"\\ud" in piece or b"\\uD" in piece) and _LONE_SURROGATE.search(piece):
        raise _Unstreamable
    return piece


def _array_elements(head: bytes, stream: IO[bytes], display: str) -> Iterator[bytes]:
    """The text of each element of the JSON array that `head` and then `stream` hold, in bounded memory.

    Only strings, brackets and commas are followed, so an element that is not valid JSON is still one element, for
    its parser to reject. A bracket that does not match, an empty element, an array that does not end, or text after
    it is an InputError.
    """
    buf = head.lstrip(JSON_SPACE)
    while not buf and (chunk := stream.read(JSON_CHUNK_BYTES)):
        buf = chunk.lstrip(JSON_SPACE)
    if buf[:1] != b"[":
        raise InputError(f"{display}: not valid JSON (expected an array)")
    pos = start = 1  # after the "["
    closers: list[int] = []  # the brackets that close the values open in the current element
    count = 0
    while True:
        resume = len(buf)
        for m in _JSON_TOKEN.finditer(buf, pos):
            at = m.start()
            c = buf[at]
            if c == QUOTE:
                if m.group(1) is None:  # the string goes on past what is read
                    resume = at
                    break
            elif c in b"[{":
                closers.append(c + 2)  # "]" and "}" come two code points after "[" and "{"
            elif closers:
                expected = closers.pop() if c != COMMA else c
                if c != expected:
                    raise InputError(
                        f"{display}: not valid JSON (element {count}: {chr(c)!r} where {chr(expected)!r} was expected)"
                    )
            else:
                element = buf[start:at].strip(JSON_SPACE)
                if element or c == COMMA or count:
                    if not element:
                        raise InputError(f"{display}: not valid JSON (element {count} of the array is empty)")
                    yield element
                    count += 1
                start = m.end()
                if c == COMMA:
                    continue
                if c != ord("]"):
                    raise InputError(f"{display}: not valid JSON ('}}' where ',' or ']' was expected)")
                _expect_end(buf[start:], stream, display)
                return
        chunk = stream.read(max(JSON_CHUNK_BYTES, len(buf) - start))  # a long element doubles what is read
        if not chunk:
            raise InputError(f"{display}: not valid JSON (the file ends inside element {count} of the array)")
        buf, pos, start = buf[start:] + chunk, resume - start, 0


def _expect_end(rest: bytes, stream: IO[bytes], display: str) -> None:
    """An InputError unless `rest` and what is left of `stream` are whitespace."""
    while not rest.strip(JSON_SPACE):
        rest = stream.read(JSON_CHUNK_BYTES)
        if not rest:
            return
    raise InputError(f"{display}: not valid JSON (text after the end of the array)")


def _csv(f: InputFile, progress: Progress | None) -> Iterator[Record]:
    """CSV, and TSV, with CSV's quoting rules (as pandas and `datasets` read both)."""
    delimiter = "\t" if f.container == "tsv" else ","
    with _open_binary(f, progress) as stream:
        text = io.TextIOWrapper(stream, encoding="utf-8-sig", errors="surrogateescape", newline="")
        csv.field_size_limit(max(csv.field_size_limit(), CSV_FIELD_LIMIT))
        reader = csv.reader(text, delimiter=delimiter)
        header = next((cells for cells in reader if cells), None)  # blank lines before the header are skipped
        if header is None:
            return
        if any("\udc80" <= ch <= "\udcff" for name in header for ch in name):
            raise InputError(f"{f.display}: the CSV header is not valid UTF-8")
        _check_unique(header, f.display)
        for i, cells in enumerate(reader):
            if not cells:  # a blank line: no bytes between two line breaks
                continue
            raw = delimiter.join(cells).encode("utf-8", "surrogateescape")
            if any("\udc80" <= ch <= "\udcff" for c in cells for ch in c):
                yield Record(i, None, raw, RowError("", "invalid_utf8", f"invalid UTF-8 in CSV line {reader.line_num}"))
            elif len(cells) != len(header):
                msg = f"expected {len(header)} columns as in the header, got {len(cells)} (CSV line {reader.line_num})"
                yield Record(i, None, raw, RowError("", "wrong_type", msg))
            else:
                value = {k: (v if v != "" else None) for k, v in zip(header, cells, strict=True)}
                yield Record(i, value, _dumps(value))


def _check_unique(names: Sequence[str], display: str) -> None:
    """An InputError when two columns have the same name (the row values would keep only one of them)."""
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise InputError(f"{display}: the column name {name!r} appears more than once")
        seen.add(name)


def _arrow_batches(f: InputFile, progress: Progress | None) -> Iterator[Any]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    if f.container == "hf":
        state = f.path / "state.json"
        names = _hf_listing(state, "_data_files", "filename") if state.is_file() else []
        for name in names or sorted(p.name for p in f.path.glob("*.arrow")):
            part = f.path / name
            if progress:
                progress(part.stat().st_size)
            with pa.memory_map(str(part)) as source:
                yield from pa.ipc.open_stream(source)
        return
    with _seekable(f, progress) as source:
        if f.container == "parquet":
            yield from pq.ParquetFile(source).iter_batches(batch_size=BATCH_ROWS)
            return
        handle = pa.memory_map(str(source)) if isinstance(source, Path) else pa.PythonFile(source, mode="r")
        with handle:
            try:
                reader: Any = pa.ipc.open_file(handle)
                for i in range(reader.num_record_batches):
                    yield reader.get_batch(i)
            except pa.ArrowInvalid:
                handle.seek(0)
                yield from pa.ipc.open_stream(handle)


def _arrow(f: InputFile, progress: Progress | None) -> Iterator[Record]:
    import pyarrow as pa

    row = 0
    try:
        for batch in _arrow_batches(f, progress):
            _check_unique(batch.schema.names, f.display)
            yield from _batch_records(batch, row)
            row += batch.num_rows
    except (pa.ArrowException, OSError) as exc:
        raise InputError(f"{f.display}: cannot read as {f.container}: {exc}") from None


@dataclass(frozen=True)
class _Unreadable:
    """An Arrow value with no Python (or JSON) equivalent: why, and what stands for it in the rejects file."""

    error: RowError
    shown: Any


def _batch_records(batch: Any, first: int) -> Iterator[Record]:
    """An Arrow record batch's rows as records numbered from `first`; a row with an `_Unreadable` value is rejected."""
    import pyarrow as pa

    try:
        rows = batch.to_pylist() if all(_json_decoder(t) is None for t in batch.schema.types) else None
    except (ValueError, OverflowError, pa.ArrowException):
        rows = None
    if rows is not None:
        for row, value in enumerate(rows, first):
            yield Record(row, value, _dumps(value))
        return
    names = batch.schema.names  # JSON-typed values to decode, or a value that cannot be converted: column by column
    columns = [_column_values(batch.column(i), name) for i, name in enumerate(names)]
    for row, cells in enumerate(zip(*columns, strict=True), first):
        error = next((c.error for c in cells if isinstance(c, _Unreadable)), None)
        if error is None:
            value = dict(zip(names, cells, strict=True))
            yield Record(row, value, _dumps(value))
        else:
            shown = {k: v.shown if isinstance(v, _Unreadable) else v for k, v in zip(names, cells, strict=True)}
            yield Record(row, None, _dumps(shown), error)


def _column_values(array: Any, name: str) -> list[Any]:
    """An Arrow column as Python values, JSON-typed values decoded; `_Unreadable` where a value cannot be converted."""
    import pyarrow as pa

    try:
        values = array.to_pylist()
    except (ValueError, OverflowError, pa.ArrowException):
        values = [_cell(array, i, name) for i in range(len(array))]
    decode = _json_decoder(array.type)
    if decode is None:
        return values
    return [v if isinstance(v, _Unreadable) else _decoded(decode, v, name) for v in values]


def _cell(array: Any, i: int, name: str) -> Any:
    import pyarrow as pa

    try:
        return array[i].as_py()
    except UnicodeDecodeError as exc:
        error = RowError(name, "invalid_utf8", f"a string that is not valid UTF-8 (byte {exc.start + 1})")
    except (ValueError, OverflowError, pa.ArrowException) as exc:
        error = RowError(name, "wrong_type", f"a {array.type} value with no Python equivalent ({exc})")
    shown = array.slice(i, 1).to_string(skip_new_lines=True)  # Arrow's own rendering, e.g. "[<value out of range: 9>]"
    return _Unreadable(error, shown[1:-1] if shown[:1] == "[" and shown[-1:] == "]" else shown)


def _decoded(decode: Callable[[Any], Any], value: Any, name: str) -> Any:
    try:
        return decode(value)
    except orjson.JSONDecodeError as exc:
        return _Unreadable(RowError(name, "invalid_json", f"a JSON-typed value that is not valid JSON ({exc})"), value)


def _json_decoder(t: Any) -> Callable[[Any], Any] | None:
    """How to decode the values of the JSON extension type (`pa.json_()`, JSON text) within a Python value of Arrow
    type `t`, at any depth; None when `t` holds none."""
    import pyarrow as pa

    if isinstance(t, pa.BaseExtensionType):
        return _json_text if t.extension_name == "arrow.json" else None
    if pa.types.is_dictionary(t) or pa.types.is_run_end_encoded(t):
        return _json_decoder(t.value_type)
    if pa.types.is_struct(t):
        fields = [(t.field(i).name, _json_decoder(t.field(i).type)) for i in range(t.num_fields)]
        decoders = [(name, d) for name, d in fields if d is not None]
        return partial(_decode_fields, decoders) if decoders else None
    if pa.types.is_map(t):
        key, item = _json_decoder(t.key_type), _json_decoder(t.item_type)
        if key is None and item is None:
            return None
        return partial(_decode_items, partial(_decode_pair, key or _same, item or _same))
    if any(getattr(pa.types, f"is_{kind}", lambda _: False)(t) for kind in LIST_KINDS):
        inner = _json_decoder(t.value_type)
        return partial(_decode_items, inner) if inner is not None else None
    return None


def _json_text(value: str | None) -> Any:
    return None if value is None else orjson.loads(value)


def _same(value: Any) -> Any:
    return value


def _decode_items(decode: Callable[[Any], Any], value: list[Any] | None) -> Any:
    return None if value is None else [decode(v) for v in value]


def _decode_pair(key: Callable[[Any], Any], item: Callable[[Any], Any], pair: tuple[Any, Any]) -> tuple[Any, Any]:
    return key(pair[0]), item(pair[1])


def _decode_fields(decoders: list[tuple[str, Callable[[Any], Any]]], value: dict[str, Any] | None) -> Any:
    return None if value is None else value | {name: decode(value[name]) for name, decode in decoders}


READERS: dict[str, Callable[[InputFile, Progress | None], Iterator[Record]]] = {
    "jsonl": _jsonl,
    "json": _json,
    "txt": _txt,
    "csv": _csv,
    "tsv": _csv,
    "parquet": _arrow,
    "arrow": _arrow,
    "hf": _arrow,
}


def read_records(
    f: InputFile, progress: Progress | None = None, *, defer_parsing: bool = False
) -> Iterator[list[Record]]:
    """Yield the input's records in batches, in file order. A file that cannot be read raises InputError.

    defer_parsing: JSON lines come back unparsed (`Record.pending`), for the process that handles them to parse.
    """
    reader = _jsonl_lines if defer_parsing and f.container == "jsonl" else READERS[f.container]
    return _batched(reader(f, progress))
