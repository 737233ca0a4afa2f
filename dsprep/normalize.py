"""Stage 2: the one generic interpreter that turns a raw record into a canonical row, as a format spec says.

`normalize_record` returns a row dict matching `dsprep.schema.NORMALIZED`, or raises `RowError` naming the field
path (in the input's own key names), a reason code and what was expected. Fields the spec does not map are kept
in ``extra`` as JSON text.
"""

from __future__ import annotations

import hashlib
from typing import Any

from dsprep.errors import RowError
from dsprep.messages import (
    as_boolean,
    expect,
    first_key,
    json_text,
    messages_in_text,
    parse_messages,
    parse_tools,
)
from dsprep.schema import NORMALIZED_COLUMNS
from dsprep.specs import FormatSpec
from dsprep.transforms import TRANSFORMS

__all__ = ["REASONS", "normalize_record", "row_id"]

Row = dict[str, Any]
Messages = list[dict[str, Any]]

# Every reason code a rejected row can carry, with what it means (documented in README).
REASONS = {
    "invalid_json": "the record (or a field holding JSON text) is not valid JSON",
    "invalid_utf8": "the record holds bytes that are not UTF-8",
    "wrong_type": "a field has the wrong type (or a CSV row has the wrong number of columns)",
    "missing_field": "a field the format requires is absent or null",
    "unknown_role": "a message role the format spec does not map",
    "empty_content": "a message, text or completion that must have content is empty",
    "invalid_tool_call": "a tool call without a name, or whose arguments are not a JSON object",
    "unsupported_content": "a content part of a type dsprep does not handle (images, audio)",
    "conflicting_system": "a top-level system prompt and a system message in the same row",
    "no_prompt": "a preference pair whose prompt cannot be found",
    "identical_pair": "a preference pair whose chosen and rejected continuations are the same",
}


def row_id(source_name: str, row: int, raw: bytes) -> str:
    """A stable 16-hex-digit id from the input's file name, the row's position and its raw bytes."""
    h = hashlib.blake2b(digest_size=8)
    h.update(f"{source_name}\0{row}\0".encode())
    h.update(raw)
    return h.hexdigest()


class _Reader:
    """Reads one record's fields through a spec, remembering which input keys were used."""

    def __init__(self, record: dict[str, Any], spec: FormatSpec) -> None:
        self.record = record
        self.spec = spec
        self.used: set[str] = set()

    def key(self, name: str) -> str | None:
        found = first_key(self.record, self.spec.fields.get(name, ()))
        if found is not None:
            self.used.add(found)
        return found

    def get(self, name: str) -> tuple[str, Any]:
        """(input key, value) of a canonical field; a missing one is a `missing_field` error."""
        found = self.key(name)
        if found is None:
            keys = " or ".join(repr(k) for k in self.spec.fields.get(name, (name,)))
            has = ", ".join(json_text(k)[1:-1] for k, v in self.record.items() if v is not None) or "no fields"
            message = f"expected a field {keys} ({self.spec.name} format); the row has {has}"
            raise RowError(self.spec.fields.get(name, (name,))[0], "missing_field", message)
        return found, self.record[found]

    def optional(self, name: str) -> tuple[str, Any] | None:
        found = self.key(name)
        return None if found is None else (found, self.record[found])

    def text(self, name: str, *, allow_empty: bool = False) -> str:
        key, value = self.get(name)
        value = expect(value, str, key, "a string")
        if not allow_empty and not value.strip():
            raise RowError(key, "empty_content", f"{name} is empty")
        return str(value)

    def extra(self) -> str | None:
        rest = {k: v for k, v in self.record.items() if k not in self.used and v is not None}
        return json_text(rest) if rest else None


def _system_field(r: _Reader) -> tuple[str, Any] | None:
    """The row's ``system`` field as (key, value), or None where it is absent or a blank string (no system prompt)."""
    found = r.optional("system")
    if found is None or (isinstance(found[1], str) and not found[1].strip()):
        return None
    return found


def _has_system(r: _Reader) -> bool:
    """Whether the row gives a system prompt with any text."""
    return _system_field(r) is not None


