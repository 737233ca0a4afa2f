"""What a file or folder holds decides how it is read: `datasets` folders by their real metadata, compression by the
file's first bytes, symlinked and dsprep-written subfolders, Arrow structs read as their JSON rows, JSON lists
wrapped in an object, CSV row numbers, and one-line errors naming the file (exit code 3)."""

from __future__ import annotations

import bz2
import gzip
import io
import json
import lzma
import os
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.feather as feather
import pyarrow.parquet as pq
import pytest
import zstandard
from click.testing import CliRunner

from dsprep import sources
from dsprep.cli import main
from dsprep.sources import discover

TEXTS = [{"text": "first"}, {"text": "second"}, {"text": "third"}]
IGNORED = ("id", "source_file")  # what legitimately differs between the same rows in two files


def _jsonl(rows: list[dict[str, Any]]) -> bytes:
    return b"".join(orjson.dumps(r) + b"\n" for r in rows)


def _cli_error(path: Path, tmp_path: Path, *options: str) -> str:
    """Run `dsprep convert` on an input that cannot be read: exit code 3 and one `error:` line naming it."""
    result = CliRunner().invoke(main, ["convert", str(path), "--out", str(tmp_path / "cli-out"), "-q", *options])
    assert result.exit_code == 3, result.output
    assert result.output.startswith(f"error: {path}: ") and result.output.count("\n") == 1, result.output
    return result.output


def _report(done: Any) -> tuple[int, int, int]:
    report = done.manifest["inputs"][0]
    return report["rows_read"], report["rows_kept"], report["rows_rejected"]


def _names(folder: Path, **options: Any) -> list[str]:
    return [f.path.relative_to(folder).as_posix() for f in discover([str(folder)], **options)]


def _same_rows(done: Any) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k not in IGNORED} for r in done.rows]


# --- datasets folders -------------------------------------------------------------------------------------------


def test_a_foreign_state_json_does_not_make_a_dataset_folder(run_convert, tmp_path: Path) -> None:
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "data.jsonl").write_bytes(_jsonl(TEXTS))
    (folder / "state.json").write_text(json.dumps([{"text": "a training state, read as data"}]))
    (folder / "dataset_dict.json").write_text(json.dumps({"train": "notes"}))
    assert _names(folder) == ["data.jsonl", "dataset_dict.json", "state.json"]
    (folder / "dataset_dict.json").unlink()
    done = run_convert(folder, format="text")
    assert [(i["rows_read"], i["rows_kept"]) for i in done.manifest["inputs"]] == [(3, 3), (1, 1)]
    assert [r["text"] for r in done.rows] == ["first", "second", "third", "a training state, read as data"]


