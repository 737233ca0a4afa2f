"""Stage 1: find the input files and read them as batches of raw records, in bounded memory.

Containers: ``.jsonl`` (also ``.ndjson``), ``.json`` (an array, a single object, or an object holding the list
under ``data``/``rows``/``records``/``examples``/``items``/``instances``/``train``), ``.parquet``, ``.csv``/``.tsv``,
``.arrow``/``.feather``, ``.txt`` (one document per line) and a folder written by ``datasets.save_to_disk``; each may
be compressed with gzip, zstd, bz2 or xz, which its first bytes tell, whatever its name. A UTF-8 BOM, CRLF line ends
and a missing final newline are accepted; UTF-16/32 text is refused. A record that cannot be parsed (invalid JSON,
invalid UTF-8, not an object, an Arrow value Python cannot hold) is yielded with its `RowError`, so it reaches the
rejects file instead of stopping the run.
"""

from __future__ import annotations

import bz2
import codecs
import contextlib
import csv
import functools
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

__all__ = [
    "BOM",
    "InputFile",
    "Progress",
    "Record",
    "discover",
    "glob_matches",
    "numbered_lines",
    "open_input",
    "printable",
    "read_records",
]

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
HEAD_BYTES = 16  # the first bytes read to tell what a file holds
HF_META_BYTES = 64 << 20  # a larger state.json or dataset_dict.json is data, not `datasets` metadata
SKIPPED_NAMES_SHOWN = 5  # names listed in a folder's "skipped" line
TEXT_CONTAINERS = {"jsonl": "JSONL", "json": "JSON", "csv": "CSV", "tsv": "TSV", "txt": "text"}
SIGNATURES = {"gzip": b"\x1f\x8b", "zstd": b"\x28\xb5\x2f\xfd", "bz2": b"BZh", "xz": b"\xfd7zXZ\x00"}
BINARY_MAGIC = ((b"PAR1", "Parquet", ".parquet"), (b"ARROW1", "Arrow", ".arrow"))  # magic, what it is, its suffix
WIDE_BOMS = (  # UTF-32 first: its little-endian mark starts with UTF-16's
    (b"\xff\xfe\x00\x00", "UTF-32LE"),
    (b"\x00\x00\xfe\xff", "UTF-32BE"),
    (b"\xff\xfe", "UTF-16LE"),
    (b"\xfe\xff", "UTF-16BE"),
)
LIST_KINDS = ("list", "large_list", "fixed_size_list", "list_view", "large_list_view")  # pa.types.is_<kind>
JSON_SPACE = b" \t\r\n"
QUOTE, COMMA = ord('"'), ord(",")
_JSON_TOKEN = re.compile(rb'"(?:[^"\\]++|\\.)*+(")?|[\[\]{},]', re.DOTALL)  # a string (group 1: its end) or [ ] { } ,
_WRAPPED_LIST = re.compile(  # the start of an object holding a list under one of LIST_KEYS, up to its "["
    rb'[ \t\r\n]*\{[ \t\r\n]*"(?:' + b"|".join(k.encode() for k in LIST_KEYS) + rb')"[ \t\r\n]*:[ \t\r\n]*(?=\[)'
)
_ZSTD_SKIPPABLE = re.compile(rb"[\x50-\x5f]\x2a\x4d\x18")  # a zstd stream may start with a skippable frame
_BZ2_HEADER = re.compile(rb"BZh[1-9](?:1AY&SY|\x17\x72\x45\x38\x50\x90)")  # then a block, or the end of the stream
_LONE_SURROGATE = re.compile(  # a \uD800-\uDFFF escape that may not be half of a pair (rarely a pair, never a miss)
    rb"\\u[dD](?:[89abAB][0-9a-fA-F]{2}(?!\\u[dD][c-fC-F][0-9a-fA-F]{2})"
    rb"|(?<![^\\]\\u[dD][89abAB][0-9a-fA-F]{2}\\u[dD])[c-fC-F][0-9a-fA-F]{2})"
)

Progress = Callable[[int], None]  # called with the number of input bytes consumed since the last call
SkipReport = Callable[[str], None]  # told one line per folder about what in it was left out