def _system(r: _Reader, messages: Messages) -> Messages:
    found = _system_field(r)
    if found is None:
        return messages
    key, value = found
    text = expect(value, str, key, "a string")
    if any(m["role"] == "system" for m in messages):
        raise RowError(key, "conflicting_system", "a top-level system prompt and a system message in one row")
    return [_message("system", text), *messages]


def _message(role: str, content: str) -> dict[str, Any]:
    return {
        "role": role,
        "content": content,
        "name": None,
        "tool_calls": None,
        "tool_call_id": None,
        "reasoning": None,
        "train": None,
        "weight": None,
        "extra": None,
    }


def _turns(r: _Reader) -> Messages:
    messages: Messages = []
    for turn in r.spec.turns:
        pieces = []
        for source in turn.sources:
            if r.record.get(source) is None:
                continue
            r.used.add(source)
            value = expect(r.record[source], str, source, "a string")
            if value.strip():
                pieces.append(value)
        if not pieces:
            if turn.optional:
                continue
            present = [s for s in turn.sources if r.record.get(s) is not None]
            reason = "empty_content" if present else "missing_field"
            raise RowError(turn.sources[0], reason, f"the {turn.role} turn needs {' or '.join(turn.sources)}")
        messages.append(_message(turn.role, turn.join.join(pieces)))
    return messages


def _conversation(r: _Reader, row: Row) -> None:
    if r.spec.turns:
        messages = _turns(r)
    else:
        key, value = r.get("messages")
        messages = parse_messages(value, r.spec, key)
    row["messages"] = _system(r, messages)


def _text(r: _Reader, row: Row) -> None:
    row["text"] = r.text("text")


def _side(r: _Reader, name: str) -> tuple[str, Any, bool]:
    """(key, value, is_conversational) of a prompt/completion/chosen/rejected field: a string is text unless it
    holds a message or a list of messages as JSON."""
    key, value = r.get(name)
    if isinstance(value, str):
        messages = messages_in_text(value, r.spec, key)
        if messages is None:
            return key, value, False
        value = messages
    expect(value, (list, dict), key, "a string, a message or a list of messages")
    return key, value, True


def _as_messages(r: _Reader, key: str, value: Any, conversational: bool, role: str) -> Messages:
    if conversational:
        return parse_messages(value, r.spec, key)
    if role != "user" and not value.strip():
        raise RowError(key, "empty_content", f"{key} is empty")
    return [_message(role, value)]


def _require_answer(messages: Messages, key: str) -> None:
    if not any(m["role"] == "assistant" for m in messages):
        raise RowError(key, "empty_content", "the continuation has no assistant message")


def _prompt_completion(r: _Reader, row: Row) -> None:
    pkey, prompt, pconv = _side(r, "prompt")
    ckey, completion, cconv = _side(r, "completion")
    if pconv or cconv or _has_system(r):
        row["messages"] = _system(r, _as_messages(r, pkey, prompt, pconv, "user") if (prompt or pconv) else [])
        row["completion_messages"] = _as_messages(r, ckey, completion, cconv, "assistant")
        _require_answer(row["completion_messages"], ckey)
    else:
        if not completion.strip():
            raise RowError(ckey, "empty_content", "the completion is empty")
        row["prompt"], row["completion"] = prompt, completion


def _strip_prefix(prompt: Messages, messages: Messages) -> Messages:
    return messages[len(prompt) :] if messages[: len(prompt)] == prompt else messages


def _split_pair_messages(chosen: Messages, rejected: Messages, ckey: str) -> tuple[Messages, Messages, Messages]:
    n = 0
    while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
        n += 1
    if n == len(chosen) == len(rejected):
        raise RowError(ckey, "identical_pair", "chosen and rejected are the same conversation")
    if n == 0:
        raise RowError(ckey, "no_prompt", "chosen and rejected share no prompt messages and no prompt field is given")
    return chosen[:n], chosen[n:], rejected[n:]


