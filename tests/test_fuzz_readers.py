"""Fuzzing every reader through `dsprep convert`: random and mutated inputs never crash it and never lose a row.

Inputs are records of every shipped format with fields replaced by values of the wrong type, removed or added,
deeply nested values, huge strings, NUL bytes, lone surrogates (escaped, or encoded as invalid UTF-8), numbers
where strings belong, duplicate keys, truncated JSON and mixed formats in one file, written as JSONL, JSON, CSV,
TSV and text files, some gzip-compressed (some of those truncated). Invariants, for every case:

- no traceback and no internal error: the exit code is one the README documents (0, 3, 4, 5);
- a successful run accounts for every row: per input ``rows_read == rows_kept + rows_rejected``; the shards hold
  ``rows_kept`` rows, ``rejects.jsonl`` holds ``rows_rejected`` lines, each with a known reason; kept and rejected
  rows have distinct positions; for JSONL and text files ``rows_read`` is the number of non-blank lines, for JSON
  arrays the number of elements;
- a failed run prints one ``error:`` line (format detection adds a spec to save) and publishes no manifest.

`benchmarks/fuzz_readers.py` runs the same cases (`fuzz_case`, `check_case`) for much longer.
"""

from __future__ import annotations

import gzip
import io
import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dsprep.cli import main
from dsprep.normalize import REASONS

EXAMPLES = 150  # per test; the file stays well under a minute (about 10 s)
DOCUMENTED_EXIT_CODES = {0, 3, 4, 5}
DETECTION_ERRORS = ("no known format matches", "ambiguous format", "the rows look like format")
ALL_REASONS = set(REASONS) | {"template_error", "too_long", "not_packable", "no_trained_tokens"}
FORMATS = ["auto", "openai", "sharegpt", "alpaca", "text", "prompt_completion", "preference", "kto", "hh_transcript"]

# --- values ---------------------------------------------------------------------------------------------------

CHARS = st.characters(codec=None, exclude_categories=())  # every code point, lone surrogates and NUL included
TEXT = st.text(CHARS, max_size=12)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    TEXT,
    st.sampled_from(["", " ", "\x00", "user", "assistant", "gpt", "human", "true", "[", "{", "[1,", '{"a":'] * 1),
)
JSON = st.recursive(
    SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4), max_leaves=12
)


# Nesting depths injected into records: around orjson's write limit (255) and its read limit (1024), and beyond.
DEEP_DEPTHS = [50, 200, 254, 255, 256, 300, 1023, 1100, 5000]
CSV_FIELD_LIMIT = 131072  # Python's own default cell limit; dsprep reads longer cells


def _deep_bytes(draw: st.DrawFn) -> bytes:
    depth = DEEP_DEPTHS[draw(st.integers(0, 10**6)) % len(DEEP_DEPTHS)]
    opener, closer = (b"[", b"]") if draw(st.booleans()) else (b'{"k": ', b"}")
    return opener * depth + b"1" + closer * depth


HUGE = st.builds(
    lambda c, n: c * n, st.sampled_from(["x", "é", "\x00", "\ud800", " "]), st.sampled_from([10**4, 10**5])
)
ANY_VALUE = st.one_of(JSON, JSON, JSON, HUGE)

# --- records --------------------------------------------------------------------------------------------------

ROLES = ["user", "assistant", "system", "tool", "human", "gpt", "function_call", "observation", "wizard", None, 3]


@st.composite
def messages(draw: st.DrawFn, role_key: str = "role", content_key: str = "content") -> list[dict[str, Any]]:
    out = []
    for i in range(draw(st.integers(0, 4))):
        msg: dict[str, Any] = {role_key: draw(st.sampled_from(ROLES[:2]) if i < 2 else st.sampled_from(ROLES))}
        msg[content_key] = draw(st.one_of(TEXT, st.just("hello")))
        if draw(st.integers(0, 5)) == 0:
            msg["tool_calls"] = [{"function": {"name": draw(TEXT), "arguments": draw(st.one_of(TEXT, JSON))}}]
        out.append(msg)
    return out