def printable(name: str) -> str:
    """A file name as text that can be printed and stored: its bytes read as UTF-8 whatever the locale, those that
    are not UTF-8 written as ``\\xff`` escapes."""
    try:
        raw = os.fsencode(name)
    except UnicodeEncodeError:  # text the locale cannot spell (from a recipe, say) was never a name on disk
        raw = name.encode("utf-8", "surrogateescape")
    return raw.decode("utf-8", "backslashreplace")


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
    """The container and compression a file's name says (``.jsonl.gz``: jsonl, gzip)."""
    suffixes = [s.lower() for s in path.suffixes]
    compression = COMPRESSIONS.get(suffixes[-1]) if suffixes else None
    if compression:
        suffixes = suffixes[:-1]
    container = CONTAINERS.get(suffixes[-1]) if suffixes else None
    if container is None:
        known = ", ".join(sorted(CONTAINERS))
        raise InputError(f"{path}: unknown file type; expected one of {known} (optionally .gz/.zst/.bz2/.xz)")
    return container, compression


def _compression_of(head: bytes, named: str | None) -> str | None:
    """The compression a file's first bytes show, whatever its name says (a file too short to show its own, which
    is cut short, is taken for what its name says); None for an uncompressed file."""
    for compression, signature in SIGNATURES.items():
        if head.startswith(signature):
            if compression == "bz2" and named != "bz2" and not _BZ2_HEADER.match(head):
                continue  # "BZh" could start a text: only a whole bz2 header counts for a file not named so
            return compression
    if _ZSTD_SKIPPABLE.match(head):
        return "zstd"
    if named and SIGNATURES[named].startswith(head):
        return named
    return None


def _input_file(path: Path, display: str) -> InputFile:
    """A file to read: its container from its name, its compression from its first bytes, else from its name (a
    file named as compressed that is not is refused when read, `open_input`)."""
    container, named = _classify(path)
    compression = named
    if path.is_file():
        with contextlib.suppress(OSError), open(path, "rb") as fh:
            compression = _compression_of(fh.read(HEAD_BYTES), named) or named
    return InputFile(path, display, container, compression)


def _holds_key(path: Path, key: str) -> bool:
    """Whether `path` is a small JSON file holding an object with `key`."""
    try:
        if path.stat().st_size > HF_META_BYTES:
            return False
        value = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return False
    return isinstance(value, dict) and key in value


def _is_hf_dataset(path: Path) -> bool:
    """Whether `path` is a folder `datasets.save_to_disk` wrote: a Dataset's ``state.json`` lists ``_data_files``, a
    DatasetDict's ``dataset_dict.json`` its ``splits`` (any other file of those names is data)."""
    return _holds_key(path / "state.json", "_data_files") or _holds_key(path / "dataset_dict.json", "splits")


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
    if _holds_key(path / "dataset_dict.json", "splits"):
        splits = _hf_listing(path / "dataset_dict.json", "splits", None)
        return [InputFile(path / s, f"{display}/{s}", "hf") for s in splits]
    return [InputFile(path, display, "hf")]


def _written_by_dsprep(folder: Path) -> bool:
    """Whether `folder` is a dsprep output folder (its ``manifest.json`` is dsprep's) or an entry of dsprep's output
    cache (its ``cache.json``, see `dsprep.cache`): what dsprep wrote is not input data."""
    from dsprep.cache import ENTRY, _read_entry
    from dsprep.shards import MANIFEST, _is_dsprep_manifest

    return _is_dsprep_manifest(folder / MANIFEST) or _read_entry(folder / ENTRY) is not None


def _named(names: list[str], one: str, many: str) -> str:
    """``2 files of unknown type (a.md, b.bin)``: how many, and the first few names."""
    shown = ", ".join(printable(n) for n in names[:SKIPPED_NAMES_SHOWN])
    more = f", and {len(names) - SKIPPED_NAMES_SHOWN} more" if len(names) > SKIPPED_NAMES_SHOWN else ""
    return f"{len(names)} {one if len(names) == 1 else many} ({shown}{more})"


