"""Compact JSON text of decoded values, however deeply they nest (orjson stops at 255 levels)."""

from __future__ import annotations

import json
import sys
from typing import Any

import orjson

__all__ = ["MAX_DEPTH", "TooDeepError", "dumps"]

MAX_DEPTH = 1024  # as deep as orjson.loads reads; deeper values (from a streamed JSON array) are refused


class TooDeepError(ValueError):
    """A value nested deeper than `MAX_DEPTH` levels."""


def _depth(value: Any) -> int:
    deepest, stack = 0, [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict | list | tuple):
            deepest = max(deepest, d)
            if d > MAX_DEPTH:
                return d
            stack.extend((c, d + 1) for c in (v.values() if isinstance(v, dict) else v))
    return deepest


def dumps(value: Any) -> bytes:
    """Compact JSON (keys in their order, non-ASCII kept, unknown types as str); `TooDeepError` past `MAX_DEPTH`."""
    try:
        return orjson.dumps(value, default=str)
    except TypeError as exc:
        if "Recursion limit" not in str(exc):
            raise
    depth = _depth(value)
    if depth > MAX_DEPTH:
        raise TooDeepError(f"a value nested deeper than {MAX_DEPTH} levels")
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 2 * depth + 200))
    try:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str).encode()
    finally:
        sys.setrecursionlimit(limit)
