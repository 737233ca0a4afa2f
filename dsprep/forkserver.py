"""Imported by the fork server that starts convert's worker processes (`dsprep.workers`), and by nothing else.

The server dies with the convert process that started it, and imports the heavy modules once, before it forks:
each worker then starts with them imported.
"""

from __future__ import annotations

import contextlib

from dsprep.workers import die_with_parent

die_with_parent()
with contextlib.suppress(ImportError):  # transformers is imported when a worker loads its tokenizer
    import transformers.models.auto.tokenization_auto  # noqa: F401
