"""Imported by the fork server that starts convert's worker processes (`dsprep.workers`), and by nothing else.

The server dies with the convert process that started it, and before it forks any worker it imports the heavy
modules and loads the encoder the convert names (in ``DSPREP_FORKSERVER_ENCODER``), with the tokenizer's thread pool
off and without encoding anything, so no tokenizer thread exists to be forked: each worker starts with the encoder
loaded (its fastokens engine built: `dsprep.ordinary`), its memory shared with the server's until written. Without
an encoder the workers build tables of normalized rows through pyarrow's conversion, which imports pandas on first
use: the server imports it once for them.
"""

from __future__ import annotations

import signal

signal.signal(signal.SIGINT, signal.SIG_IGN)  # first: Ctrl-C is the convert's to handle, also during these imports

import contextlib  # noqa: E402
import gc  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
from types import TracebackType  # noqa: E402

import orjson  # noqa: E402

from dsprep.server import PRELOAD_ENV, wants_fastokens  # noqa: E402


def _quiet_end(kind: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
    """End the server without a traceback where a worker's start was cut short (its convert closed the request when
    another worker died, and reports that death in one line); anything else as Python would."""
    if not issubclass(kind, (EOFError, ConnectionError)):
        sys.__excepthook__(kind, value, tb)


sys.excepthook = _quiet_end

_preload = orjson.loads(os.environ[PRELOAD_ENV]) if os.environ.get(PRELOAD_ENV) else None
if _preload is not None and wants_fastokens():
    from dsprep import engine_build
    from dsprep.tokenizers import kept_ranks

    with contextlib.suppress(Exception):  # where it cannot start, the encoder below builds its engine itself
        _kept = kept_ranks(_preload["tokenizer"])
        if _kept is not None:
            engine_build.start(*_kept)  # the build releases the GIL: it runs beside the imports below

from dsprep.workers import EncodeSpec, die_with_parent, encoder_for, warm_pyarrow  # noqa: E402

die_with_parent()
os.environ["TOKENIZERS_PARALLELISM"] = "false"
if _preload is not None:
    with contextlib.suppress(Exception):  # a worker that cannot load it reports why
        fast = encoder_for(EncodeSpec(**_preload)).fast  # built before forking
        if fast is not None and wants_fastokens():
            fast.ordinary.wait()  # built before forking: its thread would not live on in the forked workers
else:  # workers then build tables of normalized rows through pyarrow's conversion, which imports pandas
    warm_pyarrow()
gc.freeze()  # what the server built is shared by its workers: their collectors, and the server's exit, skip it