def test_folders_datasets_writes_are_still_datasets(run_convert, tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    one = datasets.Dataset.from_list(TEXTS)
    one.save_to_disk(str(tmp_path / "ds"))
    datasets.DatasetDict({"train": one, "test": one.select([0])}).save_to_disk(str(tmp_path / "dd"))
    found = discover([str(tmp_path / "ds"), str(tmp_path / "dd")])
    assert [(f.path.relative_to(tmp_path).as_posix(), f.container) for f in found] == [
        ("ds", "hf"),
        ("dd/train", "hf"),
        ("dd/test", "hf"),
    ]
    done = run_convert(tmp_path / "dd", format="text")
    assert [r["text"] for r in done.rows] == ["first", "second", "third", "first"]


def test_dataset_subfolders_come_in_sorted_order(tmp_path: Path) -> None:
    """A folder's files in name order, then its subfolders in name order, a `datasets` folder among them."""
    (tmp_path / "b_saved").mkdir()
    (tmp_path / "b_saved" / "state.json").write_text(json.dumps({"_data_files": []}))
    (tmp_path / "d").mkdir()
    for name in ("a.jsonl", "c.jsonl", "d/e.jsonl"):
        (tmp_path / name).write_bytes(_jsonl(TEXTS))
    assert _names(tmp_path) == ["a.jsonl", "c.jsonl", "b_saved", "d/e.jsonl"]


# --- folders: symlinks, dsprep's own folders, what is skipped ---------------------------------------------------


def test_symlinked_subfolders_are_followed_once(tmp_path: Path) -> None:
    data, other = tmp_path / "data", tmp_path / "other"
    data.mkdir()
    other.mkdir()
    (data / "a.jsonl").write_bytes(_jsonl(TEXTS))
    (other / "b.jsonl").write_bytes(_jsonl(TEXTS))
    (data / "linked").symlink_to(other, target_is_directory=True)
    (data / "loop").symlink_to(data, target_is_directory=True)  # would walk forever
    (other / "back").symlink_to(other, target_is_directory=True)
    assert _names(data) == ["a.jsonl", "linked/b.jsonl"]
    both = discover([str(data), str(other)])  # the same file by two paths is read once
    assert [f.path.relative_to(tmp_path).as_posix() for f in both] == ["data/a.jsonl", "data/linked/b.jsonl"]


def test_an_earlier_output_inside_the_input_folder_is_not_read(tmp_path: Path) -> None:
    inp = tmp_path / "inp"
    inp.mkdir()
    (inp / "data.jsonl").write_bytes(_jsonl(TEXTS))
    args = ["--format", "text", "-q", "--cache-dir", str(inp / "cache")]
    first = CliRunner().invoke(main, ["convert", str(inp), "-o", str(inp / "v1"), *args])
    assert first.exit_code == 0, first.output
    assert (inp / "cache").is_dir() and len(list((inp / "cache").iterdir())) == 1  # one cache entry
    second = CliRunner().invoke(main, ["convert", str(inp), "-o", str(inp / "v2"), *args])
    assert second.exit_code == 0, second.output
    manifest = orjson.loads((inp / "v2" / "manifest.json").read_bytes())
    assert [(i["path"], i["rows_read"]) for i in manifest["inputs"]] == [(f"{inp}/data.jsonl", 3)]
    skipped: list[str] = []
    assert _names(inp, on_skip=skipped.append) == ["data.jsonl"]
    key = next((inp / "cache").iterdir()).name
    assert skipped == [
        f"{inp}: skipped 2 dsprep output or cache folders (v1, v2)",
        f"{inp}/cache: skipped 1 dsprep output or cache folder ({key})",
    ]


def test_skipped_files_are_told_one_line_per_folder(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    for name in ("a.jsonl", "a.jsonl.gzip", "notes.md", ".hidden.jsonl", "sub/b.jsonl", "sub/x.bin"):
        (tmp_path / name).write_bytes(_jsonl(TEXTS))
    for i in range(7):
        (tmp_path / "sub" / f"img{i}.png").write_bytes(b"\x89PNG")
    skipped: list[str] = []
    assert _names(tmp_path, on_skip=skipped.append) == ["a.jsonl", "sub/b.jsonl"]
    assert skipped == [
        f"{tmp_path}: skipped 2 files of unknown type (a.jsonl.gzip, notes.md)",
        f"{tmp_path}/sub: skipped 8 files of unknown type (img0.png, img1.png, img2.png, img3.png, img4.png, "
        "and 3 more)",
    ]
    assert _names(tmp_path) == ["a.jsonl", "sub/b.jsonl"]  # no one to tell: skipped all the same


# --- Arrow structs read as the JSON rows they came from ---------------------------------------------------------


def _tool_rows() -> list[dict[str, Any]]:
    def row(city_or_tz: dict[str, str]) -> dict[str, Any]:
        call = {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": city_or_tz}}
        return {
            "messages": [
                {"role": "user", "content": "weather?"},
                {"role": "assistant", "tool_calls": [call]},
                {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
                {"role": "assistant", "content": "Sunny."},
            ]
        }

    return [row({"city": "Paris"}), row({"tz": "UTC"})]


def _write_table(kind: str, path: Path, rows: list[dict[str, Any]]) -> Path:
    """`rows` as a Parquet, Arrow (IPC file) or Arrow stream (`datasets`' data files) file, written through Python
    (so that its name may be any bytes)."""
    table = pa.Table.from_pylist(rows)
    with open(path, "wb") as fh:
        if kind == "parquet":
            pq.write_table(table, fh)
        elif kind == "arrow":
            feather.write_feather(table, fh)
        else:
            with pa.ipc.new_stream(fh, table.schema) as writer:
                writer.write_table(table)
    return path


@pytest.mark.parametrize("kind", ["parquet", "arrow"])
def test_struct_fields_other_rows_have_are_not_added(run_convert, tmp_path: Path, kind: str) -> None:
    rows = _tool_rows()
    (tmp_path / "calls.jsonl").write_bytes(_jsonl(rows))
    table = _write_table(kind, tmp_path / f"calls.{kind}", rows)
    as_jsonl = run_convert(tmp_path / "calls.jsonl", format="openai")
    as_table = run_convert(table, format="openai")
    calls = [r["messages"][1]["tool_calls"][0]["arguments"] for r in as_table.rows]
    assert calls == ['{"city":"Paris"}', '{"tz":"UTC"}']
    assert _same_rows(as_table) == _same_rows(as_jsonl)


def test_drone_tools_read_from_parquet_as_from_jsonl(run_convert, tmp_path: Path, shared_data: Path) -> None:
    source = next(shared_data.glob("*/*drone_training*.jsonl"), None)
    if source is None:
        pytest.skip(f"no *drone_training*.jsonl in {shared_data}")
    rows = [orjson.loads(line) for line in source.read_bytes().splitlines() if line.strip()]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "drone.parquet")
    options = {"tokenizer": "mistral:tekken", "template": "chatml"}
    from_jsonl = run_convert(source, **options)
    from_parquet = run_convert(tmp_path / "drone.parquet", **options)
    assert _report(from_parquet) == _report(from_jsonl) == (len(rows), len(rows), 0)
    assert _same_rows(from_parquet) == _same_rows(from_jsonl)
    normalized = run_convert(tmp_path / "drone.parquet")
    assert [orjson.loads(r["tools"]) for r in normalized.rows] == [r["tools"] for r in rows]


# --- JSON: a list wrapped in an object --------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["data", "rows", "train"])
def test_a_bad_element_of_a_wrapped_list_is_a_rejected_row(run_convert, tmp_path: Path, json_reading: str, key: str):
    path = tmp_path / "wrapped.json"
    path.write_bytes(b' {\n  "' + key.encode() + b'" : [{"text": "first"}, {"text": oops}, {"text": "third"}]\n}\n')
    done = run_convert(path, format="text")
    assert _report(done) == (3, 2, 1)
    assert [(r["source_row"], r["text"]) for r in done.rows] == [(0, "first"), (2, "third")]
    assert [(r["source_row"], r["reason"], r["raw"]) for r in done.rejects] == [(1, "invalid_json", '{"text": oops}')]


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b'{"data": [{"text": x}]', "the file ends before the object's closing '}'"),
        (b'{"data": [{"text": x}]}, 3', "text after the end of the object"),
        (b'{"data": [{"text": x}], "more": 1}', "text after the end of the object"),
    ],
)
def test_a_broken_wrapped_list_is_a_one_line_error(tmp_path: Path, json_reading: str, data: bytes, problem: str):
    path = tmp_path / "wrapped.json"
    path.write_bytes(data)
    assert _cli_error(path, tmp_path, "--format", "text") == f"error: {path}: not valid JSON ({problem})\n"