def _listing(here: Path, seen: set[Path], on_skip: SkipReport | None) -> tuple[list[InputFile], list[Path]]:
    """The data files in `here` and its subfolders to walk (symlinked ones too; none already in `seen`, which grows),
    both in name order. Hidden entries are left out; files of unknown type and dsprep's own output and cache folders
    are left out and told to `on_skip`."""
    try:
        entries = sorted(os.scandir(here), key=lambda e: e.name)
    except OSError as exc:
        raise InputError(f"{printable(str(here))}: cannot list this folder: {exc.strerror or exc}") from None
    files: list[InputFile] = []
    folders: list[Path] = []
    unknown: list[str] = []
    ours: list[str] = []
    for entry in entries:
        path = here / entry.name
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            real = path.resolve()
            if real in seen:  # a symlink loop, or a folder reached twice
                continue
            seen.add(real)
            if _written_by_dsprep(path):
                ours.append(entry.name)
            else:
                folders.append(path)
            continue
        try:
            files.append(_input_file(path, str(path)))
        except InputError:
            unknown.append(entry.name)
    parts = [_named(unknown, "file of unknown type", "files of unknown type")] if unknown else []
    parts += [_named(ours, "dsprep output or cache folder", "dsprep output or cache folders")] if ours else []
    if parts and on_skip:
        on_skip(f"{printable(str(here))}: skipped {' and '.join(parts)}")
    return files, folders


def _folder_inputs(folder: Path, display: str, on_skip: SkipReport | None) -> list[InputFile]:
    """Every data file below `folder` in sorted order (a folder's files, then each subfolder in name order); a
    `datasets` folder is one input per split."""
    if _is_hf_dataset(folder):
        return _hf_inputs(folder, display)
    found: list[InputFile] = []
    seen = {folder.resolve()}
    pending = [folder]
    while pending:
        here = pending.pop()
        if here != folder and _is_hf_dataset(here):
            found.extend(_hf_inputs(here, str(here)))
            continue
        files, folders = _listing(here, seen, on_skip)
        found.extend(files)
        pending.extend(reversed(folders))
    if not found:
        raise InputError(f"{display}: folder holds no readable data files")
    return found


def glob_matches(item: str) -> list[str]:
    """The paths the glob pattern `item` matches, sorted (none may match); `item` itself where it names a path or
    is no pattern."""
    if Path(item).exists() or not glob.has_magic(item):
        return [item]
    return sorted(glob.glob(item, recursive=True))


def discover(inputs: Sequence[str], *, on_skip: SkipReport | None = None) -> list[InputFile]:
    """Expand files, folders and glob patterns into a deterministic list of inputs (folders and globs sorted).

    on_skip: told one line per folder that holds files or folders left out (of unknown type; dsprep's own output or
    cache), e.g. ``data: skipped 2 files of unknown type (a.md, b.bin)``.
    """
    out: list[InputFile] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            out.extend(_folder_inputs(path, item, on_skip))
        elif path.is_file():
            out.append(_input_file(path, item))
        elif glob.has_magic(item):
            matches = glob_matches(item)
            if not matches:
                raise InputError(f"{item}: no file matches this pattern")
            out.extend(discover(matches, on_skip=on_skip))
        elif path.exists():
            raise InputError(f"{printable(item)}: not a file or folder (a pipe or a device); dsprep reads files")
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


def _one_line(exc: BaseException) -> str:
    """An exception's message on one line (Arrow's span several), control characters escaped."""
    text = "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)


def _utf8(name: str) -> bool:
    """Whether a path can be handed to pyarrow, which takes only UTF-8 names."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _decompressing(counted: IO[bytes], compression: str | None) -> IO[bytes]:
    if compression == "gzip":
        return cast(IO[bytes], gzip.GzipFile(fileobj=counted))
    if compression == "bz2":
        return bz2.BZ2File(counted)
    if compression == "xz":
        return lzma.LZMAFile(counted)
    if compression == "zstd":
        return io.BufferedReader(_Chunks(_zstd_frames(counted)), buffer_size=1 << 20)
    return counted


def _not_compressed(head: bytes, compression: str) -> str:
    """Why a file named as compressed is refused: what its first bytes look like instead."""
    binary = next((kind for magic, kind, _ in BINARY_MAGIC if head.startswith(magic)), None)
    wide = next((name for bom, name in WIDE_BOMS if head.startswith(bom)), None)
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head)  # a character cut at the end of `head` is fine
        text = True
    except UnicodeDecodeError:
        text = False
    looks = f"a {binary} file" if binary else f"{wide} text" if wide else "plain text" if text else "no known format"
    return f"the file is not {compression} data, it starts like {looks} ({head[:8]!r}): name it for what it holds"


def _check_text(f: InputFile, stream: Any) -> None:
    """An InputError when a text input's first bytes show a Parquet or Arrow file, or text that is not UTF-8."""
    head = stream.peek(HEAD_BYTES)[:HEAD_BYTES]
    binary = next(((kind, suffix) for magic, kind, suffix in BINARY_MAGIC if head.startswith(magic)), None)
    if binary:
        raise InputError(
            f"{f.display}: holds {binary[0]} data, not {TEXT_CONTAINERS[f.container]}: give it the suffix {binary[1]}"
        )
    encoding = next((name for bom, name in WIDE_BOMS if head.startswith(bom)), None)
    if encoding:
        raise InputError(
            f"{f.display}: the text is {encoding} (it starts with a {encoding} byte-order mark); dsprep reads UTF-8: "
            f"convert it first, e.g. iconv -f {encoding[:6]} -t UTF-8"
        )