@st.composite
def record(draw: st.DrawFn) -> Any:
    kind = draw(st.sampled_from(["openai", "sharegpt", "alpaca", "text", "pc", "pref", "kto", "random", "scalar"]))
    s = TEXT | st.just("some words")
    rec: Any
    if kind == "openai":
        rec = {"messages": draw(messages())}
        if draw(st.booleans()):
            rec["tools"] = draw(JSON)
        if draw(st.booleans()):
            rec["system"] = draw(s)
    elif kind == "sharegpt":
        rec = {"conversations": draw(messages("from", "value"))}
    elif kind == "alpaca":
        rec = {"instruction": draw(s), "input": draw(s), "output": draw(s)}
    elif kind == "text":
        rec = {"text": draw(s)}
    elif kind == "pc":
        rec = {"prompt": draw(s | messages()), "completion": draw(s | messages())}
    elif kind == "pref":
        rec = {"prompt": draw(s), "chosen": draw(s | messages()), "rejected": draw(s | messages())}
    elif kind == "kto":
        rec = {"prompt": draw(s), "completion": draw(s), "label": draw(JSON)}
    elif kind == "random":
        return draw(st.dictionaries(TEXT, ANY_VALUE, max_size=4))
    else:
        return draw(ANY_VALUE)
    for _ in range(draw(st.integers(0, 2))):
        rec = _mutate(draw, rec)
    return rec


def _mutate(draw: st.DrawFn, value: Any) -> Any:
    """Replace, remove or add one value somewhere in the record."""
    if isinstance(value, dict) and value and draw(st.integers(0, 2)):
        key = draw(st.sampled_from(sorted(value, key=str)))
        action = draw(st.sampled_from(["descend", "replace", "delete", "add"]))
        out = dict(value)
        if action == "descend":
            out[key] = _mutate(draw, value[key])
        elif action == "replace":
            out[key] = draw(ANY_VALUE)
        elif action == "delete":
            del out[key]
        else:
            out[draw(TEXT)] = draw(ANY_VALUE)
        return out
    if isinstance(value, list) and value and draw(st.integers(0, 2)):
        i = draw(st.integers(0, len(value) - 1))
        out_list = list(value)
        out_list[i] = _mutate(draw, value[i])
        return out_list
    return draw(ANY_VALUE)


@st.composite
def line(draw: st.DrawFn) -> bytes:
    """One serialized record, sometimes damaged."""
    rec = draw(record())
    text = json.dumps(rec, ensure_ascii=draw(st.booleans()), allow_nan=True)
    raw = text.encode("utf-8", "surrogatepass")  # lone surrogates become invalid UTF-8 when not escaped
    damage = draw(st.sampled_from(["none"] * 6 + ["truncate", "nul", "badbyte", "dupkey", "number", "garbage", "deep"]))
    if damage == "truncate" and len(raw) > 1:
        raw = raw[: draw(st.integers(1, len(raw) - 1))]
    elif damage in ("nul", "badbyte"):
        at = draw(st.integers(0, len(raw)))
        raw = raw[:at] + (
            b"\x00" if damage == "nul" else draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80"]))
        )
        raw += raw[at:]
    elif damage == "dupkey" and raw.startswith(b"{") and len(raw) > 2:
        key = json.dumps(draw(st.sampled_from(["messages", "text", "prompt", "conversations", "x"]))).encode()
        raw = b"{" + key + b": 1, " + key + b": " + json.dumps(draw(JSON)).encode() + b", " + raw[1:]
    elif damage == "number":
        raw = raw.replace(b'"hello"', b"12345").replace(b'"some words"', b"-1.5e308")
    elif damage == "deep" and raw.startswith(b"{") and len(raw) > 2:
        raw = b'{"deep": ' + _deep_bytes(draw) + b", " + raw[1:]
    elif damage == "garbage":
        raw = draw(st.binary(max_size=40))
    return raw.replace(b"\n", b"\\n").replace(b"\r", b"\\r")


# --- files ----------------------------------------------------------------------------------------------------


@dataclass
class Case:
    """One fuzz input: file name and bytes, the format to ask for, extra options; and what we know of its rows."""

    name: str
    data: bytes
    fmt: str
    options: list[str] = field(default_factory=list)
    expected_rows: int | None = None  # when the container says exactly how many rows there are


@st.composite
def fuzz_case(draw: st.DrawFn) -> Case:
    container = draw(st.sampled_from(["jsonl", "jsonl", "jsonl", "json", "csv", "tsv", "txt"]))
    lines = draw(st.lists(line(), max_size=8))
    expected: int | None = None
    if container == "jsonl" or container == "txt":
        if container == "txt":
            lines = [draw(st.binary(max_size=30)).replace(b"\n", b"") if draw(st.booleans()) else x for x in lines]
        seps = [draw(st.sampled_from([b"\n", b"\r\n", b"\n\n", b"\n  \n"])) for _ in lines]
        data = b"".join(x + sep for x, sep in zip(lines, seps, strict=True))
        if data and draw(st.booleans()):
            data = data.rstrip(b"\r\n")
        if draw(st.integers(0, 5)) == 0:
            data = b"\xef\xbb\xbf" + data
        body = data[3:] if data.startswith(b"\xef\xbb\xbf") else data
        expected = sum(1 for x in body.split(b"\n") if x.rstrip(b"\r\n").strip())
    elif container == "json":
        data = b"[" + b",".join(lines) + b"]"
        if draw(st.booleans()):
            data = b'{"data": ' + data + b"}"
        if draw(st.integers(0, 3)) == 0 and len(data) > 1:
            data = data[: draw(st.integers(1, len(data) - 1))]
        try:
            parsed = orjson.loads(data)
            expected = len(parsed["data"] if isinstance(parsed, dict) else parsed)
        except (orjson.JSONDecodeError, TypeError, KeyError):
            expected = None
    else:
        data = _delimited(draw, container, lines)
    name = f"input.{container}"
    if draw(st.integers(0, 6)) == 0:
        data = gzip.compress(data, mtime=0)
        name += ".gz"
        if draw(st.booleans()) and len(data) > 12:
            data = data[: draw(st.integers(10, len(data) - 1))]
            expected = None
    options = draw(st.sampled_from([[], [], [], ["--on-error", "fail"], ["--max-rejected", "50%"]]))
    return Case(name, data, draw(st.sampled_from(FORMATS)), options, expected)