# --- content, not name ------------------------------------------------------------------------------------------


COMPRESSORS = {
    "gzip": lambda b: gzip.compress(b, mtime=0),
    "zstd": lambda b: zstandard.ZstdCompressor().compress(b),
    "bz2": bz2.compress,
    "xz": lzma.compress,
}


@pytest.mark.parametrize("compression", sorted(COMPRESSORS))
@pytest.mark.parametrize("name", ["data.jsonl", "data.jsonl.gz", "data.jsonl.zst"])
def test_compressed_files_are_read_by_their_content(run_convert, tmp_path: Path, compression: str, name: str):
    path = tmp_path / name
    path.write_bytes(COMPRESSORS[compression](_jsonl(TEXTS)))
    done = run_convert(path, format="text")
    assert _report(done) == (3, 3, 0)
    assert [r["text"] for r in done.rows] == ["first", "second", "third"]
    assert done.manifest["inputs"][0]["compression"] == compression


@pytest.mark.parametrize("kind", ["parquet", "arrow"])
def test_compressed_tables_are_read_by_their_content(run_convert, tmp_path: Path, kind: str) -> None:
    table = _write_table(kind, tmp_path / f"t.{kind}", TEXTS)
    table.write_bytes(gzip.compress(table.read_bytes()))
    done = run_convert(table, format="text")
    assert [(r["source_row"], r["text"]) for r in done.rows] == [(0, "first"), (1, "second"), (2, "third")]