@contextmanager
def open_input(f: InputFile, progress: Progress | None) -> Iterator[IO[bytes]]:
    """The input's bytes, decompressed by what its first bytes show (`_compression_of`); a file named as compressed
    that is not is refused, and a text input is checked to be UTF-8 text (`_check_text`)."""
    try:
        raw = open(f.path, "rb")  # noqa: SIM115 - closed by the stack below
    except OSError as exc:
        raise InputError(f"{f.display}: cannot open: {exc.strerror}") from None
    counted = io.BufferedReader(_Counting(raw, progress), buffer_size=1 << 20)
    stream: IO[bytes] = counted
    try:
        head = counted.peek(HEAD_BYTES)[:HEAD_BYTES]
        if f.compression and _compression_of(head, f.compression) != f.compression:
            why = _not_compressed(head, f.compression)
            raise InputError(f"{f.display}: cannot decompress ({f.compression}): {why}")
        stream = _decompressing(counted, f.compression)
        if f.container in TEXT_CONTAINERS:
            _check_text(f, stream)
        yield stream
    except (OSError, EOFError, lzma.LZMAError, zlib.error) as exc:
        what = f"cannot decompress ({f.compression})" if f.compression else "cannot read"
        raise InputError(f"{f.display}: {what}: {_one_line(exc)}") from None
    finally:
        stream.close()
        counted.close()


@contextmanager
def _seekable(f: InputFile, progress: Progress | None) -> Iterator[IO[bytes] | Path]:
    """A seekable view of the input: the path itself (an open file where its name is not UTF-8), or a decompressed
    temporary copy (bounded memory), made before the view is used, so that only decompression errors are blamed on
    decompression."""
    if f.compression is None:
        if progress:
            progress(f.size)
        if _utf8(str(f.path)):
            yield f.path
            return
        with open(f.path, "rb") as fh:
            yield fh
        return
    with tempfile.TemporaryFile() as tmp:
        with open_input(f, progress) as stream:
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


def numbered_lines(stream: IO[bytes], first: int = 0) -> Iterator[tuple[int, bytes]]:
    """The lines of a JSON Lines or text stream that are not blank, without their line ends, each with its number
    (from `first`: a stream that starts within a file starts at its line's number); a UTF-8 BOM before line 0 is
    dropped."""
    for i, line in enumerate(stream, first):
        if i == 0 and line.startswith(BOM):
            line = line[len(BOM) :]
        line = line.rstrip(b"\r\n")
        if line.strip():
            yield i, line


def _jsonl(f: InputFile, progress: Progress | None) -> Iterator[Record]:
    with open_input(f, progress) as stream:
        for i, line in numbered_lines(stream):
            value, error = _parse_json_line(line)
            yield _object_record(i, value, line, error)


def _jsonl_lines(f: InputFile, progress: Progress | None) -> Iterator[Record]:
    with open_input(f, progress) as stream:
        for i, line in numbered_lines(stream):
            yield Record(i, None, line, pending=True)


def _txt(f: InputFile, progress: Progress | None) -> Iterator[Record]:
    with open_input(f, progress) as stream:
        for i, line in numbered_lines(stream):
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
    with open_input(f, progress) as stream:
        head = stream.read(SMALL_JSON_BYTES + 1).removeprefix(BOM)
        if not head.strip():
            return
        if len(head) <= SMALL_JSON_BYTES or head.lstrip()[:1] != b"[":
            yield from _whole_json(head + stream.read(), f.display)
            return
        resume = yield from _streamed_array(head, stream)
    if resume is not None:  # ijson cannot go on: the elements from there on are parsed one by one
        with open_input(f, None) as stream:
            elements = _array_elements(stream.read(JSON_CHUNK_BYTES).removeprefix(BOM), stream, f.display)
            for i, raw in enumerate(elements):
                if i >= resume:
                    yield _element_record(i, raw)