def _split_pair_text(chosen: str, rejected: str, marker: str | None, ckey: str) -> tuple[str, str, str]:
    n = 0
    limit = min(len(chosen), len(rejected))
    while n < limit and chosen[n] == rejected[n]:
        n += 1
    cut = chosen.rfind(marker, 0, n) if marker else -1
    if cut < 0 or cut + len(marker or "") > n:
        hint = f" ending in {marker!r}" if marker else ""
        raise RowError(ckey, "no_prompt", f"no prompt field, and chosen and rejected share no prefix{hint}")
    end = cut + len(marker or "")
    return chosen[:end], chosen[end:], rejected[end:]


def _preference(r: _Reader, row: Row) -> None:
    ckey, chosen, cconv = _side(r, "chosen")
    rkey, rejected, rconv = _side(r, "rejected")
    has_prompt = r.optional("prompt") is not None
    pkey, prompt, pconv = _side(r, "prompt") if has_prompt else ("prompt", None, False)
    if not (cconv or rconv or pconv):
        if prompt is None:
            prompt, chosen, rejected = _split_pair_text(chosen, rejected, r.spec.split_marker, ckey)
        for key, text in ((ckey, chosen), (rkey, rejected)):
            if not text.strip():
                raise RowError(key, "empty_content", "the continuation is empty")
        if chosen == rejected:
            raise RowError(ckey, "identical_pair", "chosen and rejected are the same text")
        if not _has_system(r):
            row["prompt"], row["chosen"], row["rejected"] = prompt, chosen, rejected
            return
    chosen_m = _as_messages(r, ckey, chosen, cconv, "assistant")
    rejected_m = _as_messages(r, rkey, rejected, rconv, "assistant")
    if prompt is None:
        prompt_m, chosen_m, rejected_m = _split_pair_messages(chosen_m, rejected_m, ckey)
    else:  # an empty text prompt is no user message, as in prompt-completion rows
        prompt_m = _as_messages(r, pkey, prompt, pconv, "user") if (prompt or pconv) else []
        chosen_m, rejected_m = _strip_prefix(prompt_m, chosen_m), _strip_prefix(prompt_m, rejected_m)
    _require_answer(chosen_m, ckey)
    _require_answer(rejected_m, rkey)
    if chosen_m == rejected_m:
        raise RowError(ckey, "identical_pair", "chosen and rejected are the same continuation")
    row["messages"] = _system(r, prompt_m)
    row["chosen_messages"], row["rejected_messages"] = chosen_m, rejected_m


def _label(r: _Reader) -> bool:
    key, value = r.get("label")
    label = as_boolean(value)
    if label is not None:
        return label
    raise RowError(key, "wrong_type", f"expected a boolean label, got {value!r}")


def _kto(r: _Reader, row: Row) -> None:
    row["label"] = _label(r)
    if r.optional("completion") is not None:
        _prompt_completion(r, row)
        return
    key, value, conversational = _side(r, "prompt")
    if not conversational:
        raise RowError(key, "missing_field", "a string prompt needs a completion field")
    messages = parse_messages(value, r.spec, key)
    if messages[-1]["role"] != "assistant" or len(messages) < 2:
        raise RowError(key, "missing_field", "without a completion field, the last message must be the assistant's")
    row["messages"] = _system(r, messages[:-1])
    row["completion_messages"] = messages[-1:]


KIND_READERS = {
    "conversation": _conversation,
    "text": _text,
    "prompt_completion": _prompt_completion,
    "preference": _preference,
    "kto": _kto,
}


def normalize_record(record: dict[str, Any], spec: FormatSpec) -> Row:
    """Map one raw record to a canonical row (without provenance columns); raises RowError when it cannot."""
    if spec.transform is not None:
        record = TRANSFORMS[spec.transform](record, spec.fields)
    r = _Reader(record, spec)
    row: Row = dict.fromkeys(NORMALIZED_COLUMNS)
    row["kind"] = spec.kind
    KIND_READERS[spec.kind](r, row)
    if (found := r.optional("tools")) is not None:
        row["tools"] = parse_tools(found[1], found[0])
    row["extra"] = r.extra()
    return row
