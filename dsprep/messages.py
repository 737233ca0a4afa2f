"""Reading one message (and its tool calls, content parts and tools list) as a format spec describes it."""

from __future__ import annotations

import contextlib
import math
import re
from typing import Any

import orjson

from dsprep import jsontext
from dsprep.errors import RowError
from dsprep.schema import ROLES
from dsprep.specs import FormatSpec, RoleTarget

__all__ = ["as_boolean", "json_text", "messages_in_text", "parse_messages", "parse_tools"]

Message = dict[str, Any]
TEXT_PARTS = ("text", "input_text", "output_text")
REASONING_PARTS = ("reasoning", "thinking")
MESSAGE_FIELDS = ("role", "content", "name", "tool_calls", "tool_call_id", "reasoning", "train", "weight", "extra")
CONTENT_REQUIRED = ("user", "tool")
_OPENS_OBJECT = re.compile(r"\[?\s*\{\s*\"")  # an object (or a list of them) whose first key is quoted
CANONICAL_ROLES = {role: RoleTarget(role=role) for role in ROLES}  # used when a spec declares no [roles]


def json_text(value: Any, path: str = "") -> str:
    """Compact JSON text, keys in their given order, non-ASCII kept as is; a row error at `path` when too deep."""
    try:
        return jsontext.dumps(value).decode()
    except jsontext.TooDeepError as exc:
        raise RowError(path, "wrong_type", str(exc)) from None


def maybe_json(value: Any, path: str) -> Any:
    """Decode `value` from JSON when it is a string holding the expected container (CSV cells, JSON-in-JSON)."""
    if isinstance(value, str) and value.lstrip()[:1] in ("[", "{"):
        try:
            return orjson.loads(value)
        except orjson.JSONDecodeError as exc:
            raise RowError(path, "invalid_json", f"holds text that is not valid JSON ({exc})") from None
    return value


def messages_in_text(text: str, spec: FormatSpec, path: str) -> Any:
    """The message or list of messages `text` holds as JSON (a CSV cell, JSON-in-JSON), or None where it is plain
    text: not JSON, or JSON of another shape (``[INST] ...``, ``{"name": "Bob"}``, ``[1, 2, 3]``, an object whose
    ``role`` is no role the spec knows or that has no content or tool calls, such as ``{"name": "Ann", "role":
    "CEO"}``). Text that opens like JSON messages (``[{"role"``) but is not valid JSON is an ``invalid_json`` error,
    not text."""
    head = text.lstrip()[:200]
    if head[:1] not in ("[", "{"):
        return None
    roles = spec.key_for("role")
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        if _OPENS_OBJECT.match(head) and any(f'"{key}"' in head for key in roles):
            raise RowError(path, "invalid_json", f"holds message JSON that is not valid ({exc})") from None
        return None

    known = spec.roles or CANONICAL_ROLES
    said = (*spec.key_for("content"), *spec.key_for("tool_calls"))

    def is_message(item: Any) -> bool:
        if not isinstance(item, dict):
            return False
        role = next((item[key] for key in roles if key in item), None)
        return isinstance(role, str) and role in known and any(key in item for key in said)

    if is_message(value) or (isinstance(value, list) and value and all(map(is_message, value))):
        return value
    return None


def _type_name(value: Any) -> str:
    return {str: "string", list: "list", dict: "object", bool: "boolean", int: "number", float: "number"}.get(
        type(value), "null" if value is None else type(value).__name__
    )


def expect(value: Any, kind: type | tuple[type, ...], path: str, what: str) -> Any:
    """Return `value` if it has the expected JSON type, else raise a `wrong_type` RowError."""
    if isinstance(value, bool) and kind is not bool and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        raise RowError(path, "wrong_type", f"expected {what}, got boolean")
    if not isinstance(value, kind):
        raise RowError(path, "wrong_type", f"expected {what}, got {_type_name(value)}")
    return value


def first_key(obj: dict[str, Any], keys: tuple[str, ...]) -> str | None:
    """The first of `keys` present in `obj` with a non-null value."""
    for key in keys:
        if obj.get(key) is not None:
            return key
    return None


def _arguments(value: Any, path: str) -> str:
    if isinstance(value, dict):
        return json_text(value)
    expect(value, str, path, "the arguments as a JSON object or JSON text")
    try:
        decoded = orjson.loads(value)
        if isinstance(decoded, str):  # double-encoded: JSON text of JSON text
            inner = orjson.loads(decoded)
            if isinstance(inner, dict):
                return decoded
    except orjson.JSONDecodeError as exc:
        raise RowError(path, "invalid_tool_call", f"arguments are not valid JSON ({exc})") from None
    if not isinstance(decoded, dict):
        raise RowError(path, "invalid_tool_call", f"arguments must be a JSON object, got {_type_name(decoded)}")
    return value


