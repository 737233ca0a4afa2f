"""Row findings count rows: a finding kind counts once per row however often it occurs there; rejected rows with
OpenAI tool calls are read with their calls (no false empty turn or result without a call)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from dsprep.cli import main
from dsprep.report.checks import conversation_findings

TOOLS = [{"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}]


def call(name: str, arguments: str = "{}", n: int = 1) -> dict[str, Any]:
    return {"id": str(n), "type": "function", "function": {"name": name, "arguments": arguments}}


def calling(calls: list[dict[str, Any]], *extra: dict[str, Any]) -> list[dict[str, Any]]:
    """user question -> assistant tool calls -> one result per call -> answer (+ extra messages)."""
    results = [{"role": "tool", "tool_call_id": c["id"], "content": "12:00"} for c in calls]
    return [{"role": "user", "content": "time?"}, {"role": "assistant", "content": None, "tool_calls": calls},
            *results, {"role": "assistant", "content": "noon"}, *extra]  # fmt: skip


def inspect_rows(tmp_path: Path, rows: list[dict[str, Any]]) -> dict[str, Any]:
    src = tmp_path / "rows.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "r.json"
    result = CliRunner().invoke(main, ["inspect", str(src), "-q", "--json", str(out)])
    assert result.exit_code == 0, result.output
    [d] = json.loads(out.read_text())["inputs"]
    return d  # type: ignore[no-any-return]


def test_findings_count_rows_not_calls(tmp_path: Path) -> None:
    """Row 1 calls three functions not in its tools, row 2 one, row 3 a known one: unknown_tool counts 2 rows."""
    three = [call("a", "{}", 1), call("b", '{"x": 1}', 2), call("c", "{}", 3)]
    rows = [{"tools": TOOLS, "messages": calling(three)}, {"tools": TOOLS, "messages": calling([call("d")])},
            {"tools": TOOLS, "messages": calling([call("get_time")])}]  # fmt: skip
    d = inspect_rows(tmp_path, rows)
    assert d["rows"] == {"read": 3, "kept": 3, "rejected": 0}
    assert {name: t["count"] for name, t in d["findings"].items()} == {"unknown_tool": 2}
    assert [e["location"].rsplit(":", 1)[1] for e in d["findings"]["unknown_tool"]["examples"]] == ["1", "2"]


def test_each_conversation_finding_is_yielded_once() -> None:
    messages = calling([call("a", "no", 1), call("b", "no", 2)])
    messages += [{"role": "tool", "content": "late"}, {"role": "tool", "content": "later"}]
    names = [name for name, _ in conversation_findings(messages, json.dumps(TOOLS))]
    assert sorted(names) == sorted(set(names))
    assert {"unknown_tool", "tool_arguments_not_json", "tool_result_without_call"} <= set(names)


def test_a_rejected_row_with_tool_calls_has_no_false_findings(tmp_path: Path) -> None:
    """A valid call -> result -> answer conversation plus a turn whose role is unknown: rejected for that role
    only; its assistant turn holds a call (not empty) and its tool result follows the call."""
    rejected = {"tools": TOOLS, "messages": calling([call("get_time")], {"role": "narrator", "content": "fin"})}
    d = inspect_rows(tmp_path, [rejected])
    assert d["rows"] == {"read": 1, "kept": 0, "rejected": 1}
    assert list(d["rejected_by_reason"]) == ["unknown_role"]
    assert d["findings"] == {}
    legacy = {"messages": [{"role": "user", "content": "q"},
                           {"role": "assistant", "content": None,
                            "function_call": {"name": "get_time", "arguments": "{}"}},
                           {"role": "function", "name": "get_time", "content": "12:00"},
                           {"role": "assistant", "content": "noon"}, {"role": "narrator", "content": "fin"}]}  # fmt: skip
    d = inspect_rows(tmp_path, [legacy])
    assert list(d["rejected_by_reason"]) == ["unknown_role"] and d["findings"] == {}
    broken = {"messages": calling([call("get_time", "not json")], {"role": "narrator", "content": "fin"})}
    d = inspect_rows(tmp_path, [broken])
    assert {name: t["count"] for name, t in d["findings"].items()} == {"tool_arguments_not_json": 1}
