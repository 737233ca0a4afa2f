"""Content-addressed cache of finished outputs: the same inputs, specs, template, tokenizer and options reuse a result.

The key is the sha256 of its components: each input's path and content sha256, the format spec text (every shipped
spec for ``--format auto``), the tokenizer's files, the template text, every option that shapes the output
(`ConvertConfig.options`), the schema version and dsprep's version. An entry is the output's files (hard links where
the file system allows, else copies) and ``cache.json`` with the components and each file's size and mtime; an entry
whose files changed since is dropped, never served. The same key names a run's staging folder, so a rerun resumes
only its own pieces (`dsprep.pieces`).

The cache is bounded: after each store, the least recently used entries (a hit counts as a use) are evicted until
the bytes held by the cache alone fit its limit. A file still linked from an output folder costs the cache nothing
and counts as nothing; it starts to count once that output is deleted or overwritten.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from dsprep.config import ConvertConfig
from dsprep.schema import SCHEMA_VERSION
from dsprep.shards import MANIFEST, file_sha256
from dsprep.sources import InputFile
from dsprep.version import __version__

__all__ = [
    "Evicted", "OutputCache", "cache_key", "changes", "components", "default_cache_dir", "describe", "link_or_copy",
    "size_text",
]  # fmt: skip

ENTRY = "cache.json"
WEIGHTS = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".h5", ".msgpack", ".onnx")


def default_cache_dir() -> Path:
    """``$DSPREP_CACHE/outputs`` (default ``~/.cache/dsprep/outputs``)."""
    from dsprep.tokenizers import cache_dir

    return cache_dir() / "outputs"


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _format(config: ConvertConfig) -> str:
    from dsprep.specs import load_spec, shipped_spec_names

    if config.format != "auto":
        return load_spec(config.format).sha256
    return _sha(",".join(load_spec(name).sha256 for name in shipped_spec_names()))


def _tokenizer(config: ConvertConfig) -> str | None:
    if config.tokenizer is None:
        return None
    from dsprep.tokenizers import tokenizer_folder

    folder = tokenizer_folder(config.tokenizer)
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file() and not p.name.endswith(WEIGHTS):
            h.update(f"{p.relative_to(folder)}\0{file_sha256(p)}\0".encode())
    return h.hexdigest()


def _template(config: ConvertConfig) -> str | None:
    if config.tokenizer is None:
        return None
    from dsprep.templates import load_template

    if config.template != "tokenizer":
        return load_template(config.template).sha256
    if config.tokenizer == "mistral:v3":  # its template is the shipped one, set at load time
        return load_template("mistral_v3").sha256
    return "the tokenizer's own (in its files)"


def components(config: ConvertConfig, files: Sequence[InputFile], digests: Sequence[str]) -> dict[str, Any]:
    """What the key covers, by component."""
    return {
        "inputs": [{"path": f.display, "sha256": d} for f, d in zip(files, digests, strict=True)],
        "format": _format(config),
        "tokenizer": _tokenizer(config),
        "template": _template(config),
        "options": config.options(),
        "schema_version": SCHEMA_VERSION,
        "dsprep_version": __version__,
    }


def cache_key(parts: dict[str, Any]) -> str:
    """The sha256 of the components."""
    return hashlib.sha256(orjson.dumps(parts, option=orjson.OPT_SORT_KEYS)).hexdigest()


def describe(parts: dict[str, Any]) -> list[str]:
    """One line per component, for ``--explain-cache``."""
    lines = [f"input {i['path']}: sha256 {i['sha256'][:16]}" for i in parts["inputs"]]
    for name in ("format", "tokenizer", "template"):
        value = parts[name]
        lines.append(f"{name}: {value[:16] if value and len(value) == 64 else value}")
    lines.append("options: " + ", ".join(f"{k}={v}" for k, v in sorted(parts["options"].items())))
    lines.append(f"schema version {parts['schema_version']}, dsprep {parts['dsprep_version']}")
    return lines


def changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Which components differ between two keys' components, named (an input by path, an option by name)."""
    out: list[str] = []
    old_inputs = {i["path"]: i["sha256"] for i in old["inputs"]}
    new_inputs = {i["path"]: i["sha256"] for i in new["inputs"]}
    if list(old_inputs) != list(new_inputs):
        out.append(f"inputs ({', '.join(old_inputs)} -> {', '.join(new_inputs)})")
    else:
        out.extend(f"input {p}" for p, sha in new_inputs.items() if old_inputs[p] != sha)
    out.extend(name for name in ("format", "tokenizer", "template") if old.get(name) != new.get(name))
    options = sorted(set(old["options"]) | set(new["options"]))
    for k in options:
        if old["options"].get(k) != new["options"].get(k):
            out.append(f"option {k} ({old['options'].get(k)} -> {new['options'].get(k)})")
    out.extend(name for name in ("schema_version", "dsprep_version") if old.get(name) != new.get(name))
    return out


def _stat(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns]