def _tool_call(value: Any, path: str) -> dict[str, Any]:
    value = maybe_json(value, path)
    call = expect(value, dict, path, "a tool call object")
    fn = call.get("function", call)
    fn = expect(fn, dict, f"{path}.function", "an object with name and arguments")
    name = fn.get("name")
    if not isinstance(name, str) or not name:
        raise RowError(f"{path}.name", "invalid_tool_call", "a tool call needs a non-empty string name")
    args = fn.get("arguments", fn.get("parameters", {}))
    call_id = call.get("id")
    return {
        "id": None if call_id is None else str(call_id),
        "name": name,
        "arguments": _arguments(args, f"{path}.arguments"),
    }


def _tool_calls(value: Any, path: str) -> list[dict[str, Any]]:
    value = maybe_json(value, path)
    if isinstance(value, str):  # text that is no JSON: not a call, whatever the field's type allows
        raise RowError(path, "invalid_tool_call", f"expected a tool call (an object, or JSON text), got {value[:60]!r}")
    calls = value if isinstance(value, list) else [value]
    return [_tool_call(c, f"{path}[{i}]") for i, c in enumerate(calls)]


def _content(value: Any, path: str, msg: Message) -> None:
    """Fill content, reasoning and tool calls from a string or a list of typed parts."""
    if isinstance(value, str):
        msg["content"] = value
        return
    parts = expect(value, list, path, "a string or a list of content parts")
    texts: list[str] = []
    thoughts: list[str] = []
    for i, part in enumerate(parts):
        ppath = f"{path}[{i}]"
        if isinstance(part, str):
            texts.append(part)
            continue
        expect(part, dict, ppath, "a content part object")
        ptype = part.get("type", "text")
        body = part.get("text")
        if body is None:  # absent, or null beside a "value" (Parquet gives every part both keys)
            body = part.get("value")
        if body is None and ptype in REASONING_PARTS:  # {"type": "thinking", "thinking": ...} (Anthropic's shape)
            body = part.get(ptype)
        if ptype in TEXT_PARTS or ptype in REASONING_PARTS:
            body = expect(body, str, f"{ppath}.text", f"the text of a {ptype} part")
            (texts if ptype in TEXT_PARTS else thoughts).append(body)
        elif ptype in ("tool_call", "function_call"):
            msg["tool_calls"] = [*(msg["tool_calls"] or []), _tool_call(body, f"{ppath}.value")]
        else:
            raise RowError(f"{ppath}.type", "unsupported_content", f"content part type {ptype!r} is not supported")
    msg["content"] = "".join(texts) if texts or not (thoughts or msg["tool_calls"]) else None
    if thoughts:
        msg["reasoning"] = "".join(thoughts)


