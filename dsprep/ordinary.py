"""The ids of a text without added tokens under a tiktoken rank table: the engine beneath `dsprep.fast_bpe`.

Two engines encode the same ids. fastokens (a PCRE2-JIT pre-tokenizer with its own BPE) is the one used where it is
installed: on chat text it is about ten times faster than tiktoken's ``encode_to_numpy``, and it also encodes long
runs of one character class (a million spaces) on which tiktoken's regex engine overflows its stack. It is built from
a rank file (``<base64 bytes> <rank>`` per line) kept beside the vocabulary, on a thread of its own, for runs over
enough input to repay its build (`dsprep.server.engine_for`). tiktoken is the engine until then, for smaller runs,
where fastokens is missing or does not take the tokenizer's split pattern, and for a text fastokens fails on.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dsprep import engine_build
from dsprep.server import wants_fastokens
from dsprep.tokenizers import write_atomic

if TYPE_CHECKING:
    from dsprep.fast_bpe import RankedVocab

__all__ = ["OrdinaryEncoder", "engine_versions"]

# one special token the text is searched for and never allowed: with none, tiktoken's search for specials matches the
# empty string at every position (encode_to_numpy, unlike encode_ordinary, runs that search)
NEVER_SPECIAL = "<dsprep-no-special-token>"
# what both engines must encode alike before fastokens is used: each class of characters a split pattern tells apart
PROBE = (
    "Hello, World! It's 2024: they'll've DON'T  stop\n\n\t  \r\n x = [1, 22, 333, 4444]; y += 0.5e-3 ...\u00a0"
    "café naïve e\u0301 ß ﬁ Ελληνικά кириллица עברית مرحبا हिन्दी 日本語のテキスト 한국어 🦩👩‍👩‍👧🇫🇷 𝔘𝔫𝔦 \x00 "
    '<s>[INST] {"k": "v"} ```python\n    return x\n```   \n'
)
PROBE_KEY = hashlib.sha256(PROBE.encode()).hexdigest()[:12]  # names the kept probe ids: a changed probe is a new file


def engine_versions() -> dict[str, str]:
    """The versions of the encoding engines installed (what a stored verification of an encoder depends on)."""
    from importlib.metadata import PackageNotFoundError, version

    found: dict[str, str] = {}
    for package in ("fastokens", "tiktoken"):
        with contextlib.suppress(PackageNotFoundError):
            found[package] = version(package)
    return found


class OrdinaryEncoder:
    """Encodes text without added tokens to a vocabulary's ids (`encode`), with fastokens once it is built.

    vocab: the rank table; ranks_file: where its rank file is kept (written when missing; None: a temporary file);
    name: the tiktoken encoding's name. fastokens takes about 0.7 s to build a 131k vocabulary, five times tiktoken's
    time: where the run wants it (`wants_fastokens`), the first `encode` starts building it on a thread (its build
    releases the GIL), and the texts encoded before it is ready go through tiktoken, with the same ids; `wait` builds
    it and waits (a fork server, before it forks). The thread is not a daemon: the interpreter waits for it at exit
    rather than stopping it inside fastokens (which aborts the process). fastokens is used only where it encodes
    `PROBE` as tiktoken does.
    """

    def __init__(self, vocab: RankedVocab, ranks_file: Path | None = None, name: str = "bpe") -> None:
        self.vocab = vocab
        self.name = name
        self.fast: Any = None  # the fastokens tokenizer, once built and checked
        self._ranks_file = ranks_file
        self._building: threading.Thread | None = None
        self._started = engine_build.fastokens_module() is None  # nothing to build without fastokens
        if self._started:
            self.tiktoken.name  # noqa: B018 - a pattern tiktoken does not take fails here (ValueError), not mid-run

    def _start(self) -> None:
        """Start building fastokens on a thread (once)."""
        if not self._started:
            self._started = True
            self._building = threading.Thread(target=self._build, name="dsprep-fastokens")
            self._building.start()

    def _build(self) -> None:
        fast = _fastokens(self.vocab, self._ranks_file)
        with contextlib.suppress(Exception):
            if fast is not None and self._fast_ids(fast, PROBE).tolist() == self._probe_ids():
                self.fast = fast

    def _probe_ids(self) -> list[int]:
        """tiktoken's ids of `PROBE`, kept beside the rank file (building tiktoken takes 0.15 s)."""
        kept = None
        if self._ranks_file is not None:
            kept = self._ranks_file.with_name(f"{self._ranks_file.name}.probe-{PROBE_KEY}")
            with contextlib.suppress(OSError, ValueError):
                return [int(i) for i in json.loads(kept.read_text())]
        ids = self._tiktoken_ids(PROBE).tolist()
        if kept is not None:
            write_atomic(kept, json.dumps(ids).encode())
        return ids

    @contextlib.contextmanager
    def tiktoken_only(self) -> Iterator[None]:
        """Encode with tiktoken in the block, starting no build (fastokens, where it is built already, still
        encodes): for a process that encodes while another builds the engine it will use."""
        started, self._started = self._started, True
        try:
            yield
        finally:
            self._started = started

    def wait(self) -> str:
        """Build fastokens (where it is installed) and wait until it is ready; the engine that encodes from now on."""
        self._start()
        if self._building is not None:
            self._building.join()
            self._building = None
        return self.engine

    @property
    def engine(self) -> str:
        """The engine that encodes now: ``fastokens`` or ``tiktoken``."""
        return "tiktoken" if self.fast is None else "fastokens"

    @functools.cached_property
    def tiktoken(self) -> Any:
        """The vocabulary as a ``tiktoken.Encoding`` (built when first asked for)."""
        import tiktoken

        first, tokens = self.vocab.first_id, self.vocab.tokens
        ranks = {token: rank + first for rank, token in enumerate(tokens)}
        never = {NEVER_SPECIAL: first + len(tokens) + (1 << 20)}
        return tiktoken.Encoding(name=f"dsprep-{self.name}", pat_str=self.vocab.pattern, mergeable_ranks=ranks,
                                 special_tokens=never)  # fmt: skip

    def encode(self, text: str) -> np.ndarray:
        """The int32 ids of `text`, none of whose characters are read as added tokens."""
        fast = self.fast
        if fast is None and not self._started and wants_fastokens():
            self._start()
        if fast is not None:
            try:
                return self._fast_ids(fast, text)
            except Exception:  # a regex limit of PCRE2's: tiktoken gives the same ids
                pass
        return self._tiktoken_ids(text)

    def _fast_ids(self, fast: Any, text: str) -> np.ndarray:
        try:
            flat = fast.encode_batch_flat([text])[0]
        except UnicodeEncodeError:  # lone surrogates: each one a U+FFFD, as tiktoken's `encode` has it
            flat = fast.encode_batch_flat([_without_surrogates(text)])[0]
        ids = np.frombuffer(flat, np.int32)
        return ids + np.int32(self.vocab.first_id) if self.vocab.first_id else ids.copy()

    def _tiktoken_ids(self, text: str) -> np.ndarray:
        try:
            return self.tiktoken.encode_to_numpy(text, disallowed_special=()).view(np.int32)
        except UnicodeEncodeError:
            return self.tiktoken.encode_to_numpy(_without_surrogates(text), disallowed_special=()).view(np.int32)


def _without_surrogates(text: str) -> str:
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def _fastokens(vocab: RankedVocab, ranks_file: Path | None) -> Any:
    """A fastokens tokenizer of `vocab` (the one a fork server started building, where it did), or None where
    fastokens is not installed or does not take its pattern."""
    if ranks_file is not None:
        started, built = engine_build.take(ranks_file, vocab.pattern)
        if started:
            return built
    with _rank_file(vocab, ranks_file) as path:
        return engine_build.build(path, vocab.pattern)


@contextlib.contextmanager
def _rank_file(vocab: RankedVocab, kept: Path | None) -> Iterator[Path]:
    """The path of `vocab`'s rank file: `kept`, written there (atomically) when missing, else a temporary file."""
    if kept is not None and (kept.is_file() or write_atomic(kept, engine_build.rank_lines(vocab.tokens))):
        yield kept
        return
    with tempfile.TemporaryDirectory(prefix="dsprep-ranks-") as folder:
        path = Path(folder) / "ranks.tiktoken"
        path.write_bytes(engine_build.rank_lines(vocab.tokens))
        yield path