@pytest.mark.parametrize(
    ("name", "data", "problem"),
    [
        ("plain.jsonl.gz", b'{"text": "a"}\n', "cannot decompress (gzip): the file is not gzip data, it starts like "
         "plain text (b'{\"text\":'): name it for what it holds"),
        ("table.jsonl.zst", b"PAR1\x15\x04", "cannot decompress (zstd): the file is not zstd data, it starts like a "
         "Parquet file (b'PAR1\\x15\\x04'): name it for what it holds"),
        ("table.jsonl", b"PAR1\x15\x04", "holds Parquet data, not JSONL: give it the suffix .parquet"),
        ("table.csv", b"ARROW1\x00\x00", "holds Arrow data, not CSV: give it the suffix .arrow"),
        ("wide.jsonl", '{"text": "a"}\n'.encode("utf-16"), "the text is UTF-16LE (it starts with a UTF-16LE "
         "byte-order mark); dsprep reads UTF-8: convert it first, e.g. iconv -f UTF-16 -t UTF-8"),
        ("wide.csv", b"\xfe\xff" + "text\na\n".encode("utf-16-be"), "the text is UTF-16BE (it starts with a "
         "UTF-16BE byte-order mark); dsprep reads UTF-8: convert it first, e.g. iconv -f UTF-16 -t UTF-8"),
        ("wide.txt", "a\n".encode("utf-32"), "the text is UTF-32LE (it starts with a UTF-32LE byte-order mark); "
         "dsprep reads UTF-8: convert it first, e.g. iconv -f UTF-32 -t UTF-8"),
    ],
)  # fmt: skip
def test_content_that_is_not_what_the_name_says(tmp_path: Path, name: str, data: bytes, problem: str) -> None:
    path = tmp_path / name
    path.write_bytes(data)
    assert _cli_error(path, tmp_path, "--format", "text") == f"error: {path}: {problem}\n"


def test_utf16_inside_gzip_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "wide.json.gz"
    path.write_bytes(gzip.compress(json.dumps(TEXTS).encode("utf-16")))
    assert "the text is UTF-16LE" in _cli_error(path, tmp_path, "--format", "text")


# --- CSV positions ----------------------------------------------------------------------------------------------


