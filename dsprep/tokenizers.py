"""Tokenizers: a local Hugging Face tokenizer folder, or an embedded default built offline from `mistral-common`.

``--tokenizer DIR`` loads any local tokenizer folder (never the network). ``mistral:tekken`` (131k-vocab Tekken) and
``mistral:v3`` (SentencePiece, 32k vocab, ``[INST]`` control tokens) are built once from the files the
`mistral-common` package ships and cached under ``$DSPREP_CACHE`` (default ``~/.cache/dsprep``). A fingerprint
(sha256 over the tokenizer's vocabulary/model, special tokens and chat template) identifies a tokenizer in manifests.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dsprep.errors import TokenizerError

if TYPE_CHECKING:
    from dsprep.fast_bpe import FastEncoder, RankedVocab

__all__ = [
    "BUILTIN",
    "LoadedTokenizer",
    "TokenizerFacts",
    "load_tokenizer",
    "read_beside",
    "tokenizer_folder",
    "write_atomic",
    "write_beside",
]

BUILTIN = {
    "mistral:tekken": "131k-vocab Tekken (tekken_240911.json) with mistral-common's own chat template",
    "mistral:v3": "32k-vocab SentencePiece v3 with [INST]/[TOOL_CALLS] control tokens and the mistral_v3 template",
}
DEFAULT_TOKENIZER = "mistral:tekken"
TEKKEN_FILE = "tekken_240911.json"
FACTS = "facts.json"
TEKKEN_VOCAB = "tekken.vocab"
TEKKEN_RANKS = "tekken.tiktoken"


@dataclass(frozen=True)
class TokenizerFacts:
    """What dsprep reads of a tokenizer besides its encoding: identity, special tokens, chat template, added tokens."""

    fingerprint: str
    class_name: str
    vocab_size: int
    special_tokens: dict[str, str]  # the variables `apply_chat_template` passes to templates (bos_token, …)
    bos_token_id: int | None
    eos_token_id: int | None
    chat_template: str | None
    added_tokens: dict[str, int]  # content -> id

    @classmethod
    def of(cls, tok: Any) -> TokenizerFacts:
        added = tok.backend_tokenizer.get_added_tokens_decoder()
        return cls(
            fingerprint=fingerprint(tok), class_name=type(tok).__name__, vocab_size=len(tok),
            special_tokens=_special_tokens(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
            chat_template=_chat_template(tok), added_tokens={t.content: i for i, t in added.items()},
        )  # fmt: skip


def _special_tokens(tok: Any) -> dict[str, str]:
    return {k: str(v) for k, v in tok.special_tokens_map.items()}


def _chat_template(tok: Any) -> str | None:
    """The template `apply_chat_template` uses by default: the tokenizer's ``chat_template``, or of several named
    ones (``tokenizer_config.json``'s list form) the one named ``default``."""
    template = getattr(tok, "chat_template", None)
    if isinstance(template, dict):
        template = template.get("default")
    return template if isinstance(template, str) else None


class LoadedTokenizer:
    """A tokenizer by name, with what rendering, encoding and manifests need.

    The Hugging Face tokenizer (`tokenizer`) is loaded when first used. A built-in with a `fast` encoder keeps its
    `facts` beside its folder once they are known, and later processes that only encode never load it.
    """

    def __init__(self, name: str, folder: Path, *, tokenizer: Any = None, stored: TokenizerFacts | None = None) -> None:
        self.name = name
        self.folder = folder
        self.stored = stored  # facts read from disk: `fast` was verified when they were written
        if tokenizer is not None:
            self.__dict__["tokenizer"] = tokenizer
        if stored is not None:
            self.__dict__["facts"] = stored

    @functools.cached_property
    def tokenizer(self) -> Any:
        """The Hugging Face tokenizer (a transformers PreTrainedTokenizerBase)."""
        return _load_hf(self.name, self.folder)

    @functools.cached_property
    def facts(self) -> TokenizerFacts:
        return TokenizerFacts.of(self.tokenizer)

    @property
    def fingerprint(self) -> str:
        """The tokenizer's fingerprint (`fingerprint`), computed when first asked for: worker processes never do."""
        return self.facts.fingerprint

    @functools.cached_property
    def fast(self) -> FastEncoder | None:
        """The tiktoken encoder that encodes exactly as `tokenizer` does, where the tokenizer has one
        (``mistral:tekken``, and folders whose ``tokenizer.json`` is a tiktoken rank table: `fast_encoder`)."""
        if self.stored is not None:
            from dsprep.fast_bpe import ranked_encoder

            vocab = _tekken_vocab(self.folder)
            if vocab is None:
                return None
            return ranked_encoder(vocab, self.stored.added_tokens, "tekken", ranks_file=_tekken_ranks(self.folder))
        return fast_encoder(self.name, self.tokenizer, self.folder)

    @property
    def special_tokens(self) -> dict[str, str]:
        """The variables `apply_chat_template` passes to templates (bos_token, eos_token, …)."""
        return self.stored.special_tokens if self.stored else _special_tokens(self.tokenizer)

    @property
    def chat_template(self) -> str | None:
        return self.stored.chat_template if self.stored else _chat_template(self.tokenizer)

    @property
    def eos_token_id(self) -> int | None:
        return self.stored.eos_token_id if self.stored else self.tokenizer.eos_token_id


def cache_dir() -> Path:
    """Where built tokenizers are kept."""
    root = os.environ.get("DSPREP_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "dsprep")
    return Path(root).expanduser()


PLAIN_FAST = ("TokenizersBackend", "PreTrainedTokenizerFast")  # tokenizer classes that are tokenizer.json alone


def _quiet_transformers() -> Any:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    import transformers

    transformers.utils.logging.set_verbosity_error()
    return transformers


def _mistral_data() -> Path:
    try:
        from importlib import resources

        return Path(str(resources.files("mistral_common") / "data"))
    except ModuleNotFoundError:
        raise TokenizerError("built-in mistral tokenizers need the `mistral-common` package") from None


def _build(name: str, target: Path) -> None:
    transformers = _quiet_transformers()
    data = _mistral_data()
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        work = Path(tmp)
        if name == "mistral:tekken":
            from transformers.integrations.mistral import convert_tekken_tokenizer

            tok = convert_tekken_tokenizer(str(data / TEKKEN_FILE))
        else:
            src = work / "src"
            src.mkdir()
            shutil.copy(data / "mistral_instruct_tokenizer_240323.model.v3", src / "tokenizer.model")
            tok = transformers.LlamaTokenizer.from_pretrained(str(src), add_bos_token=True, legacy=False)
            from dsprep.templates import load_template

            tok.chat_template = load_template("mistral_v3").text
        out = work / "out"
        tok.save_pretrained(str(out))
        if name == "mistral:v3":
            shutil.copy(data / "mistral_instruct_tokenizer_240323.model.v3", out / "tokenizer.model")
        try:
            os.replace(out, target)
        except OSError:
            if not target.is_dir():  # else another process built it first; theirs is identical
                raise


def _builtin_folder(name: str) -> Path:
    """Where a built-in tokenizer's folder is (built or not)."""
    from importlib.metadata import version

    try:
        mc = version("mistral-common")
    except Exception:
        mc = "unknown"
    return cache_dir() / "tokenizers" / f"{name.replace(':', '-')}-mc{mc}-tf{version('transformers')}"


def kept_ranks(name: str) -> tuple[Path, str] | None:
    """A built-in's kept rank file and split pattern, where both are on disk already (its engine can be built from
    them before anything else is loaded: `dsprep.engine_build.start`); None otherwise."""
    if name != "mistral:tekken":
        return None
    folder = _builtin_folder(name)
    ranks = _tekken_ranks(folder)
    try:
        with open(_beside(folder, TEKKEN_VOCAB), "rb") as f:
            size = int.from_bytes(f.read(4), sys.byteorder)  # as `RankedVocab.dump` writes it
            pattern = json.loads(f.read(size))["pattern"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return (ranks, pattern) if isinstance(pattern, str) and ranks.is_file() else None


def _builtin_path(name: str) -> Path:
    folder = _builtin_folder(name)
    if not folder.is_dir():
        folder.parent.mkdir(parents=True, exist_ok=True)
        _build(name, folder)
    return folder


def tokenizer_folder(name_or_path: str) -> Path:
    """The folder a tokenizer loads from (a built-in is built first if needed), without loading it."""
    if name_or_path in BUILTIN:
        return _builtin_path(name_or_path)
    path = Path(name_or_path)
    if not path.is_dir():
        known = ", ".join(BUILTIN)
        raise TokenizerError(f"{name_or_path}: not a tokenizer folder; pass a local folder or one of {known}")
    return path


def fingerprint(tok: Any) -> str:
    """sha256 over the tokenizer's model/vocabulary, added and special tokens, and chat template."""
    h = hashlib.sha256()
    backend = getattr(tok, "backend_tokenizer", None) or getattr(tok, "_tokenizer", None)
    if backend is not None:
        h.update(backend.to_str().encode())
    else:
        h.update(json.dumps(tok.get_vocab(), sort_keys=True).encode())
    h.update(json.dumps({k: str(v) for k, v in tok.special_tokens_map.items()}, sort_keys=True).encode())
    h.update(json.dumps(sorted(str(t) for t in tok.all_special_tokens)).encode())
    template = getattr(tok, "chat_template", None)
    if isinstance(template, str):
        h.update(template.encode())
    elif isinstance(template, dict):  # several named templates
        h.update(json.dumps(template, sort_keys=True).encode())
    return h.hexdigest()


FAST_PROBE = (
    "Probe <s>[INST] text, 12 émojis 🦩 and\n\n  spaces [/INST]</s> It's WE'LL 1234567 x=[1, 2]\r\n\t  \u00a0\u3000"
    "日本語のテキスト e\u0301 ﬁ 👩‍👩‍👧 ====== ---\n    def f(): return {'k': None}  \n"
)


def fast_encoder(name: str, tok: Any, folder: Path) -> FastEncoder | None:
    """A tiktoken encoder that encodes exactly as the Hugging Face tokenizer `tok` does, or None.

    ``mistral:tekken`` uses mistral-common's own rank table; a folder, the one its ``tokenizer.json`` holds where that
    file is a tiktoken rank table (`RankedVocab.from_tokenizer_json`). Either is used only when it encodes a probe
    text to the tokenizer's ids and offsets. Where the tokenizer adds special tokens of its own (a BOS), texts that
    take them are left to the tokenizer (`FastEncoder.with_specials`).
    """
    if getattr(tok, "split_special_tokens", False):
        return None
    added = tok.backend_tokenizer.get_added_tokens_decoder()
    if any(t.lstrip or t.rstrip or t.single_word or t.normalized for t in added.values()):
        return None
    tekken = name == "mistral:tekken"
    stem = None if tekken else _ranked_stem(folder)
    vocab = _tekken_vocab(folder) if tekken else _ranked_vocab(folder, stem)
    if vocab is None:
        return None
    from dsprep.fast_bpe import ranked_encoder

    reference = tok(FAST_PROBE, add_special_tokens=False)
    with_specials = tok(FAST_PROBE)["input_ids"] == reference["input_ids"]
    added_ids = {t.content: i for i, t in added.items()}
    try:
        ranks_file = _tekken_ranks(folder) if stem is None else stem.with_suffix(".tiktoken")
        encoder = ranked_encoder(vocab, added_ids, name.replace(":", "-") if name in BUILTIN else "folder",
                                 with_specials=with_specials, ranks_file=ranks_file)  # fmt: skip
        probe = encoder.encode(FAST_PROBE)
    except ValueError:  # a split regex tiktoken's engine does not take
        return None
    offsets = list(zip(probe.starts.tolist(), probe.ends.tolist(), strict=True))
    same_offsets = [tuple(o) for o in reference.encodings[0].offsets] == offsets
    return encoder if probe.ids.tolist() == reference["input_ids"] and same_offsets else None


def _tekken_vocab(folder: Path) -> RankedVocab | None:
    """mistral-common's Tekken vocabulary, from the compact copy beside the built folder (written on first use)."""
    from dsprep.fast_bpe import RankedVocab

    return _kept_vocab(_beside(folder, TEKKEN_VOCAB), lambda: RankedVocab.read(_mistral_data() / TEKKEN_FILE))


def _ranked_vocab(folder: Path, stem: Path | None = None) -> RankedVocab | None:
    """The rank table of a folder's ``tokenizer.json`` (None where it is not one), worked out once per file content
    and dsprep version and kept in ``$DSPREP_CACHE/tokenizers/ranked/`` (`stem`: `_ranked_stem`, when known)."""
    import orjson

    from dsprep.fast_bpe import RankedVocab

    stem = stem or _ranked_stem(folder)
    if stem is None:
        return None

    def work_out() -> RankedVocab | None:
        try:
            return RankedVocab.from_tokenizer_json(orjson.loads((folder / "tokenizer.json").read_bytes()))
        except (OSError, orjson.JSONDecodeError):
            return None

    return _kept_vocab(stem.with_suffix(".vocab"), work_out)


def _tekken_ranks(folder: Path) -> Path:
    """Where the rank file of mistral-common's Tekken vocabulary is kept (`dsprep.ordinary`)."""
    return _beside(folder, TEKKEN_RANKS)


def _ranked_stem(folder: Path) -> Path | None:
    """Where the files worked out from a folder's ``tokenizer.json`` are kept (less their suffix), by its content and
    dsprep's version; None where it cannot be read."""
    from dsprep.version import __version__

    try:
        data = (folder / "tokenizer.json").read_bytes()
    except OSError:
        return None
    key = hashlib.sha256(data + f"\0dsprep {__version__}".encode()).hexdigest()
    return cache_dir() / "tokenizers" / "ranked" / key


def _kept_vocab(kept: Path, work_out: Callable[[], RankedVocab | None]) -> RankedVocab | None:
    """The vocabulary kept at `kept` (an empty file: there is none), else `work_out()`'s, then kept there."""
    from dsprep.fast_bpe import RankedVocab

    try:
        stored = kept.read_bytes()
        return RankedVocab.load(stored) if stored else None
    except (OSError, ValueError, KeyError, TypeError):
        pass
    vocab = work_out()
    write_atomic(kept, vocab.dump() if vocab is not None else b"")
    return vocab


def _tokenizer_class(transformers: Any, path: Path) -> Any:
    """The class that loads the folder: a plain fast tokenizer directly (so torch, which the auto classes import, is
    never loaded), anything else through `AutoTokenizer`."""
    try:
        declared = json.loads((path / "tokenizer_config.json").read_text(encoding="utf-8")).get("tokenizer_class")
    except (OSError, ValueError, AttributeError):
        declared = None
    if declared in PLAIN_FAST and (path / "tokenizer.json").is_file():
        return transformers.TokenizersBackend
    return transformers.AutoTokenizer


CONFIG_FILES = ("tokenizer_config.json", "special_tokens_map.json")  # small JSON objects, checked before loading
MODEL_FILES = ("tokenizer.json", "vocab.json", "vocab.txt", "*.model")  # one of them is needed


def _check_json_object(file: Path) -> None:
    """Raise a one-line `TokenizerError` naming `file` where it is not a readable JSON object."""
    try:
        value = json.loads(file.read_bytes())
    except OSError as exc:
        raise TokenizerError(f"{file}: cannot read: {exc.strerror or exc}") from None
    except ValueError as exc:  # invalid JSON or UTF-8
        raise TokenizerError(f"{file}: not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise TokenizerError(f"{file}: expected a JSON object, got {type(value).__name__}")


def check_tokenizer_folder(path: Path) -> None:
    """Raise a one-line `TokenizerError` naming what a local tokenizer folder lacks: a tokenizer file, or config
    files that are JSON objects (what `transformers` would report at length, or as an unrelated error)."""
    for name in CONFIG_FILES:
        if (path / name).is_file():
            _check_json_object(path / name)
    if not any(p.is_file() for pattern in MODEL_FILES for p in path.glob(pattern)):
        present = ", ".join(sorted(p.name for p in path.iterdir())[:5]) or "nothing"
        expected = f"{', '.join(MODEL_FILES[:-1])} or {MODEL_FILES[-1]}"
        raise TokenizerError(f"{path}: not a tokenizer folder: no {expected} (it holds {present})")


def _load_hf(name_or_path: str, path: Path) -> Any:
    local = name_or_path not in BUILTIN
    if local:
        check_tokenizer_folder(path)
    transformers = _quiet_transformers()
    try:
        tok = _tokenizer_class(transformers, path).from_pretrained(str(path), local_files_only=True)
    except Exception as exc:
        if local and (path / "tokenizer.json").is_file():
            _check_json_object(path / "tokenizer.json")  # names the file where that is what failed
        first = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
        raise TokenizerError(f"{name_or_path}: cannot load tokenizer: {type(exc).__name__}: {first}") from None
    if name_or_path == "mistral:v3":  # the shipped template may be newer than the cached build
        from dsprep.templates import load_template

        tok.chat_template = load_template("mistral_v3").text
    if not getattr(tok, "is_fast", False):
        raise TokenizerError(f"{name_or_path}: dsprep needs a fast tokenizer (tokenizer.json) for character offsets")
    return tok


@functools.lru_cache(maxsize=8)
def load_tokenizer(name_or_path: str = DEFAULT_TOKENIZER) -> LoadedTokenizer:
    """Load a built-in (``mistral:tekken``, ``mistral:v3``) or a local tokenizer folder, offline.

    ``mistral:tekken`` is taken from its stored facts where they are (`TokenizerFacts`, written the first time its
    fast encoder is verified), without loading the Hugging Face tokenizer.
    """
    path = tokenizer_folder(name_or_path)
    if name_or_path != "mistral:tekken":
        return LoadedTokenizer(name_or_path, path, tokenizer=_load_hf(name_or_path, path))
    stored = _stored_facts(path)
    if stored is not None:
        return LoadedTokenizer(name_or_path, path, stored=stored)
    loaded = LoadedTokenizer(name_or_path, path, tokenizer=_load_hf(name_or_path, path))
    if loaded.fast is not None and loaded.fast.with_specials:
        _store_facts(path, loaded.facts)
    return loaded


def _beside(folder: Path, name: str) -> Path:
    """A file dsprep keeps of a built-in tokenizer folder: beside it, since the folder's files make cache keys."""
    return folder.with_name(folder.name + ".dsprep") / name


def read_beside(folder: Path, name: str) -> Any:
    """A JSON file kept beside a built-in tokenizer folder, or None where there is none or it cannot be read."""
    try:
        return json.loads(_beside(folder, name).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def write_beside(folder: Path, name: str, value: Any) -> None:
    """Keep `value` as JSON beside a built-in tokenizer folder, atomically; where it cannot be written, nothing is
    kept (the next run works it out again)."""
    write_atomic(_beside(folder, name), json.dumps(value, indent=1).encode())


def write_atomic(target: Path, data: bytes) -> bool:
    """Write a file under a temporary name and rename it; where it cannot be written, nothing is kept (False)."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, target)
    except OSError:
        return False
    return True


def _versions() -> dict[str, str]:
    """What a stored fast-encoder verification depends on besides the folder (whose name holds the rest)."""
    from dsprep.ordinary import engine_versions
    from dsprep.version import __version__

    return {"dsprep": __version__, **engine_versions()}


def _stored_facts(folder: Path) -> TokenizerFacts | None:
    stored = read_beside(folder, FACTS)
    if not isinstance(stored, dict) or stored.get("versions") != _versions():
        return None
    try:
        return TokenizerFacts(**stored["facts"])
    except (TypeError, KeyError):
        return None


def _store_facts(folder: Path, facts: TokenizerFacts) -> None:
    write_beside(folder, FACTS, {"versions": _versions(), "facts": asdict(facts)})
