"""A plain JSON Lines input read in slices of lines (`dsprep.lines`) gives exactly the records, and the converts
exactly the output, that reading it record by record gives."""

from __future__ import annotations

import gzip
import itertools
import json
from pathlib import Path

import pytest

import dsprep.lines
import dsprep.pipeline
from dsprep.config import ConvertConfig
from dsprep.errors import InputError
from dsprep.lines import LineScanner, LineSlice, sliceable
from dsprep.pipeline import convert
from dsprep.sources import Record, discover, read_records

BOM = b"\xef\xbb\xbf"
LINE = b'{"messages": [{"role": "user", "content": "hi %d"}, {"role": "assistant", "content": "ok"}]}'
AWKWARD = {  # what a JSON Lines file may hold around its records
    "plain": b"".join(LINE % i + b"\n" for i in range(40)),
    "bom, crlf, no final line end": BOM + b"\r\n".join(LINE % i for i in range(40)),
    "blank lines everywhere": b"\n \n" + b"\n\t\r\n\n".join(LINE % i for i in range(40)) + b"\n\n \x0c\n",
    "bom then a blank line": BOM + b"\n" + b"".join(LINE % i + b"\n" for i in range(5)),
    "leading spaces, lone cr, broken lines": b"".join(b"  " + LINE % i + b"\r\r\n{not json\n" for i in range(20)),
    "a line longer than a read": LINE % 0 + b"\n" + b'{"text": "' + b"x" * 5000 + b'"}\n' + LINE % 1 + b"\n",
    "only blank lines": b"\n\n  \n\r\n",
    "empty": b"",
    "one line, no line end": LINE % 7,
}


def _expected(path: Path) -> list[Record]:
    return [r for batch in read_records(discover([str(path)])[0], defer_parsing=True) for r in batch]


def _sliced(path: Path, sizes: list[int]) -> tuple[list[LineSlice], list[Record]]:
    f = discover([str(path)])[0]
    slices: list[LineSlice] = []
    with LineScanner(f) as scanner:
        at = 0
        while (lines := scanner.take(sizes[at % len(sizes)])) is not None:
            slices.append(lines)
            at += 1
    return slices, [r for s in slices for r in s.records()]


@pytest.mark.parametrize("name", AWKWARD)
@pytest.mark.parametrize("sizes", [[1], [3, 1, 7], [256]])
def test_slices_hold_the_records_read_record_by_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, sizes: list[int]
) -> None:
    monkeypatch.setattr(dsprep.lines, "BLOCK_BYTES", 64)  # lines cross reads, and one is longer than several
    path = tmp_path / "in.jsonl"
    path.write_bytes(AWKWARD[name])
    expected = _expected(path)
    slices, records = _sliced(path, sizes)
    assert [(r.row, r.raw, r.pending) for r in records] == [(r.row, r.raw, r.pending) for r in expected]
    assert all(0 < s.rows <= sizes[i % len(sizes)] for i, s in enumerate(slices))
    assert all(s.rows == sizes[i % len(sizes)] for i, s in enumerate(slices[:-1]))  # only the last one is short
    assert all(a.end == b.start for a, b in itertools.pairwise(slices))  # no byte is read twice


def test_a_slice_of_a_file_changed_since_is_an_input_error(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(AWKWARD["plain"])
    slices, _ = _sliced(path, [10])
    path.write_bytes(AWKWARD["plain"][:100])
    with pytest.raises(InputError, match=r"in\.jsonl: changed while it was read"):
        slices[1].records()
    path.unlink()
    with pytest.raises(InputError, match=r"in\.jsonl: cannot read"):
        slices[0].records()


def test_only_plain_json_lines_files_are_sliced(tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_bytes(LINE % 0)
    (tmp_path / "b.jsonl.gz").write_bytes(gzip.compress(LINE % 0))
    (tmp_path / "c.jsonl").write_bytes(gzip.compress(LINE % 0))  # gzip whatever its name says
    (tmp_path / "d.json").write_bytes(LINE % 0)
    found = {f.path.name: sliceable(f) for f in discover([str(tmp_path)])}
    assert found == {"a.jsonl": True, "b.jsonl.gz": False, "c.jsonl": False, "d.json": False}


@pytest.mark.parametrize("workers", [1, 2])
def test_converts_from_slices_write_what_converts_from_records_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: int
) -> None:
    """Tasks that cross from a sliced input into a compressed one and back, blank and broken lines, rejects: the
    shards, rejects and manifest are the same bytes whether the JSON Lines inputs are sliced or read as records."""
    monkeypatch.setattr(dsprep.pipeline, "TASK_ROWS", 16)
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.jsonl").write_bytes(AWKWARD["blank lines everywhere"])
    (data / "b.jsonl.gz").write_bytes(gzip.compress(AWKWARD["plain"]))
    (data / "c.jsonl").write_bytes(AWKWARD["leading spaces, lone cr, broken lines"])
    (data / "d.jsonl").write_bytes(b"".join(json.dumps({"messages": [{"role": "user", "content": "q"}]}).encode()
                                            + b"\n" for _ in range(5)))  # fmt: skip
    common = {"inputs": (str(data),), "tokenizer": "mistral:tekken", "template": "chatml", "workers": workers,
              "format": "openai", "cache": False}  # fmt: skip
    sliced = convert(ConvertConfig(out=tmp_path / "sliced", pack=256, **common))
    monkeypatch.setattr(dsprep.pipeline, "sliceable", lambda f: False)
    whole = convert(ConvertConfig(out=tmp_path / "whole", pack=256, **common))
    assert sliced.rows_read == whole.rows_read == 40 + 40 + 40 + 5
    assert sliced.rows_rejected == 20 + 5
    one, other = (sorted(p.name for p in (tmp_path / d).iterdir()) for d in ("sliced", "whole"))
    assert one == other and len(one) > 2
    for name in one:
        assert (tmp_path / "sliced" / name).read_bytes() == (tmp_path / "whole" / name).read_bytes(), name
