"""Row-level findings for `dsprep inspect`: role-sequence anomalies, tool-call checks and text hygiene.

Every check is a pure function over one conversation (a list of canonical messages, see `dsprep.schema.MESSAGE`)
or one string, returning the names of the findings it raised with a short detail each. Rows the normalizer
rejects are still checked, through `lenient_messages`, which reads the turns the way the format spec says but
without the normalizer's rules (so an empty assistant turn is reported here as well as in the reject reasons).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator
from typing import Any

import orjson

from dsprep.specs import FormatSpec

__all__ = ["ANOMALIES", "conversation_findings", "lenient_messages", "row_messages", "row_texts", "text_findings"]

Message = dict[str, Any]
Finding = tuple[str, str]  # (anomaly name, detail)

ANOMALIES = {
    "no_user_turn": "a conversation without any user turn",
    "ends_on_user": "a conversation whose last turn is the user's (nothing to train on at the end)",
    "consecutive_same_role": "two turns in a row by the same role (tool results excepted)",
    "system_not_first": "a system message after the first turn",
    "empty_turn": "a turn whose content is empty or only whitespace (and holds no tool call)",
    "tool_arguments_not_json": "a tool call whose arguments are not a JSON object",
    "tool_result_without_call": "a tool result that does not follow an assistant tool call",
    "unknown_tool": "a tool call naming a function not in the row's `tools`",
    "control_characters": "text holding control characters other than tab, newline and carriage return",
    "nul_characters": "text holding NUL (U+0000)",
    "replacement_characters": "text holding U+FFFD, the mark of a failed decode",
    "unbalanced_braces": "text whose template-looking `{{` and `}}` do not pair up",
    "template_placeholders": "text holding `{{...}}` placeholders (meant to be filled in, not trained on as is)",
}
PLACEHOLDER = re.compile(r"\{\{[^{}]*\}\}")
CONTROL = re.compile(r"[\x01-\x08\x0b\x0c\x0e-\x1f\x7f]")


def _blank(m: Message) -> bool:
    content = m.get("content")
    return not (isinstance(content, str) and content.strip()) and not m.get("tool_calls") and not m.get("reasoning")


def _tool_names(tools_json: str | None) -> set[str] | None:
    if not tools_json:
        return None
    try:
        tools = orjson.loads(tools_json)
    except orjson.JSONDecodeError:
        return None
    items = tools if isinstance(tools, list) else []
    names = {t.get("function", t).get("name") for t in items if isinstance(t, dict)}
    names.discard(None)
    return names or None


def conversation_findings(messages: list[Message], tools_json: str | None = None, *, kind: str = "conversation"
                          ) -> Iterator[Finding]:  # fmt: skip
    """Role-sequence and tool-call findings for one whole conversation (prompt and continuation together), each
    finding once (with its first occurrence's detail): findings count rows, not turns or calls."""
    seen: set[str] = set()
    for name, detail in _conversation_findings(messages, tools_json, kind):
        if name not in seen:
            seen.add(name)
            yield name, detail


def _conversation_findings(messages: list[Message], tools_json: str | None, kind: str) -> Iterator[Finding]:
    roles = [m.get("role") for m in messages]
    if "user" not in roles and kind != "text":
        yield "no_user_turn", f"roles: {', '.join(map(str, roles)) or 'none'}"
    if roles and roles[-1] == "user" and kind == "conversation":
        yield "ends_on_user", f"{len(roles)} turns"
    for i in range(1, len(roles)):
        if roles[i] == roles[i - 1] and roles[i] != "tool":
            yield "consecutive_same_role", f"turns {i - 1} and {i} are both {roles[i]}"
            break
    if "system" in roles[1:]:
        yield "system_not_first", f"system at turn {roles.index('system', 1)}"
    for i, m in enumerate(messages):
        if _blank(m):
            yield "empty_turn", f"turn {i} ({m.get('role')}) is empty"
            break
    known = _tool_names(tools_json)
    open_call = False
    for i, m in enumerate(messages):
        role = m.get("role")
        for call in m.get("tool_calls") or ():
            try:
                ok = isinstance(orjson.loads(call.get("arguments") or ""), dict)
            except orjson.JSONDecodeError:
                ok = False
            if not ok:
                yield "tool_arguments_not_json", f"turn {i}: {call.get('name')} arguments {call.get('arguments')!r:.60}"
            if known is not None and call.get("name") not in known:
                yield "unknown_tool", f"turn {i}: {call.get('name')!r} not in tools ({', '.join(sorted(known))})"
        if role == "tool" and not open_call:
            before = roles[i - 1] if i else "nothing"
            yield "tool_result_without_call", f"turn {i} follows a {before} turn without a call"
        if role == "assistant":
            open_call = bool(m.get("tool_calls"))
        elif role != "tool":
            open_call = False


def text_findings(text: str) -> Iterator[Finding]:
    """Hygiene findings for one string."""
    if "\x00" in text:
        yield "nul_characters", f"at char {text.index(chr(0))}"
    if found := CONTROL.search(text):
        yield "control_characters", f"{unicodedata.name(found.group(), repr(found.group()))} at char {found.start()}"
    if "\ufffd" in text:
        yield "replacement_characters", f"at char {text.index(chr(0xFFFD))}"
    opens, closes = text.count("{{"), text.count("}}")
    if opens != closes:
        yield "unbalanced_braces", f"{opens} '{{{{' vs {closes} '}}}}'"
    elif found := PLACEHOLDER.search(text):
        yield "template_placeholders", f"{found.group()[:40]}"


def row_messages(row: dict[str, Any]) -> list[Message] | None:
    """A normalized row as one message list (prompt turns, then the chosen/completion turns); None for plain rows."""
    if row.get("messages") is None:
        return None
    tail = row.get("completion_messages") or row.get("chosen_messages") or []
    return [*row["messages"], *tail]


def row_texts(row: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, text) for every string a normalized row trains or conditions on."""
    for key in ("text", "prompt", "completion", "chosen", "rejected"):
        if isinstance(row.get(key), str):
            yield key, row[key]
    for key in ("messages", "completion_messages", "chosen_messages", "rejected_messages"):
        for m in row.get(key) or ():
            for part in ("content", "reasoning"):
                if isinstance(m.get(part), str):
                    yield str(m.get("role")), m[part]


def _part_text(value: Any) -> str | None:
    if isinstance(value, str) or value is None:
        return value
    if isinstance(value, list):
        parts = [p.get("text", p.get("value")) if isinstance(p, dict) else p for p in value]
        return "".join(p for p in parts if isinstance(p, str))
    return None


def lenient_messages(record: dict[str, Any], spec: FormatSpec) -> list[Message] | None:
    """The turns of a raw record as the spec maps them, without validation; None when they cannot be found."""
    out: list[Message] = []
    if spec.turns:
        for turn in spec.turns:
            texts = [record[s] for s in turn.sources if isinstance(record.get(s), str)]
            if texts or not turn.optional:
                out.append({"role": turn.role, "content": turn.join.join(texts)})
        return out
    key = next((k for k in spec.fields.get("messages", ()) if record.get(k) is not None), None)
    value = record.get(key) if key else None
    if isinstance(value, str):
        try:
            value = orjson.loads(value)
        except orjson.JSONDecodeError:
            return None
    if not isinstance(value, list):
        return None
    role_keys, content_keys = spec.key_for("role"), spec.key_for("content")
    call_keys = spec.key_for("tool_calls")
    for m in value:
        if not isinstance(m, dict):
            return None
        raw_role = next((m[k] for k in role_keys if k in m), None)
        target = spec.roles.get(str(raw_role)) if spec.roles else None
        role = target.role if target else raw_role
        raw_content = next((m[k] for k in content_keys if k in m), None)
        calls: list[Message] | None
        if target is not None and target.content == "tool_call":  # the turn's content is the call
            content, calls = None, _lenient_calls(raw_content) or [{"name": None, "arguments": None}]
        else:
            content, calls = _part_text(raw_content), _lenient_calls(next((m[k] for k in call_keys if m.get(k)), None))
        out.append({"role": role, "content": content, "tool_calls": calls})
    return out


def _lenient_calls(value: Any) -> list[Message] | None:
    """A message's tool calls (OpenAI `tool_calls` list, a legacy `function_call` object, or their JSON text) as
    canonical {name, arguments} calls, without validation; None when there are none."""
    if isinstance(value, str):
        try:
            value = orjson.loads(value)
        except orjson.JSONDecodeError:
            return [{"name": None, "arguments": value}]
    if not value:
        return None
    calls = []
    for call in value if isinstance(value, list) else [value]:
        fn = call.get("function", call) if isinstance(call, dict) else {}
        fn = fn if isinstance(fn, dict) else {}
        args = fn.get("arguments", fn.get("parameters", {}))
        try:
            text = args if isinstance(args, str) else orjson.dumps(args).decode()
        except TypeError:
            text = repr(args)
        calls.append({"name": fn.get("name"), "arguments": text})
    return calls