def _delimited(draw: st.DrawFn, container: str, lines: list[bytes]) -> bytes:
    delimiter = "\t" if container == "tsv" else ","
    rows: list[dict[str, Any]] = []
    for raw in lines:
        try:
            value = orjson.loads(raw)
        except orjson.JSONDecodeError:
            value = {"text": raw.decode("utf-8", "surrogateescape")}
        rows.append(value if isinstance(value, dict) else {"text": value})
    header = sorted({k for r in rows for k in r})[:6] or ["text"]
    out = io.StringIO()
    import csv

    writer = csv.writer(out, delimiter=delimiter)
    writer.writerow(header)
    for r in rows:
        cells = [v if isinstance(v, str) else ("" if v is None else json.dumps(v)) for v in (r.get(k) for k in header)]
        if draw(st.integers(0, 6)) == 0:
            cells = cells[: draw(st.integers(0, len(cells)))] if draw(st.booleans()) else [*cells, "extra"]
        writer.writerow(cells)
    return out.getvalue().encode("utf-8", "surrogateescape")


# --- checking -------------------------------------------------------------------------------------------------


def check_case(case: Case, workdir: Path) -> list[str]:
    """Run `dsprep convert` on the case; return the invariants it broke (empty when all hold)."""
    src = workdir / case.name
    src.write_bytes(case.data)
    out = workdir / "out"
    args = ["convert", str(src), "--out", str(out), "--format", case.fmt, "-q", *case.options]
    result = CliRunner().invoke(main, args)
    problems: list[str] = []
    text = result.output
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        problems.append(f"crash: {type(result.exception).__name__}: {result.exception}")
    if "Traceback" in text or "internal error" in text:
        problems.append(f"crash: {text.strip()[-500:]}")
    if result.exit_code not in DOCUMENTED_EXIT_CODES:
        problems.append(f"exit code {result.exit_code} not documented: {text.strip()[-300:]}")
    if src.read_bytes() != case.data:
        problems.append("the input was modified")
    if result.exit_code != 0:
        detection = any(s in text for s in DETECTION_ERRORS)  # these add a spec to save
        if not text.startswith("error: ") or (text.count("\n") != 1 and not detection):
            problems.append(f"error is not one line: {text!r}")
        if (out / "manifest.json").exists():
            problems.append("a failed run published a manifest")
        return problems
    problems.extend(_accounting(out, case))
    return problems


def _accounting(out: Path, case: Case) -> list[str]:
    problems = []
    manifest = orjson.loads((out / "manifest.json").read_bytes())
    (report,) = manifest["inputs"]
    read, kept, rejected = report["rows_read"], report["rows_kept"], report["rows_rejected"]
    if read != kept + rejected:
        problems.append(f"accounting: read {read} != kept {kept} + rejected {rejected}")
    if sum(report["rejected_by_reason"].values()) != rejected:
        problems.append("accounting: reasons do not add up to rows_rejected")
    if manifest["totals"] != {"rows_read": read, "rows_kept": kept, "rows_rejected": rejected}:
        problems.append("accounting: totals differ from the input's counts")
    rows = [r for s in manifest["shards"] for r in pq.read_table(out / s["file"], columns=["source_row"]).to_pylist()]
    rejects = [orjson.loads(x) for x in (out / "rejects.jsonl").read_bytes().splitlines()]
    if len(rows) != kept or sum(s["rows"] for s in manifest["shards"]) != kept:
        problems.append(f"accounting: shards hold {len(rows)} rows, manifest says kept {kept}")
    if len(rejects) != rejected:
        problems.append(f"accounting: rejects.jsonl has {len(rejects)} lines, manifest says rejected {rejected}")
    bad = {r.get("reason") for r in rejects} - ALL_REASONS
    if bad:
        problems.append(f"rejects with unknown reasons: {bad}")
    positions = [r["source_row"] for r in rows] + [r["source_row"] for r in rejects]
    if len(set(positions)) != len(positions):
        problems.append("a row is both kept and rejected, or counted twice")
    if case.expected_rows is not None and read != case.expected_rows:
        problems.append(f"accounting: read {read} rows, the file holds {case.expected_rows}")
    return problems


