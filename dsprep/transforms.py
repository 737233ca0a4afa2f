"""Named, typed transforms for what a declarative spec cannot express, referenced by ``transform = "name"``.

Each transform takes a raw record and returns a new record (never mutating its input) for the spec's mapping to
read; it raises `RowError` for a record it cannot transform.
"""

from __future__ import annotations

import re
from collections.abc import Callable
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


def transcript_to_messages(record: Record) -> Record:
    """Turn Anthropic-style "\\n\\nHuman: …\\n\\nAssistant: …" strings under chosen/rejected into message lists."""
    out = dict(record)
    for key in ("chosen", "rejected"):
        if key in record:
            out[key] = _split_transcript(record[key], key)
    return out


TRANSFORMS: dict[str, Callable[[Record], Record]] = {
    "transcript_to_messages": transcript_to_messages,
}