def _whole_json(data: bytes, display: str) -> Iterator[Record]:
    """The records of a .json file read at once: its array's elements, the list an object holds, or the object."""
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        wrapped = _WRAPPED_LIST.match(data)
        if data.lstrip(JSON_SPACE)[:1] == b"[":
            elements = _array_elements(data, io.BytesIO(), display)
        elif wrapped:
            elements = _array_elements(data[wrapped.end() :], io.BytesIO(), display, closer=b"}")
        else:
            raise InputError(f"{display}: not valid JSON ({exc}); for one record per line use .jsonl") from None
        for i, raw in enumerate(elements):  # a bad element is a bad row
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
    """Input that ijson would silently alter (it turns a lone surrogate escape into "?"), or could not read in bounded
    memory (deeply nested values)."""


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
    may hold a lone surrogate escape, or values nested deeper than `jsontext.MAX_DEPTH` (ijson's memory grows with
    the square of the depth: an element 100,000 deep takes gigabytes)."""
    carry: list[bytes] = []
    depth = 0
    for chunk in chunks:
        cut = chunk.rfind(b'"')
        if cut < 0:
            carry.append(chunk)
            continue
        piece = _checked(b"".join([*carry, chunk[:cut]]))
        depth = _nesting(piece, depth)
        yield piece
        carry = [chunk[cut:]]
    piece = _checked(b"".join(carry))
    _nesting(piece, depth)
    yield piece


def _nesting(piece: bytes, depth: int) -> int:
    """The bracket depth after `piece` from `depth` before it, counting the brackets inside strings too (an
    overestimate, which costs only the slower reading); `_Unstreamable` where it passes `jsontext.MAX_DEPTH`."""
    import numpy as np

    if not piece:
        return depth
    steps = np.cumsum(_bracket_steps()[np.frombuffer(piece, np.uint8)], dtype=np.int64)
    if depth + int(steps.max()) > jsontext.MAX_DEPTH:
        raise _Unstreamable
    return max(0, depth + int(steps[-1]))


@functools.cache
def _bracket_steps() -> Any:
    """Each byte's step in bracket depth: +1 for an opening bracket, -1 for a closing one, else 0."""
    import numpy as np

    steps = np.zeros(256, np.int8)
    steps[[ord("["), ord("{")]] = 1
    steps[[ord("]"), ord("}")]] = -1
    return steps


def _checked(piece: bytes) -> bytes:
    if (b"\\ud" in piece or b"\\uD" in piece) and _LONE_SURROGATE.search(piece):
        raise _Unstreamable
    return piece