def link_or_copy(src: Path, dst: Path) -> None:
    """A hard link of `src` at `dst`, or a copy where the file system has none."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


@dataclass(frozen=True)
class Evicted:
    """Entries `prune` removed and the bytes that freed."""

    entries: int
    bytes: int


def size_text(n: float) -> str:
    """Bytes in binary units: '512 B', '3.4 MiB', '50.0 GiB'."""
    units = ("B", "KiB", "MiB", "GiB")
    step = 0
    while n >= 1024 and step < len(units) - 1:
        n /= 1024
        step += 1
    return f"{n:.0f} B" if step == 0 else f"{n:.1f} {units[step]}"


class OutputCache:
    """Finished outputs by key in `folder`, at most `max_bytes` of them held by the cache alone (see the module doc)."""

    def __init__(self, folder: Path, max_bytes: int | None = None) -> None:
        self.folder = folder
        self.max_bytes = max_bytes

    def lookup(self, key: str) -> list[Path] | None:
        """The entry's files (manifest last) if it holds `key` unchanged, else None (a changed or malformed entry is
        dropped)."""
        entry = self.folder / key
        if not (entry / ENTRY).is_file():
            return None
        meta = _read_entry(entry / ENTRY)
        if meta is None:
            shutil.rmtree(entry, ignore_errors=True)
            return None
        files = [entry / name for name in meta["files"]]
        try:
            intact = all(_stat(p) == meta["files"][p.name] for p in files)
        except OSError:
            intact = False
        if not intact:
            shutil.rmtree(entry, ignore_errors=True)
            return None
        with contextlib.suppress(OSError):
            os.utime(entry / ENTRY)  # its last use: entries leave least recently used first
        return files

    def _entries(self) -> Iterator[dict[str, Any]]:
        """Every readable, well-formed entry's metadata."""
        for meta_path in self.folder.glob(f"*/{ENTRY}"):
            meta = _read_entry(meta_path)
            if meta is not None:
                yield meta

    def may_hold(self, paths: list[str]) -> bool:
        """Whether an entry was made from inputs at these paths (a key covers them: without one, no lookup hits)."""
        return any([i["path"] for i in meta["components"]["inputs"]] == paths for meta in self._entries())

    def newest(self, paths: list[str]) -> dict[str, Any] | None:
        """The components of the newest entry made from inputs at the same paths (any entry if none is)."""
        best_rank: tuple[bool, float] | None = None
        best: dict[str, Any] | None = None
        for meta in self._entries():
            rank = ([i["path"] for i in meta["components"]["inputs"]] == paths, meta["created"])
            if best_rank is None or rank > best_rank:
                best_rank, best = rank, meta["components"]
        return best

    def store(self, key: str, parts: dict[str, Any], out: Path, names: Sequence[str]) -> None:
        """Add the files `names` of the finished output folder `out` under `key` (atomically; a no-op if present).

        Raises OSError where the cache folder cannot take them (it then holds nothing of this entry).
        """
        entry = self.folder / key
        if (entry / ENTRY).is_file():
            return
        tmp = self.folder / f".{key}.{os.getpid()}.tmp"
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            for name in names:
                link_or_copy(out / name, tmp / name)
            files = {name: _stat(tmp / name) for name in names}
            meta = {"key": key, "created": time.time(), "components": parts, "files": files}
            (tmp / ENTRY).write_bytes(orjson.dumps(meta, option=orjson.OPT_INDENT_2))
            shutil.rmtree(entry, ignore_errors=True)
            os.replace(tmp, entry)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def prune(self, keep: str) -> Evicted:
        """Evict the least recently used entries, never `keep`, until the bytes only the cache holds fit `max_bytes`."""
        if self.max_bytes is None:
            return Evicted(0, 0)
        entries: list[tuple[float, Path, int]] = []
        for meta_path in self.folder.glob(f"*/{ENTRY}"):
            with contextlib.suppress(OSError):
                entries.append((meta_path.stat().st_mtime, meta_path.parent, _own_bytes(meta_path.parent)))
        total = sum(size for _, _, size in entries)
        evicted = Evicted(0, 0)
        for _, entry, size in sorted(entries, key=lambda e: (e[0], e[1].name)):
            if total <= self.max_bytes:
                break
            if entry.name == keep or not size:
                continue
            shutil.rmtree(entry, ignore_errors=True)
            total -= size
            evicted = Evicted(evicted.entries + 1, evicted.bytes + size)
        return evicted


def _read_entry(path: Path) -> dict[str, Any] | None:
    """An entry's ``cache.json`` as `OutputCache.store` writes it, or None where it cannot be read or has another
    shape (an entry of another layout, or edited by hand, is never served)."""
    try:
        meta = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    if not isinstance(meta, dict):
        return None
    files, components, created = meta.get("files"), meta.get("components"), meta.get("created")
    if not isinstance(files, dict) or MANIFEST not in files or not isinstance(created, (int, float)):
        return None
    for name, stat in files.items():
        if Path(name).name != name or name in (".", "..", ENTRY):
            return None
        if not (isinstance(stat, list) and len(stat) == 2 and all(type(v) is int for v in stat)):
            return None
    inputs = components.get("inputs") if isinstance(components, dict) else None
    if not isinstance(inputs, list) or not all(isinstance(i, dict) and isinstance(i.get("path"), str) for i in inputs):
        return None
    return meta


def _own_bytes(entry: Path) -> int:
    """The bytes of an entry's output files that no other folder links to (what evicting it frees; its small
    ``cache.json`` aside)."""
    total = 0
    for path in entry.iterdir():
        if path.name == ENTRY:
            continue
        with contextlib.suppress(OSError):
            st = path.stat()
            total += st.st_size if st.st_nlink == 1 else 0
    return total
