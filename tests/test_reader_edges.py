"""Reader edge cases: every input record is kept or rejected with a reason, and a file that cannot be read is a
one-line error naming it (exit code 3). Compressed files cut short or corrupt, Arrow values Python cannot hold,
JSON-typed Arrow columns, JSON arrays with bad elements (read whole or streamed), and CSV/TSV layout."""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import zlib
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
from dsprep.errors import InputError

TEXT_ROWS = [{"text": f"document {i} " + "word " * (i % 13)} for i in range(300)]
CHAT = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]


def _jsonl(rows: list[dict[str, Any]]) -> bytes:
    return b"".join(orjson.dumps(r) + b"\n" for r in rows)


def _cli_error(path: Path, tmp_path: Path, *options: str) -> str:
    """Run `dsprep convert` on a file that cannot be read: exit code 3 and one `error:` line naming the file."""
    result = CliRunner().invoke(
        main, ["convert", str(path), "--out", str(tmp_path / "cli-out"), "-q", "--overwrite", *options]
    )
    assert result.exit_code == 3, result.output
    assert result.output.startswith(f"error: {path}: ") and result.output.count("\n") == 1, result.output
    assert "internal error" not in result.output
    return result.output


def _report(done: Any) -> tuple[int, int, int]:
    report = done.manifest["inputs"][0]
    return report["rows_read"], report["rows_kept"], report["rows_rejected"]


def _rejects(done: Any) -> list[tuple[int, str, str, str]]:
    return [(r["source_row"], r["location"].rsplit("/", 1)[-1], r["field"], r["reason"]) for r in done.rejects]


# --- compressed inputs ------------------------------------------------------------------------------------------


def _zstd_frames() -> list[bytes]:
    """Three frames of 100 rows each (with and without checksum and content size), then a skippable frame."""
    options: list[dict[str, Any]] = [{"write_checksum": True}, {"write_content_size": False}, {"level": 19}]
    frames = [
        zstandard.ZstdCompressor(**o).compress(_jsonl(TEXT_ROWS[i * 100 : (i + 1) * 100]))
        for i, o in enumerate(options)
    ]
    skippable = (0x184D2A50).to_bytes(4, "little") + (3).to_bytes(4, "little") + b"pad"
    return [*frames, skippable]


def test_zstd_cut_anywhere_inside_a_frame_is_an_input_error(tmp_path: Path) -> None:
    frames = _zstd_frames()
    data = b"".join(frames)
    ends = {sum(len(f) for f in frames[:n]) for n in range(len(frames) + 1)}
    path = tmp_path / "cut.jsonl.zst"
    for cut in range(len(data)):
        if cut in ends:
            continue
        path.write_bytes(data[:cut])
        with pytest.raises(InputError) as caught:
            [r for batch in sources.read_records(sources.discover([str(path)])[0]) for r in batch]
        assert str(caught.value) == (
            f"{path}: cannot decompress (zstd): Compressed file ended before the end-of-stream marker was reached"
        ), cut


@pytest.mark.parametrize("frames", [0, 1, 2, 3, 4])
def test_zstd_cut_between_frames_reads_the_whole_frames(run_convert, tmp_path: Path, frames: int) -> None:
    path = tmp_path / "frames.jsonl.zst"
    path.write_bytes(b"".join(_zstd_frames()[:frames]))
    done = run_convert(path, format="text")
    rows = min(frames, 3) * 100
    assert _report(done) == (rows, rows, 0)
    assert [r["text"] for r in done.rows] == [r["text"] for r in TEXT_ROWS[:rows]]