def as_boolean(value: Any) -> bool | None:
    """`value` as a boolean where it spells one (true/false, 1/0, 1.0/0.0, "true"/"false"/"1"/"0" in any case),
    else None."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0"):
        return value.strip().lower() in ("true", "1")
    return None


def _flag(value: Any, path: str) -> bool:
    flag = as_boolean(value)
    if flag is None:
        raise RowError(path, "wrong_type", f"expected a boolean, got {_type_name(value)}")
    return flag


def _weight(value: Any, path: str) -> float:
    number: float | None = None
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            number = float(value)
    if number is None:
        number = float(expect(value, (int, float), path, "a number"))
    if not math.isfinite(number):
        raise RowError(path, "wrong_type", f"expected a finite number, got {value!r}")
    return number


MEMO_SHAPES = 256  # message shapes (their non-null keys) whose key mapping is remembered, per spec
MEMO_SPECS = 64  # specs whose shapes are remembered
# id(spec.message_aliases) -> (those aliases, kept alive so the id stays theirs; shape -> `_message_keys`' answer)
_MEMO: dict[int, tuple[Any, dict[tuple[str, ...], tuple[dict[str, str], bool]]]] = {}


def _message_keys(obj: dict[str, Any], spec: FormatSpec) -> tuple[dict[str, str], bool]:
    """(message attribute -> the input key that holds it: the spec's first candidate present with a non-null value;
    whether those keys are all the message's non-null keys). Remembered per set of keys: most inputs have a few."""
    aliases = spec.message_aliases
    entry = _MEMO.get(id(aliases))
    if entry is None:
        if len(_MEMO) >= MEMO_SPECS:
            _MEMO.clear()
        entry = _MEMO[id(aliases)] = (aliases, {})
    memo = entry[1]
    shape = tuple(key for key, value in obj.items() if value is not None)
    found = memo.get(shape)
    if found is not None:
        return found
    best: dict[str, tuple[int, str]] = {}
    for key in shape:
        for name, rank in aliases.get(key, ()):
            if name not in best or rank < best[name][0]:
                best[name] = (rank, key)
    keys = {name: key for name, (_, key) in best.items()}
    found = (keys, len(set(keys.values())) == len(shape))
    if len(memo) < MEMO_SHAPES:
        memo[shape] = found
    return found


def parse_message(obj: Any, spec: FormatSpec, path: str) -> Message:
    """One input message as a canonical message dict (see `dsprep.schema.MESSAGE`)."""
    obj = expect(obj, dict, path, "a message object")
    keys, all_used = _message_keys(obj, spec)
    key = keys.get

    msg: Message = dict.fromkeys(MESSAGE_FIELDS)
    role_key = key("role")
    if role_key is None:
        raise RowError(f"{path}.{spec.key_for('role')[0]}", "missing_field", "every message needs a role")
    role_value = obj[role_key]
    roles = spec.roles or CANONICAL_ROLES
    target = roles.get(role_value) if isinstance(role_value, str) else None
    if target is None:
        known = ", ".join(roles)
        raise RowError(
            f"{path}.{role_key}",
            "unknown_role",
            f"{role_value!r} is not a known role; expected one of {known} (map it under [roles] in {spec.origin})",
        )
    msg["role"] = target.role
    content_key = key("content")
    if all_used and len(keys) == 2 and content_key is not None and target.content == "text":
        content = obj[content_key]  # the usual {"role", "content"} with text: nothing else to read or check
        if type(content) is str and content and not content.isspace():
            msg["content"] = content
            return msg
    if content_key is not None:
        if target.content == "tool_call":
            msg["tool_calls"] = _tool_calls(obj[content_key], f"{path}.{content_key}")
        else:
            _content(obj[content_key], f"{path}.{content_key}", msg)
    if (k := key("tool_calls")) is not None:
        msg["tool_calls"] = [*(msg["tool_calls"] or []), *_tool_calls(obj[k], f"{path}.{k}")] or None
    for name in ("name", "tool_call_id", "reasoning"):
        if (k := key(name)) is not None:
            msg[name] = expect(obj[k], str, f"{path}.{k}", "a string")
    if (k := key("train")) is not None:
        msg["train"] = _flag(obj[k], f"{path}.{k}")
    if (k := key("weight")) is not None:
        msg["weight"] = _weight(obj[k], f"{path}.{k}")
    if not all_used:
        used = set(keys.values())
        rest = {k: v for k, v in obj.items() if v is not None and k not in used}
        msg["extra"] = json_text(rest, path)
    _check_content(msg, f"{path}.{content_key or spec.key_for('content')[0]}")
    return msg


def _check_content(msg: Message, path: str) -> None:
    content = msg["content"]
    empty = content is None or not content or content.isspace()
    if not empty:
        return
    if msg["role"] in CONTENT_REQUIRED or (
        msg["role"] == "assistant" and not msg["tool_calls"] and not msg["reasoning"]
    ):
        raise RowError(path, "empty_content", f"{msg['role']} message has no content")


def parse_messages(value: Any, spec: FormatSpec, path: str) -> list[Message]:
    """A list of input messages (or one message object) as canonical messages; an empty list is an error."""
    value = maybe_json(value, path)
    items = [value] if isinstance(value, dict) else expect(value, list, path, "a list of messages")
    if not items:
        raise RowError(path, "empty_content", "expected at least one message")
    return [parse_message(m, spec, f"{path}[{i}]") for i, m in enumerate(items)]


def _tool(tool: Any, path: str) -> Any:
    expect(tool, dict, path, "a tool schema object")
    if "type" not in tool and "name" in tool:
        return {"type": "function", "function": tool}
    return tool


def parse_tools(value: Any, path: str) -> str | None:
    """Tool schemas as JSON text of a list of {"type": "function", "function": {...}}; None when there are none."""
    value = maybe_json(value, path)
    tools = [value] if isinstance(value, dict) else expect(value, list, path, "a list of tool schemas")
    return json_text([_tool(t, f"{path}[{i}]") for i, t in enumerate(tools)]) if tools else None
