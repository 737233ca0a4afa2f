"""Bad rows land in rejects.jsonl with the right line and reason; files that cannot be read are one-line errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from dsprep.errors import InputError, RejectedRowsError, RowFailure
from paths import FIXTURES

BAD = FIXTURES / "bad"

# line (1-based) -> (reason, field) for every bad row in fixtures/bad/invalid_rows.jsonl
EXPECTED_REJECTS = {
    2: ("invalid_json", ""),
    3: ("wrong_type", "messages"),
    4: ("invalid_utf8", ""),
    5: ("unknown_role", "messages[0].role"),
    6: ("empty_content", "messages[1].content"),
    7: ("invalid_tool_call", "messages[1].tool_calls[0].arguments"),
    8: ("wrong_type", ""),
    10: ("wrong_type", "messages[0].content"),
    11: ("missing_field", "messages"),
}


def test_each_bad_row_is_rejected_with_its_line_and_reason(run_convert) -> None:
    done = run_convert(BAD / "invalid_rows.jsonl", format="openai")
    got = {int(r["location"].rsplit(":", 1)[1]): (r["reason"], r["field"]) for r in done.rejects}
    assert got == EXPECTED_REJECTS
    assert [r["source_row"] + 1 for r in done.rejects] == sorted(EXPECTED_REJECTS)
    assert [m["content"] for r in done.rows for m in r["messages"]] == ["first", "row", "last", "row"]
    assert [r["source_row"] for r in done.rows] == [0, 11]


def test_accounting_holds_and_blank_lines_are_not_rows(run_convert) -> None:
    done = run_convert(BAD / "invalid_rows.jsonl", format="openai")
    report = done.manifest["inputs"][0]
    assert (report["rows_read"], report["rows_kept"], report["rows_rejected"]) == (11, 2, 9)
    assert report["rows_read"] == report["rows_kept"] + report["rows_rejected"]
    assert done.manifest["totals"] == {"rows_read": 11, "rows_kept": 2, "rows_rejected": 9}
    assert report["rejected_by_reason"] == {
        "empty_content": 1, "invalid_json": 1, "invalid_tool_call": 1, "invalid_utf8": 1,
        "missing_field": 1, "unknown_role": 1, "wrong_type": 3,
    }  # fmt: skip


def test_rejects_keep_the_raw_text(run_convert) -> None:
    done = run_convert(BAD / "invalid_rows.jsonl", format="openai")
    by_line = {r["source_row"] + 1: r for r in done.rejects}
    assert by_line[2]["raw"] == '{"messages": [{"role": "user", "content": "unterminated"}'
    assert by_line[4]["raw"].startswith('{"messages": [{"role": "user", "content": "caf\\xe9"}')
    assert "wizard" in by_line[5]["message"] and "map it under [roles]" in by_line[5]["message"]


def test_auto_detection_survives_bad_rows(run_convert) -> None:
    done = run_convert(BAD / "invalid_rows.jsonl")
    assert done.manifest["inputs"][0]["format"] == "openai"
    assert len(done.rejects) == 9


def test_crlf_bom_and_missing_final_newline(run_convert) -> None:
    raw = (BAD / "crlf_bom_no_final_newline.jsonl").read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf") and b"\r\n" in raw and not raw.endswith(b"\n")
    done = run_convert(BAD / "crlf_bom_no_final_newline.jsonl")
    assert [[m["content"] for m in r["messages"]] for r in done.rows] == [["a", "b"], ["c", "d"], ["e", "f"]]
    assert done.rejects == []


def test_mixed_schema_rows_outside_the_detected_format_are_rejected(run_convert) -> None:
    done = run_convert(BAD / "mixed_schema.jsonl")
    assert done.manifest["inputs"][0]["format"] == "openai"
    assert [r["source_row"] for r in done.rows] == [0, 1, 3, 5]
    assert [(r["source_row"], r["reason"]) for r in done.rejects] == [(2, "missing_field"), (4, "missing_field")]
    assert "the row has conversations" in done.rejects[0]["message"]


def test_empty_file_converts_to_zero_rows(run_convert) -> None:
    done = run_convert(BAD / "empty.jsonl")
    assert done.manifest["totals"] == {"rows_read": 0, "rows_kept": 0, "rows_rejected": 0}
    assert done.rows == [] and done.rejects == []
    assert [s["rows"] for s in done.manifest["shards"]] == [0]


def test_on_error_fail_stops_at_the_first_bad_row(run_convert) -> None:
    with pytest.raises(RowFailure, match=r"invalid_rows\.jsonl:2: invalid JSON"):
        run_convert(BAD / "invalid_rows.jsonl", format="openai", on_error="fail")


def test_rejects_follow_the_file_whichever_stage_rejected_them(run_convert, tmp_path: Path) -> None:
    """A row the tokenizer rejects before a row normalization rejects: rejects.jsonl lists them in file order, and
    --on-error fail stops at the first of them."""
    path = tmp_path / "mixed.jsonl"
    path.write_text(
        '{"messages": [{"role": "user", "content": "a question without an answer"}]}\n'
        '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n'
        '{"messages": 5}\n'
    )
    options: dict[str, Any] = {"format": "openai", "tokenizer": "mistral:tekken", "template": "chatml", "cache": False}
    done = run_convert(path, **options)
    assert [(r["source_row"], r["reason"]) for r in done.rejects] == [(0, "no_trained_tokens"), (2, "wrong_type")]
    with pytest.raises(RowFailure, match=r"mixed\.jsonl:1: labels: no token"):
        run_convert(path, on_error="fail", **options)


def test_max_rejected_fails_the_run_and_publishes_no_manifest(run_convert, tmp_path: Path) -> None:
    with pytest.raises(RejectedRowsError, match=r"9 of 11 rows rejected"):
        run_convert(BAD / "invalid_rows.jsonl", format="openai", max_rejected=0.5)
    out = tmp_path / "out0"
    assert not (out / "manifest.json").exists()
    assert (out / "rejects.jsonl").read_bytes().count(b"\n") == 9
    assert not list(out.glob("*.parquet"))


def test_max_rejected_under_the_threshold_passes(run_convert) -> None:
    done = run_convert(BAD / "invalid_rows.jsonl", format="openai", max_rejected=0.9)
    assert len(done.rows) == 2


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("data.json", b"{not json", r"data\.json: not valid JSON"),
        ("data.json", b"42", r"data\.json: expected a JSON array or object"),
        ("data.xlsx", b"PK", r"data\.xlsx: unknown file type"),
        ("data.jsonl.gz", b"not gzip at all", r"data\.jsonl\.gz: cannot decompress \(gzip\)"),
        ("data.jsonl.zst", b"not zstd at all", r"data\.jsonl\.zst: cannot decompress \(zstd\)"),
        ("data.parquet", b"not parquet", r"data\.parquet: cannot read as parquet"),
    ],
)
def test_unreadable_files_are_one_line_input_errors(run_convert, tmp_path: Path, name, content, expected) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(InputError, match=expected):
        run_convert(path, format="openai")


def test_missing_input_is_an_input_error(run_convert, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such file or folder"):
        run_convert(tmp_path / "nope.jsonl")
    with pytest.raises(InputError, match="no file matches"):
        run_convert(str(tmp_path / "*.jsonl"))


def test_csv_header_with_invalid_utf8_is_an_input_error(run_convert, tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_bytes(b"te\xffxt\nhello\n")
    with pytest.raises(InputError, match=r"bad\.csv: the CSV header is not valid UTF-8"):
        run_convert(path, format="text")


def test_row_errors_stay_on_one_line(run_convert, tmp_path: Path) -> None:
    path = tmp_path / "keys.jsonl"
    path.write_text('{"odd\\nkey": 1}\n')
    with pytest.raises(RowFailure) as caught:
        run_convert(path, format="openai", on_error="fail")
    assert "\n" not in str(caught.value)
    assert "odd\\nkey" in str(caught.value)
