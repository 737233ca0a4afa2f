"""Stage 1: find the input files and read them as batches of raw records, in bounded memory.

Containers: ``.jsonl`` (also ``.ndjson``), ``.json`` (an array, a single object, or an object holding the list
under ``data``/``rows``/``records``/``examples``/``items``/``instances``/``train``), ``.parquet``, ``.csv``/``.tsv``,
``.arrow``/``.feather``, ``.txt`` (one document per line) and a folder written by ``datasets.save_to_disk``; each may
be compressed as ``.gz``/``.zst``/``.bz2``/``.xz``. A UTF-8 BOM, CRLF line ends and a missing final newline are
accepted. A record that cannot be parsed (invalid JSON, invalid UTF-8, not an object) is yielded with its
`RowError`, so it reaches the rejects file instead of stopping the run.
"""

from __future__ import annotations

import bz2
import csv
import glob
import gzip
import io
import lzma
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, cast

import orjson

from dsprep import jsontext
from dsprep.errors import InputError, RowError

__all__ = ["InputFile", "Record", "discover", "read_records"]

BATCH_ROWS = 1024
CSV_FIELD_LIMIT = (1 << 31) - 1  # characters in one CSV cell (Python's default, 131072, is too small for documents)
SMALL_JSON_BYTES = 32 << 20  # .json arrays above this stream through ijson instead of one orjson.loads
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

Progress = Callable[[int], None]  # called with the number of input bytes consumed since the last call


@dataclass(frozen=True)
class InputFile:
    """One input to read: where it is, how it is stored, and the name it is reported under."""

    path: Path
    display: str
    container: str
    compression: str | None = None

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
        import zstandard

        stream = io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(counted), buffer_size=1 << 20)
    else:
        stream = counted
    try:
        yield stream
    except (OSError, EOFError, lzma.LZMAError) as exc:
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


def _json_values(f: InputFile, progress: Progress | None) -> Iterator[Any]:
    with _open_binary(f, progress) as stream:
        head = stream.read(SMALL_JSON_BYTES + 1)
        if head.startswith(BOM):
            head = head[len(BOM) :]
        if not head.strip():
            return
        if len(head) <= SMALL_JSON_BYTES or head.lstrip()[:1] != b"[":
            data = head + stream.read()
            try:
                value = orjson.loads(data)
            except orjson.JSONDecodeError as exc:
                raise InputError(f"{f.display}: not valid JSON ({exc}); for one record per line use .jsonl") from None
            if isinstance(value, list):
                yield from value
            elif isinstance(value, dict):
                keys = [k for k in LIST_KEYS if isinstance(value.get(k), list)]
                yield from value[keys[0]] if len(value) == 1 and keys else [value]
            else:
                raise InputError(f"{f.display}: expected a JSON array or object at the top level")
            return
        import ijson

        try:
            yield from ijson.items(io.BufferedReader(_Prefixed(head, stream)), "item", use_float=True)
        except ijson.JSONError as exc:
            raise InputError(f"{f.display}: not valid JSON ({exc})") from None


class _Prefixed(io.RawIOBase):
    """A stream that first returns already-read bytes, then the rest of the underlying stream."""

    def __init__(self, head: bytes, rest: IO[bytes]) -> None:
        self._head = memoryview(head)
        self._rest = rest

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self._head:
            n = min(len(buffer), len(self._head))
            buffer[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        data = self._rest.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def _dumps(value: Any) -> bytes:
    try:
        return jsontext.dumps(value)
    except jsontext.TooDeepError as exc:
        return orjson.dumps(f"<{exc}>")  # stands in for the raw text in the rejects file


def _json(f: InputFile, progress: Progress | None) -> Iterator[Record]:
    for i, value in enumerate(_json_values(f, progress)):
        try:
            yield _object_record(i, value, jsontext.dumps(value))
        except jsontext.TooDeepError as exc:
            yield _object_record(i, None, _dumps(value), RowError("", "invalid_json", str(exc)))


def _csv(f: InputFile, progress: Progress | None) -> Iterator[Record]:
    delimiter = "\t" if f.container == "tsv" else ","
    with _open_binary(f, progress) as stream:
        text = io.TextIOWrapper(stream, encoding="utf-8-sig", errors="surrogateescape", newline="")
        csv.field_size_limit(max(csv.field_size_limit(), CSV_FIELD_LIMIT))
        reader = csv.reader(text, delimiter=delimiter)
        header = next(reader, None)
        if header is None:
            return
        if any("\udc80" <= ch <= "\udcff" for name in header for ch in name):
            raise InputError(f"{f.display}: the CSV header is not valid UTF-8")
        for i, cells in enumerate(reader):
            if not any(c.strip() for c in cells):
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
            for value in batch.to_pylist():
                yield Record(row, value, _dumps(value))
                row += 1
    except (pa.ArrowException, OSError) as exc:
        raise InputError(f"{f.display}: cannot read as {f.container}: {exc}") from None


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