def run_case(case: Case) -> list[str]:
    """The broken invariants of one case."""
    workdir = Path(tempfile.mkdtemp(prefix="dsprep-fuzz-"))
    try:
        problems = check_case(case, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return problems


FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))


@FUZZ
@given(fuzz_case())
def test_no_crash_and_every_row_accounted(case: Case) -> None:
    assert run_case(case) == []


@FUZZ
@given(st.lists(line(), min_size=1, max_size=6), st.sampled_from(FORMATS))
def test_jsonl_lines_are_each_one_row(lines: list[bytes], fmt: str) -> None:
    """Mixed formats and damaged lines in one JSONL file: one row per non-blank line, each kept or rejected."""
    data = b"\n".join(lines) + b"\n"
    expected = sum(1 for x in data.split(b"\n") if x.strip())
    assert run_case(Case("mixed.jsonl", data, fmt, [], expected)) == []


@FUZZ
@given(st.binary(max_size=200), st.sampled_from(["jsonl", "json", "csv", "tsv", "txt", "parquet", "arrow", "jsonl.gz"]))
def test_random_bytes_in_every_container(data: bytes, container: str) -> None:
    assert run_case(Case(f"noise.{container}", data, "auto")) == []


def _nested(depth: int) -> bytes:
    return b"[" * depth + b"1" + b"]" * depth


def _with(obj: dict[str, Any], depth: int) -> bytes:
    """JSON text of `obj` plus a key "x" holding a list nested `depth` deep (too deep for json.dumps)."""
    return orjson.dumps(obj)[:-1] + b', "x": ' + _nested(depth) + b"}"


CHAT = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]


@pytest.mark.parametrize(
    ("name", "data", "fmt"),
    [
        pytest.param("deep.jsonl", _with({"messages": CHAT}, 200), "openai", id="extra-200"),
        pytest.param(
            "deep.jsonl", orjson.dumps({"messages": CHAT}) + b"\n" + _with({"messages": CHAT}, 300),
            "openai", id="extra-300",
        ),
        pytest.param(
            "deep.jsonl", b'{"messages": [' + _with(CHAT[0], 300) + b", " + orjson.dumps(CHAT[1]) + b"]}", "openai",
            id="message-extra-300",
        ),
        pytest.param(
            "deep.json", b'[{"text": "a"}, ' + _with({"text": "b"}, 300) + b"]", "text",
            id="json-array-300",
        ),
        pytest.param("deep.jsonl", _with({"text": "a"}, 1100), "text", id="jsonl-1100"),
    ],
)  # fmt: skip
def test_deeply_nested_values(name: str, data: bytes, fmt: str) -> None:
    """Nesting past orjson's limits: the row is kept or rejected, never a crash."""
    lines = data.count(b"\n") + 1 if name.endswith(".jsonl") else None
    assert run_case(Case(name, data, fmt, [], lines if lines else 2)) == []


@pytest.mark.parametrize("container", ["csv", "tsv"])
def test_csv_cell_over_field_limit(container: str) -> None:
    data = b"text\n" + b"x" * (CSV_FIELD_LIMIT + 1) + b"\nshort\n"
    assert run_case(Case(f"big.{container}", data, "text", [], None)) == []


@pytest.mark.parametrize(
    "line", [b'{"x": [{}]}', b'{"messages": [], "tools": [{}]}', b'{"prompt": [{}], "completion": "a"}']
)
def test_detect_snippet_with_empty_object(line: bytes) -> None:
    assert run_case(Case("snippet.jsonl", line + b"\n", "auto", [], 1)) == []


@pytest.mark.parametrize("container", ["csv", "tsv"])
def test_csv_header_with_invalid_utf8(container: str) -> None:
    """Found by the long fuzz run (was: orjson TypeError on surrogates, exit 1); now a one-line input error."""
    assert run_case(Case(f"h.{container}", b"\xd4P\nA\n", "auto", [], None)) == []


def test_on_error_fail_message_with_newline_in_a_key() -> None:
    """Found by the long fuzz run (was: the message echoed a key's newline, so the error took two lines)."""
    data = b'{"te\\nxt": "a"}\n'
    assert run_case(Case("k.jsonl", data, "text", ["--on-error", "fail"], 1)) == []
