"""Every container and compression reads to the same normalized rows as the JSONL original."""

from __future__ import annotations

import bz2
import csv
import gzip
import json
import lzma
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.feather as feather
import pyarrow.parquet as pq
import pytest
import zstandard

from dsprep.sources import discover
from paths import FIXTURES

SOURCE = FIXTURES / "formats" / "sharegpt.jsonl"  # rows of one Arrow-compatible shape, with tools and extras
CONTENT_COLUMNS = ("kind", "messages", "tools", "extra")
COMPRESSORS = {
    ".gz": gzip.compress,
    ".bz2": bz2.compress,
    ".xz": lzma.compress,
    ".zst": lambda b: zstandard.ZstdCompressor().compress(b),
}


def _records() -> list[dict[str, Any]]:
    return [json.loads(line) for line in SOURCE.read_text(encoding="utf-8").splitlines()]


def _content(rows: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [tuple(json.dumps(r[c], sort_keys=True) for c in CONTENT_COLUMNS) for r in rows]


def _columns(records: list[dict[str, Any]]) -> dict[str, list[Any]]:
    keys = sorted({k for r in records for k in r})  # from_pylist would take the first row's keys only
    return {k: [r.get(k) for r in records] for k in keys}


def _as_table(records: list[dict[str, Any]]) -> pa.Table:
    return pa.table(_columns(records))


def _write(kind: str, path: Path, records: list[dict[str, Any]]) -> None:
    if kind == "json-array":
        path.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    elif kind == "json-object-with-list":
        path.write_text(json.dumps({"data": records}), encoding="utf-8")
    elif kind == "parquet":
        pq.write_table(_as_table(records), path)
    elif kind == "arrow":
        feather.write_feather(_as_table(records), path)
    elif kind in ("csv", "tsv"):
        columns = sorted({k for r in records for k in r})
        with open(path, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh, delimiter="\t" if kind == "tsv" else ",")
            writer.writerow(columns)
            for r in records:
                cells = [r.get(c, "") for c in columns]
                writer.writerow([c if isinstance(c, str) else json.dumps(c, ensure_ascii=False) for c in cells])
    else:
        raise AssertionError(kind)


@pytest.fixture
def reference(run_convert) -> list[tuple[Any, ...]]:
    return _content(run_convert(SOURCE).rows)


@pytest.mark.parametrize(
    ("kind", "name"),
    [
        ("json-array", "data.json"),
        ("json-object-with-list", "data.json"),
        ("parquet", "data.parquet"),
        ("arrow", "data.arrow"),
        ("arrow", "data.feather"),
        ("csv", "data.csv"),
        ("tsv", "data.tsv"),
    ],
)
def test_containers_normalize_like_jsonl(run_convert, reference, tmp_path: Path, kind: str, name: str) -> None:
    path = tmp_path / name
    _write(kind, path, _records())
    done = run_convert(path, format="sharegpt")
    assert _content(done.rows) == reference
    assert [r["source_row"] for r in done.rows] == [0, 1, 2]


@pytest.mark.parametrize("suffix", sorted(COMPRESSORS))
@pytest.mark.parametrize("container", ["jsonl", "json", "parquet"])
def test_compressed_inputs(run_convert, reference, tmp_path: Path, suffix: str, container: str) -> None:
    plain = tmp_path / f"data.{container}"
    if container == "jsonl":
        plain.write_bytes(SOURCE.read_bytes())
    else:
        _write("json-array" if container == "json" else "parquet", plain, _records())
    packed = tmp_path / f"data.{container}{suffix}"
    packed.write_bytes(COMPRESSORS[suffix](plain.read_bytes()))
    plain.unlink()
    done = run_convert(packed)
    assert done.manifest["inputs"][0]["compression"] is not None
    assert _content(done.rows) == reference


def test_hf_dataset_folder(run_convert, reference, tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets", reason="the `datasets` package writes the folder under test")
    records = _records()
    datasets.Dataset.from_dict(_columns(records)).save_to_disk(str(tmp_path / "ds"))
    done = run_convert(tmp_path / "ds")
    assert _content(done.rows) == reference
    assert done.manifest["inputs"][0]["container"] == "hf"


def test_txt_is_one_document_per_line(run_convert, tmp_path: Path) -> None:
    path = tmp_path / "docs.txt"
    path.write_bytes(b"\xef\xbb\xbffirst doc\r\n\r\nsecond doc\nthird \xff doc\nlast doc")
    done = run_convert(path)
    assert [(r["source_row"], r["text"]) for r in done.rows] == [(0, "first doc"), (2, "second doc"), (4, "last doc")]
    assert [(r["source_row"], r["reason"]) for r in done.rejects] == [(3, "invalid_utf8")]


def test_single_object_json_is_one_record(run_convert, tmp_path: Path) -> None:
    path = tmp_path / "one.json"
    path.write_text(json.dumps({"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]}))
    done = run_convert(path)
    assert done.manifest["inputs"][0]["format"] == "sharegpt"
    assert len(done.rows) == 1


def test_large_json_array_streams(run_convert, reference, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("dsprep.sources.SMALL_JSON_BYTES", 16)  # force the streaming (ijson) path
    path = tmp_path / "big.json"
    _write("json-array", path, _records())
    assert _content(run_convert(path, format="sharegpt").rows) == reference


def test_discover_folders_and_globs_in_sorted_order(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    for name in ("b/2.jsonl", "a.jsonl", "b/1.json.gz", "notes.md", ".hidden.jsonl"):
        (tmp_path / name).write_bytes(b"")
    found = [f.path.relative_to(tmp_path).as_posix() for f in discover([str(tmp_path)])]
    assert found == ["a.jsonl", "b/1.json.gz", "b/2.jsonl"]
    globbed = [f.path.name for f in discover([str(tmp_path / "**" / "*.jsonl")])]
    assert globbed == ["a.jsonl", "2.jsonl"]
    assert [f.path.name for f in discover([str(tmp_path / "a.jsonl"), str(tmp_path)])] == [
        "a.jsonl",
        "1.json.gz",
        "2.jsonl",
    ]


@pytest.mark.parametrize(
    ("meta", "listing"),
    [
        ("dataset_dict.json", {"splits": ["../outside"]}),
        ("dataset_dict.json", {"splits": ["/tmp"]}),
        ("dataset_dict.json", {"splits": [".."]}),
        ("dataset_dict.json", {"splits": "train"}),
        ("state.json", {"_data_files": [{"filename": "../outside/data.arrow"}]}),
        ("state.json", {"_data_files": [{"filename": "/etc/passwd"}]}),
        ("state.json", {"_data_files": [{"filename": 7}]}),
    ],
)
def test_hf_metadata_cannot_point_outside_its_folder(run_convert, tmp_path: Path, meta: str, listing: Any) -> None:
    """Split and data-file names in a dataset folder's metadata are plain names inside it, or an input error."""
    from dsprep.errors import InputError

    outside = tmp_path / "outside"
    outside.mkdir()
    _write("parquet", outside / "data.arrow", _records())
    folder = tmp_path / "ds"
    folder.mkdir()
    (folder / meta).write_text(json.dumps(listing))
    with pytest.raises(
        InputError, match=r"ds/(dataset_dict|state)\.json: .*(plain file or folder name|must be a list)"
    ):
        run_convert(folder)