def _array_elements(head: bytes, stream: IO[bytes], display: str, *, closer: bytes = b"") -> Iterator[bytes]:
    """The text of each element of the JSON array that `head` and then `stream` hold, in bounded memory.

    Only strings, brackets and commas are followed, so an element that is not valid JSON is still one element, for
    its parser to reject. A bracket that does not match, an empty element, an array that does not end, or text after
    it other than `closer` (the end of an object wrapping the array) is an InputError.
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
                _expect_end(buf[start:], stream, display, closer)
                return
        chunk = stream.read(max(JSON_CHUNK_BYTES, len(buf) - start))  # a long element doubles what is read
        if not chunk:
            raise InputError(f"{display}: not valid JSON (the file ends inside element {count} of the array)")
        buf, pos, start = buf[start:] + chunk, resume - start, 0


def _expect_end(rest: bytes, stream: IO[bytes], display: str, closer: bytes) -> None:
    """An InputError unless `rest` and what is left of `stream` are `closer` amid whitespace."""
    seen = rest.translate(None, JSON_SPACE)
    while closer.startswith(seen) and (rest := stream.read(JSON_CHUNK_BYTES)):
        seen += rest.translate(None, JSON_SPACE)
    if not closer.startswith(seen):
        raise InputError(f"{display}: not valid JSON (text after the end of the {'object' if closer else 'array'})")
    if seen != closer:
        raise InputError(f"{display}: not valid JSON (the file ends before the object's closing '}}')")


def _csv(f: InputFile, progress: Progress | None) -> Iterator[Record]:
    """CSV, and TSV, with CSV's quoting rules (as pandas and `datasets` read both); rows are numbered from 0 after
    the header, blank lines not counted, and a message names the CSV line a row starts on."""
    delimiter = "\t" if f.container == "tsv" else ","
    with open_input(f, progress) as stream:
        text = io.TextIOWrapper(stream, encoding="utf-8-sig", errors="surrogateescape", newline="")
        csv.field_size_limit(max(csv.field_size_limit(), CSV_FIELD_LIMIT))
        rows = _csv_rows(text, delimiter, f.display)
        header = next(rows, None)  # blank lines before the header are skipped
        if header is None:
            return
        if any("\udc80" <= ch <= "\udcff" for name in header[1] for ch in name):
            raise InputError(f"{f.display}: the CSV header is not valid UTF-8")
        names = header[1]
        _check_unique(names, f.display)
        for i, (line, cells) in enumerate(rows):
            raw = delimiter.join(cells).encode("utf-8", "surrogateescape")
            if any("\udc80" <= ch <= "\udcff" for c in cells for ch in c):
                yield Record(i, None, raw, RowError("", "invalid_utf8", f"invalid UTF-8 in CSV line {line}"))
            elif len(cells) != len(names):
                msg = f"expected {len(names)} columns as in the header, got {len(cells)} (CSV line {line})"
                yield Record(i, None, raw, RowError("", "wrong_type", msg))
            else:
                value = {k: (v if v != "" else None) for k, v in zip(names, cells, strict=True)}
                yield Record(i, value, _dumps(value))


def _csv_rows(text: IO[str], delimiter: str, display: str) -> Iterator[tuple[int, list[str]]]:
    """The records of CSV text that are not blank lines, each with the line it starts on (1-based). A quote that is
    never closed (its record then runs to the end of the file) is an InputError."""
    lines = _Lines(text)
    reader = csv.reader(lines, delimiter=delimiter)
    while True:
        first = reader.line_num + 1
        cells = next(reader, None)
        if cells is None:
            return
        if lines.ended:  # the reader wanted more lines for this record: a quoted cell was still open
            raise InputError(
                f"{display}: the quote opened in CSV line {first} is never closed "
                "(the rest of the file would be one cell)"
            )
        if cells:  # not a blank line (no bytes between two line breaks)
            yield first, cells


class _Lines:
    """The lines of a text stream; `ended` once the stream has none left, which a csv reader finds out only where
    a record is still open when the text ends."""

    def __init__(self, text: IO[str]) -> None:
        self._text = text
        self.ended = False

    def __iter__(self) -> _Lines:
        return self

    def __next__(self) -> str:
        line = self._text.readline()
        if not line:
            self.ended = True
            raise StopIteration
        return line


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
            with _arrow_file(part) as source:
                yield from pa.ipc.open_stream(source)
        return
    with _seekable(f, progress) as source:
        if f.container == "parquet":
            yield from pq.ParquetFile(source).iter_batches(batch_size=BATCH_ROWS)
            return
        handle = _arrow_file(source) if isinstance(source, Path) else pa.PythonFile(source, mode="r")
        with handle:
            try:
                reader: Any = pa.ipc.open_file(handle)
                for i in range(reader.num_record_batches):
                    yield reader.get_batch(i)
            except pa.ArrowInvalid:
                handle.seek(0)
                yield from pa.ipc.open_stream(handle)


def _arrow_file(path: Path) -> Any:
    """`path` for pyarrow: memory-mapped, or read through Python where its name is not UTF-8."""
    import pyarrow as pa

    if _utf8(str(path)):
        return pa.memory_map(str(path))
    return pa.PythonFile(open(path, "rb"), mode="r")  # the PythonFile closes it


def _arrow(f: InputFile, progress: Progress | None) -> Iterator[Record]:
    import pyarrow as pa

    row = 0
    try:
        for batch in _arrow_batches(f, progress):
            _check_unique(batch.schema.names, f.display)
            yield from _batch_records(batch, row)
            row += batch.num_rows
    except (pa.ArrowException, OSError) as exc:
        raise InputError(f"{f.display}: cannot read as {f.container}: {_one_line(exc)}") from None


@dataclass(frozen=True)
class _Unreadable:
    """An Arrow value with no Python (or JSON) equivalent: why, and what stands for it in the rejects file."""

    error: RowError
    shown: Any


def _batch_records(batch: Any, first: int) -> Iterator[Record]:
    """An Arrow record batch's rows as records numbered from `first`; a row with an `_Unreadable` value is rejected."""
    import pyarrow as pa

    try:
        rows = batch.to_pylist() if all(_converter(t) is None for t in batch.schema.types) else None
    except (ValueError, OverflowError, pa.ArrowException):
        rows = None
    if rows is not None:
        for row, value in enumerate(rows, first):
            yield Record(row, value, _dumps(value))
        return
    names = batch.schema.names  # values to convert (`_converter`), or one Python cannot hold: column by column
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
    """An Arrow column as Python values as `_converter` makes them; `_Unreadable` where a value cannot be converted."""
    import pyarrow as pa

    try:
        values = array.to_pylist()
    except (ValueError, OverflowError, pa.ArrowException):
        values = [_cell(array, i, name) for i in range(len(array))]
    convert = _converter(array.type)
    if convert is None:
        return values
    return [v if isinstance(v, _Unreadable) else _decoded(convert, v, name) for v in values]