def test_csv_rows_are_numbered_without_blank_lines(run_convert, tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    path.write_text("instruction,input,output\na,,b\n\n\nc,d,e\nf,,g\n")
    done = run_convert(path, format="alpaca")
    assert _report(done) == (3, 3, 0)
    assert [r["source_row"] for r in done.rows] == [0, 1, 2]


def test_a_csv_message_names_the_line_its_record_starts_on(run_convert, tmp_path: Path) -> None:
    path = tmp_path / "q.csv"
    path.write_text('prompt,completion\nQ1,A1\n\n"two\nline prompt",A2,extra\nQ3,"A3\nmore"\n')
    done = run_convert(path, format="prompt_completion")
    assert _report(done) == (3, 2, 1)
    assert [(r["source_row"], r["location"].rsplit("/", 1)[-1], r["message"]) for r in done.rejects] == [
        (1, "q.csv[1]", "expected 2 columns as in the header, got 3 (CSV line 4)")
    ]
    assert [(r["source_row"], r["completion"]) for r in done.rows] == [(0, "A1"), (2, "A3\nmore")]


@pytest.mark.parametrize("tail", ["\n", ""])
def test_an_unclosed_csv_quote_is_a_one_line_error(tmp_path: Path, tail: str) -> None:
    path = tmp_path / "open.csv"
    path.write_text(f'prompt,completion\nQ1,A1\nQ2,"A2 starts\nQ3,A3\nQ4,A4{tail}')
    assert _cli_error(path, tmp_path, "--format", "prompt_completion") == (
        f"error: {path}: the quote opened in CSV line 3 is never closed (the rest of the file would be one cell)\n"
    )


# --- table errors: blamed on what failed, on one line -----------------------------------------------------------


def _damaged_parquet() -> bytes:
    """A Parquet file whose first page header is damaged: pyarrow's error spans lines."""
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist([{"text": f"document {i} " * 5} for i in range(300)]), buf, compression="none")
    data = bytearray(buf.getvalue())
    for i in range(8, 24):
        data[i] ^= 0x5A
    return bytes(data)


@pytest.mark.parametrize("name", ["bad.parquet", "bad.parquet.gz"])
def test_a_damaged_parquet_is_not_blamed_on_decompression(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    data = _damaged_parquet()
    path.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    out = _cli_error(path, tmp_path, "--format", "text")
    assert out.startswith(f"error: {path}: cannot read as parquet: Couldn't deserialize thrift: "), out
    assert out.endswith("; Deserializing page header failed.\n"), out


# --- file names that are not UTF-8 ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["parquet", "arrow", "hf"])
def test_table_names_that_are_not_utf8_are_read(run_convert, tmp_path: Path, kind: str) -> None:
    folder = Path(os.fsdecode(bytes(tmp_path) + b"/d\xe9"))
    folder.mkdir()
    if kind == "hf":
        _write_table("stream", folder / "data.arrow", TEXTS)
        (folder / "state.json").write_text(json.dumps({"_data_files": [{"filename": "data.arrow"}]}))
        path = folder
    else:
        path = _write_table(kind, folder / f"t\udcff.{kind}", TEXTS)
    done = run_convert(path, format="text")
    assert [(r["source_row"], r["text"]) for r in done.rows] == [(0, "first"), (1, "second"), (2, "third")]
    assert done.rows[0]["source_file"] == sources.printable(str(path))


# --- JSON: deep nesting in a streamed array --------------------------------------------------------------------


def test_a_deep_element_of_a_streamed_array_is_a_rejected_row_in_bounded_memory(
    run_convert, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ijson's memory grows with the square of the nesting depth (gigabytes at 100,000 levels): past the depth
    orjson reads, the array is read element by element instead, and the deep element is one rejected row."""
    import tracemalloc

    monkeypatch.setattr(sources, "SMALL_JSON_BYTES", 16)
    depth = 8000
    deep = '{"text": "deep", "meta": ' + "[" * depth + "]" * depth + "}"
    path = tmp_path / "deep.json"
    path.write_text("[" + ", ".join([json.dumps(TEXTS[0]), deep, json.dumps(TEXTS[1])]) + "]")
    tracemalloc.start()
    try:
        converted = run_convert(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert [r["text"] for r in converted.rows] == ["first", "second"]
    assert [(r["source_row"], r["reason"]) for r in converted.rejects] == [(1, "invalid_json")]
    assert peak < 64 << 20, f"{peak >> 20} MiB traced"
