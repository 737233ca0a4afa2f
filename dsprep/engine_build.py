"""Building the fastokens engine of a rank table (`dsprep.ordinary`), and starting a build ahead of need.

Light on purpose (standard library only): a fork server starts the build of a built-in tokenizer's engine from its
kept rank file first thing (`start`), so that the 0.7 s build, which releases the GIL, runs beside the server's
imports; the encoder then takes the result (`take`) instead of building its own.
"""

from __future__ import annotations

import base64
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["build", "fastokens_module", "rank_lines", "start", "take"]

_PENDING: dict[tuple[str, str], tuple[threading.Thread, list[Any]]] = {}


def fastokens_module() -> Any:
    """The fastokens module, or None where it is not installed."""
    try:
        import fastokens
    except ImportError:
        return None
    return fastokens


def rank_lines(tokens: Sequence[bytes]) -> bytes:
    """Tokens in rank order as a tiktoken rank file, ranks from 0 (fastokens numbers tokens from 0)."""
    return b"".join(base64.b64encode(token) + b" %d\n" % rank for rank, token in enumerate(tokens))


def build(ranks_file: Path, pattern: str) -> Any:
    """A fastokens tokenizer of the rank file split by `pattern`; None where fastokens is not installed or does not
    take the file or the pattern."""
    fastokens = fastokens_module()
    if fastokens is None:
        return None
    try:
        return fastokens.Tokenizer.from_tiktoken(str(ranks_file), pattern=pattern, special_tokens={})
    except (ValueError, RuntimeError, OSError):
        return None


def start(ranks_file: Path, pattern: str) -> None:
    """Start building `build(ranks_file, pattern)` on a thread (not a daemon: an exit waits for it rather than
    stopping it inside fastokens, which aborts the process)."""
    key = (str(ranks_file), pattern)
    if key in _PENDING:
        return
    box: list[Any] = []
    thread = threading.Thread(target=lambda: box.append(build(ranks_file, pattern)), name="dsprep-engine")
    _PENDING[key] = (thread, box)
    thread.start()


def take(ranks_file: Path, pattern: str) -> tuple[bool, Any]:
    """(True, the tokenizer or None) where `start` was called for this file and pattern (waiting for it to be
    built), else (False, None)."""
    pending = _PENDING.pop((str(ranks_file), pattern), None)
    if pending is None:
        return False, None
    thread, box = pending
    thread.join()
    return True, box[0] if box else None