def test_truncated_zstd_through_the_cli(tmp_path: Path) -> None:
    path = tmp_path / "big.jsonl.zst"
    data = zstandard.ZstdCompressor().compress(_jsonl(TEXT_ROWS * 20))
    path.write_bytes(data[: len(data) * 6 // 10])
    out = _cli_error(path, tmp_path, "--format", "text")
    assert "cannot decompress (zstd): Compressed file ended before the end-of-stream marker" in out
    path.write_bytes(data[: len(data) // 2])
    _cli_error(path, tmp_path, "--format", "text")


def test_corrupt_zstd_is_an_input_error(tmp_path: Path) -> None:
    data = _jsonl(TEXT_ROWS)
    path = tmp_path / "bad.jsonl.zst"
    compressed = bytearray(zstandard.ZstdCompressor(write_checksum=True).compress(data))
    for i in range(len(compressed) // 2, len(compressed) // 2 + 40):
        compressed[i] ^= 0x5A
    path.write_bytes(bytes(compressed))
    assert "cannot decompress (zstd): zstd decompressor error: " in _cli_error(path, tmp_path, "--format", "text")


def test_gzip_with_a_corrupt_deflate_stream_is_an_input_error(tmp_path: Path) -> None:
    compressed = bytearray(gzip.compress(_jsonl(TEXT_ROWS), mtime=0))
    compressed[10:16] = b"\xff" * 6  # the first deflate block header: zlib.error, not OSError
    with pytest.raises(zlib.error):
        gzip.decompress(bytes(compressed))
    path = tmp_path / "bad.jsonl.gz"
    path.write_bytes(bytes(compressed))
    assert "cannot decompress (gzip): Error -3 while decompressing data" in _cli_error(
        path, tmp_path, "--format", "text"
    )


def test_zstd_output_comes_in_bounded_pieces() -> None:
    """Highly compressed input (here 10,000 to 1) is fed in small slices, so no piece holds the whole file."""
    data = b'{"text": "' + b"the same words again " * 50 + b'"}\n'
    compressed = zstandard.ZstdCompressor().compress(data * 40_000)
    assert len(compressed) * 1000 < len(data) * 40_000
    pieces = list(sources._zstd_frames(io.BytesIO(compressed)))
    assert b"".join(pieces) == data * 40_000
    assert max(map(len, pieces)) <= 2 * sources.ZSTD_OUTPUT_BYTES


# --- Arrow values -----------------------------------------------------------------------------------------------


def test_arrow_values_python_cannot_hold_reject_their_row(run_convert, tmp_path: Path) -> None:
    text = pa.array([b"ok", b"bad \xff", b"fine", b"late"], pa.binary()).view(pa.string())
    stamp = pa.array([0, 0, 0, 253402300800 * 10**6 * 5], pa.timestamp("us"))  # year 50,000 in the last row
    path = tmp_path / "values.parquet"
    pq.write_table(pa.table({"text": text, "stamp": stamp}), path)
    done = run_convert(path, format="text")
    assert _report(done) == (4, 2, 2)
    assert [(r["source_row"], r["text"]) for r in done.rows] == [(0, "ok"), (2, "fine")]
    assert _rejects(done) == [
        (1, "values.parquet[1]", "text", "invalid_utf8"),
        (3, "values.parquet[3]", "stamp", "wrong_type"),
    ]
    assert done.rejects[0]["message"] == "a string that is not valid UTF-8 (byte 5)"
    assert done.rejects[1]["message"].startswith("a timestamp[us] value with no Python equivalent (")


def test_invalid_utf8_inside_a_struct_rejects_its_row(run_convert, tmp_path: Path) -> None:
    inner = pa.array([b"a", b"\xc3\x28"], pa.binary()).view(pa.string())
    path = tmp_path / "nested.arrow"
    feather.write_feather(
        pa.table({"text": ["one", "two"], "meta": pa.StructArray.from_arrays([inner], ["note"])}), path
    )
    done = run_convert(path, format="text")
    assert _report(done) == (2, 1, 1)
    assert _rejects(done) == [(1, "nested.arrow[1]", "meta", "invalid_utf8")]


# --- JSON-typed Arrow columns (datasets 5.x `Json` feature, pyarrow's `pa.json_()`) -----------------------------

MIXED = [
    {"messages": [{"role": "user", "content": "fly up"},
                  {"role": "assistant", "tool_calls": [{"type": "function", "function": {"name": "takeoff", "arguments": '{"m": 10}'}}]},
                  {"role": "tool", "content": "ok"}, {"role": "assistant", "content": "up"}],
     "tools": [{"type": "function", "function": {"name": "takeoff", "parameters": {"type": "object"}}}]},
    {"messages": [{"role": "user", "content": "land"}, {"role": "assistant", "content": "landed"}],
     "tools": [{"type": "function", "function": {"name": "land", "parameters": {"type": "object", "properties": {}}}}]},
]  # fmt: skip


def _json_table(rows: list[dict[str, Any]]) -> pa.Table:
    """Messages as a list of JSON values, tools as structs whose `parameters` is a JSON value, as datasets writes them."""
    messages = pa.array([[json.dumps(m) for m in r["messages"]] for r in rows]).cast(pa.list_(pa.json_()))
    tools = [[{"type": t["type"], "function": {"name": t["function"]["name"], "parameters": json.dumps(t["function"]["parameters"])}}
              for t in r["tools"]] for r in rows]  # fmt: skip
    function = pa.struct([("name", pa.string()), ("parameters", pa.json_())])
    return pa.table(
        {
            "messages": messages,
            "tools": pa.array(tools).cast(pa.list_(pa.struct([("type", pa.string()), ("function", function)]))),
        }
    )


def _write_json_typed(kind: str, path: Path, table: pa.Table) -> Path:
    if kind == "parquet":
        pq.write_table(table, path / "data.parquet")
        return path / "data.parquet"
    if kind == "arrow":
        feather.write_feather(table, path / "data.arrow")
        return path / "data.arrow"
    folder = path / "saved"  # a folder as datasets.save_to_disk writes it: state.json and Arrow stream files
    folder.mkdir()
    with pa.ipc.new_stream(folder / "data-00000-of-00001.arrow", table.schema) as writer:
        writer.write_table(table)
    (folder / "state.json").write_text(json.dumps({"_data_files": [{"filename": "data-00000-of-00001.arrow"}]}))
    return folder


def _chat(done: Any) -> list[tuple[Any, ...]]:
    return [(json.dumps(r["messages"], sort_keys=True), r["tools"]) for r in done.rows]


@pytest.mark.parametrize("kind", ["parquet", "arrow", "hf"])
def test_json_typed_columns_are_decoded(run_convert, tmp_path: Path, kind: str) -> None:
    (tmp_path / "rows.jsonl").write_bytes(_jsonl(MIXED))
    reference = run_convert(tmp_path / "rows.jsonl", format="openai")
    done = run_convert(_write_json_typed(kind, tmp_path, _json_table(MIXED)))
    assert done.manifest["inputs"][0]["format"] == "openai"
    assert _report(done) == (2, 2, 0)
    assert _chat(done) == _chat(reference)
    assert done.rows[0]["messages"][1]["tool_calls"][0]["name"] == "takeoff"


def test_invalid_json_in_a_json_typed_value_rejects_its_row(run_convert, tmp_path: Path) -> None:
    table = _json_table(MIXED)
    bad = pa.array([[json.dumps(CHAT[0]), json.dumps(CHAT[1])], [json.dumps(CHAT[0]), '{"role": "assistant", ']])
    bad = bad.cast(pa.list_(pa.json_()))
    path = tmp_path / "bad.parquet"
    pq.write_table(table.set_column(0, "messages", bad), path)
    done = run_convert(path, format="openai")
    assert _report(done) == (2, 1, 1)
    assert _rejects(done) == [(1, "bad.parquet[1]", "messages", "invalid_json")]
    assert done.rejects[0]["message"].startswith("a JSON-typed value that is not valid JSON (")


def test_datasets_json_feature_round_trip(run_convert, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    datasets = pytest.importorskip("datasets")
    if not hasattr(datasets, "Json"):
        pytest.skip("datasets has no Json feature (added in 5.x)")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    features = datasets.Features({"messages": datasets.List(datasets.Json())})
    ds = datasets.Dataset.from_list([{"messages": r["messages"]} for r in MIXED], features=features)
    ds.to_parquet(str(tmp_path / "mixed.parquet"))
    ds.save_to_disk(str(tmp_path / "mixed_hf"))
    for path in (tmp_path / "mixed.parquet", tmp_path / "mixed_hf"):
        done = run_convert(path)
        assert done.manifest["inputs"][0]["format"] == "openai"
        assert _report(done) == (2, 2, 0)
        assert [[m.get("content") for m in r["messages"]] for r in done.rows] == [
            ["fly up", None, "ok", "up"],
            ["land", "landed"],
        ]


def test_duplicate_arrow_columns_are_an_input_error(tmp_path: Path) -> None:
    path = tmp_path / "dup.parquet"
    pq.write_table(
        pa.table([pa.array(["Q1"]), pa.array(["A1"]), pa.array(["B1"])], names=["prompt", "completion", "completion"]),
        path,
    )
    assert _cli_error(path, tmp_path) == f"error: {path}: the column name 'completion' appears more than once\n"


# --- JSON arrays: a bad element is a bad row, read whole or streamed ----------------------------------------------


@pytest.mark.parametrize(
    ("element", "reason", "message"),
    [
        (rb'{"text": "\ud800doc"}', "invalid_json", "invalid JSON: no low surrogate in string"),
        (rb'{"text": "\udc00 low"}', "invalid_json", "invalid JSON: "),
        (rb'{"text": "\\ud83d\ude00 escaped backslash, then a lone low"}', "invalid_json", "invalid JSON: "),
        (b'{"text": "caf\xe9"}', "invalid_utf8", "invalid UTF-8 byte at column 14"),
        (b'{"text": "big", "n": 1e400}', "invalid_json", "invalid JSON: number is infinity"),
        (b'{"text": "typo"}x', "invalid_json", "invalid JSON: "),
        (b'{"text": 0ull}', "invalid_json", "invalid JSON: "),
    ],
)  # fmt: skip
def test_a_bad_json_element_is_a_rejected_row(
    run_convert, tmp_path: Path, json_reading: str, element: bytes, reason: str, message: str
) -> None:
    good = [b'{"text": "first"}', rb'{"text": "pair \ud83d\ude00 ok"}', b'{"text": "last"}']
    path = tmp_path / "data.json"
    path.write_bytes(b"[" + b",\n".join([*good[:2], element, good[2]]) + b"]")
    done = run_convert(path, format="text")
    assert _report(done) == (4, 3, 1)
    assert [r["text"] for r in done.rows] == ["first", "pair \U0001f600 ok", "last"]
    assert _rejects(done) == [(2, "data.json[2]", "", reason)]
    assert done.rejects[0]["message"].startswith(message)
    assert done.rejects[0]["raw"] == element.decode("utf-8", "backslashreplace")


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b'[{"text": "a"}, {"text": "b"', "the file ends inside element 1 of the array"),
        (b'[{"text": "a"}, {"text": "b"}] trailing', "text after the end of the array"),
        (b'[{"text": "a"}, {"text": ["b"}]', "element 1: '}' where ']' was expected"),
        (b'[{"text": "a"}}', "'}' where ',' or ']' was expected"),
        (b'[{"text": "a"},, {"text": "b"}]', "element 1 of the array is empty"),
        (b'[{"text": "a"}, {"text": "b"},]', "element 2 of the array is empty"),
    ],
)
def test_a_broken_json_array_is_a_one_line_error(tmp_path: Path, json_reading: str, data: bytes, problem: str) -> None:
    path = tmp_path / "data.json"
    path.write_bytes(data)
    assert _cli_error(path, tmp_path, "--format", "text") == f"error: {path}: not valid JSON ({problem})\n"


def test_a_valid_streamed_array_reads_like_the_whole_one(
    run_convert, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = [
        {"text": 'emoji \U0001f600 and \\ backslash " quote', "n": [1, 2.5, None, {"k": "\u00e9"}]},
        {"text": "two"},
        3,
    ]
    path = tmp_path / "data.json"
    path.write_text(json.dumps(rows))  # ensure_ascii: the emoji is a surrogate pair escape
    whole = run_convert(path, format="text")
    monkeypatch.setattr(sources, "SMALL_JSON_BYTES", 16)
    monkeypatch.setattr(sources, "JSON_CHUNK_BYTES", 5)
    monkeypatch.setattr(sources, "_array_elements", None)  # ijson reads it all: no element is parsed alone
    streamed = run_convert(path, format="text")
    assert _report(streamed) == _report(whole) == (3, 2, 1)
    assert streamed.rows == whole.rows and streamed.rejects == whole.rejects
    assert whole.rows[0]["text"] == rows[0]["text"]


# --- CSV and TSV ------------------------------------------------------------------------------------------------


def test_csv_rows_of_empty_cells_are_rows(run_convert, tmp_path: Path) -> None:
    path = tmp_path / "ws.csv"
    path.write_bytes(b"prompt,completion\nQ1,A1\n  ,  \n,\n\nQ2,A2\n")
    done = run_convert(path, format="prompt_completion")
    assert _report(done) == (4, 2, 2)
    assert [(r["source_row"], r["completion"]) for r in done.rows] == [(0, "A1"), (3, "A2")]  # blank lines: no rows
    assert _rejects(done) == [
        (1, "ws.csv[1]", "completion", "empty_content"),
        (2, "ws.csv[2]", "prompt", "missing_field"),
    ]
    (tmp_path / "same.jsonl").write_bytes(
        _jsonl([{"prompt": "  ", "completion": "  "}, {"prompt": None, "completion": None}])
    )
    same = run_convert(tmp_path / "same.jsonl", format="prompt_completion")
    assert [(r["field"], r["reason"], r["message"]) for r in same.rejects] == [
        (r["field"], r["reason"], r["message"]) for r in done.rejects
    ]


@pytest.mark.parametrize("suffix", ["csv", "tsv"])
def test_blank_lines_before_the_header_are_skipped(run_convert, tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"lead.{suffix}"
    path.write_text("\n\r\nprompt,completion\nQ1,A1\nQ2,A2\n".replace(",", "\t" if suffix == "tsv" else ","))
    done = run_convert(path, format="prompt_completion")
    assert _report(done) == (2, 2, 0)
    assert [(r["source_row"], [r["prompt"], r["completion"]]) for r in done.rows] == [
        (0, ["Q1", "A1"]),
        (1, ["Q2", "A2"]),
    ]


def test_tsv_follows_csv_quoting_as_datasets_reads_it(run_convert, tmp_path: Path) -> None:
    """A TSV written by pandas or Python's csv module (quoted where a cell holds a quote, tab or line break) reads
    back exactly."""
    rows = [["Hello", "ok"], ['"Hi" she said', "two\nlines"], ["tab\there", "x"]]
    path = tmp_path / "q.tsv"
    with open(path, "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh, delimiter="\t").writerows([["prompt", "completion"], *rows])
    done = run_convert(path, format="prompt_completion")
    assert _report(done) == (3, 3, 0)
    assert [[r["prompt"], r["completion"]] for r in done.rows] == rows


def test_csv_keeps_its_quoting(run_convert, tmp_path: Path) -> None:
    path = tmp_path / "q.csv"
    path.write_bytes(b'prompt,completion\n"Hello, she said","two\nlines"\n"say ""hi""",ok\n')
    done = run_convert(path, format="prompt_completion")
    assert [[r["prompt"], r["completion"]] for r in done.rows] == [
        ["Hello, she said", "two\nlines"],
        ['say "hi"', "ok"],
    ]


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("dup.csv", b"prompt,completion,completion\nQ1,A1,B1\n"),
        ("dup.tsv", b"prompt\tcompletion\tcompletion\nQ1\tA1\tB1\n"),
    ],
)
def test_duplicate_csv_columns_are_an_input_error(tmp_path: Path, name: str, data: bytes) -> None:
    path = tmp_path / name
    path.write_bytes(data)
    assert _cli_error(path, tmp_path) == f"error: {path}: the column name 'completion' appears more than once\n"


def test_a_file_name_that_is_not_utf8_is_reported_with_escapes(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from dsprep.cli import main

    folder = tmp_path / "data"
    folder.mkdir()
    row = b'{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}\n'
    (folder / "good.jsonl").write_bytes(row)
    (Path(os.fsdecode(bytes(folder) + b"/b\xffad.jsonl"))).write_bytes(row)
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["convert", str(folder), "-o", str(out), "--no-cache"])
    assert result.exit_code == 0, result.output
    assert f"{folder}/b\\xffad.jsonl: read 1 = kept 1 + rejected 0" in result.output
    manifest = orjson.loads((out / "manifest.json").read_bytes())
    assert [i["path"] for i in manifest["inputs"]] == [f"{folder}/b\\xffad.jsonl", f"{folder}/good.jsonl"]
    rows = pq.read_table(out / "part-00000.parquet").to_pylist()
    assert [r["source_file"] for r in rows] == [f"{folder}/b\\xffad.jsonl", f"{folder}/good.jsonl"]
    assert len({r["id"] for r in rows}) == 2
    inspected = CliRunner().invoke(main, ["inspect", str(folder)])
    assert inspected.exit_code == 0, inspected.output