def _cell(array: Any, i: int, name: str) -> Any:
    import pyarrow as pa

    try:
        return array[i].as_py()
    except UnicodeDecodeError as exc:
        error = RowError(name, "invalid_utf8", f"a string that is not valid UTF-8 (byte {exc.start + 1})")
    except (ValueError, OverflowError, pa.ArrowException) as exc:
        error = RowError(name, "wrong_type", f"a {array.type} value with no Python equivalent ({_one_line(exc)})")
    shown = array.slice(i, 1).to_string(skip_new_lines=True)  # Arrow's own rendering, e.g. "[<value out of range: 9>]"
    return _Unreadable(error, shown[1:-1] if shown[:1] == "[" and shown[-1:] == "]" else shown)


def _decoded(decode: Callable[[Any], Any], value: Any, name: str) -> Any:
    try:
        return decode(value)
    except orjson.JSONDecodeError as exc:
        return _Unreadable(RowError(name, "invalid_json", f"a JSON-typed value that is not valid JSON ({exc})"), value)


def _converter(t: Any) -> Callable[[Any], Any] | None:
    """What turns the Python value of an Arrow value of type `t` into the value its JSON record holds, at any depth:
    null struct fields dropped, values of the JSON extension type decoded; None when `t` needs neither.

    Arrow gives all the rows of a column one struct type, the union of their keys, so a key absent from a JSON
    object comes back as null (tool-call arguments ``{"city": "Paris"}`` and ``{"tz": "UTC"}`` would each gain the
    other's key). Arrow cannot tell such a null from one the data held, so every null field is dropped.
    """
    import pyarrow as pa

    if isinstance(t, pa.BaseExtensionType):
        return _json_text if t.extension_name == "arrow.json" else _converter(t.storage_type)
    if pa.types.is_dictionary(t) or pa.types.is_run_end_encoded(t):
        return _converter(t.value_type)
    if pa.types.is_struct(t):
        fields = [(t.field(i).name, _converter(t.field(i).type)) for i in range(t.num_fields)]
        return partial(_struct_fields, {name: c for name, c in fields if c is not None})
    if pa.types.is_map(t):
        key, item = _converter(t.key_type), _converter(t.item_type)
        if key is None and item is None:
            return None
        return partial(_decode_items, partial(_decode_pair, key or _same, item or _same))
    if any(getattr(pa.types, f"is_{kind}", lambda _: False)(t) for kind in LIST_KINDS):
        inner = _converter(t.value_type)
        return partial(_decode_items, inner) if inner is not None else None
    return None


def _struct_fields(inner: dict[str, Callable[[Any], Any]], value: dict[str, Any] | None) -> Any:
    """A struct's value without its null fields, the others converted by `inner` where it has theirs."""
    if value is None:
        return None
    return {k: inner[k](v) if k in inner else v for k, v in value.items() if v is not None}


def _json_text(value: str | None) -> Any:
    return None if value is None else orjson.loads(value)


def _same(value: Any) -> Any:
    return value


def _decode_items(decode: Callable[[Any], Any], value: list[Any] | None) -> Any:
    return None if value is None else [decode(v) for v in value]


def _decode_pair(key: Callable[[Any], Any], item: Callable[[Any], Any], pair: tuple[Any, Any]) -> tuple[Any, Any]:
    return key(pair[0]), item(pair[1])


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
