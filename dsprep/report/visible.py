"""Text from the data made safe to show: control characters written as visible escapes.

Raw rows, file names and token pieces may hold ESC, OSC or other control characters; printed as they are, they
would drive the terminal (colours, titles, hyperlinks, cursor moves), and in HTML they are codepoints the standard
forbids. The renderers show every report string through `visible_report`, so nothing the data holds reaches the
terminal or the page as a control character; the JSON report keeps the text as it is (JSON escapes it).
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["visible", "visible_report"]

# C0 (tab and newline kept), DEL, C1, lone surrogates and the noncharacters HTML forbids
HIDDEN = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff\ufdd0-\ufdef\ufffe\uffff]")


def _escape(m: re.Match[str]) -> str:
    code = ord(m.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def visible(text: str) -> str:
    """`text` with each control character other than tab and newline (and each codepoint HTML forbids) written as
    an escape such as ``\\x1b`` or ``\\ufffe``."""
    return HIDDEN.sub(_escape, text)


def visible_report(value: Any) -> Any:
    """A copy of a report (or any part of one) whose strings, keys included, are all `visible`."""
    if isinstance(value, str):
        return visible(value)
    if isinstance(value, dict):
        return {visible_report(k): visible_report(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [visible_report(v) for v in value]
    return value
