"""Named, typed transforms for what a declarative spec cannot express, referenced by ``transform = "name"``.

Each transform takes a raw record and the spec's field mapping, and returns a new record (never mutating its input)
for the spec's mapping to read; it raises `RowError` for a record it cannot transform.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from dsprep.errors import RowError

__all__ = ["TRANSFORMS", "transcript_to_messages"]

Record = dict[str, Any]
_TURN = re.compile(r"\n\n(Human|Assistant): ?")
_SPEAKERS = {"Human": "user", "Assistant": "assistant"}


def _split_transcript(text: Any, key: str) -> list[dict[str, str]]:
    if not isinstance(text, str):
        raise RowError(key, "wrong_type", "expected a transcript string")
    parts = _TURN.split(text)
    if parts[0].strip():
        raise RowError(key, "wrong_type", 'expected a transcript starting with "\\n\\nHuman:"')
    return [{"role": _SPEAKERS[who], "content": body} for who, body in zip(parts[1::2], parts[2::2], strict=True)]


def transcript_to_messages(record: Record, fields: Mapping[str, Sequence[str]]) -> Record:
    """Turn Anthropic-style "\\n\\nHuman: …\\n\\nAssistant: …" strings under the keys `fields` maps to chosen and
    rejected (first present wins, as the mapping reads them) into message lists."""
    out = dict(record)
    for name in ("chosen", "rejected"):
        key = next((k for k in fields.get(name, (name,)) if record.get(k) is not None), None)
        if key is not None:
            out[key] = _split_transcript(record[key], key)
    return out


TRANSFORMS: dict[str, Callable[[Record, Mapping[str, Sequence[str]]], Record]] = {
    "transcript_to_messages": transcript_to_messages,
}
