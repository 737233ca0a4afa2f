"""A dsprep output's manifest, read and checked for the form dsprep writes (`read_manifest`): each value of the type
it must have, shards named as dsprep names them and each listed once, a tokenizer fingerprint where there are tokens,
the schema version this dsprep reads. `dsprep verify` checks it against the shards; inspect and the trainer
integrations read manifests through it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import orjson

from dsprep.errors import VerifyError
from dsprep.schema import NORMALIZED, PACKED, SCHEMA_VERSION, TOKENIZED
from dsprep.shards import MANIFEST, REJECTS, SHARD_NAME, SPLIT_FOLDERS

__all__ = ["SCHEMAS", "read_manifest", "shard_paths", "shown"]

SCHEMAS = {"normalized": NORMALIZED, "tokenized": TOKENIZED, "packed": PACKED}
SHA256 = re.compile(r"[0-9a-f]{64}")
_ABSENT = object()

# what a manifest value must be: its description in a message, and the test
_KINDS: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "object": ("an object", lambda v: isinstance(v, dict)),
    "list": ("a list", lambda v: isinstance(v, list)),
    "text": ("a string", lambda v: isinstance(v, str)),
    "fingerprint": ("a tokenizer fingerprint (a non-empty string)", lambda v: isinstance(v, str) and v != ""),
    "count": ("a whole number >= 0", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0),
    "length": ("a whole number >= 1", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1),
    "number": ("a number", lambda v: isinstance(v, int | float) and not isinstance(v, bool)),
    "sha256": ("a sha256 (64 hex digits)", lambda v: isinstance(v, str) and SHA256.fullmatch(v) is not None),
}


def shown(value: Any) -> str:
    """A manifest value as a message shows it: its JSON, cut to 200 characters; `nothing` when absent."""
    if value is _ABSENT:
        return "nothing"
    text = orjson.dumps(value).decode()
    return text if len(text) <= 200 else text[:199] + "…"


class _Form:
    """Checks one manifest's values against the form dsprep writes; each failure names the field
    (`shards[2].sha256`), what it must be and what it is."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, field: str, expected: str, value: Any = _ABSENT) -> NoReturn:
        raise VerifyError(f"{self.path}: {field}: expected {expected}, got {shown(value)}")

    def get(self, parent: dict[str, Any], key: str, where: str, kind: str, *, optional: bool = False) -> Any:
        """`parent[key]` if it is of `kind` (`_KINDS`); `optional`: absent or null is allowed too (gives None)."""
        field = f"{where}.{key}" if where else key
        value = parent.get(key, _ABSENT)
        if optional and (value is _ABSENT or value is None):
            return None
        expected, test = _KINDS[kind]
        if value is _ABSENT or not test(value):
            self.fail(field, expected, value)
        return value

    def items(self, parent: dict[str, Any], key: str) -> list[tuple[str, dict[str, Any]]]:
        """The elements of the list `parent[key]`, each an object, with its field name (`shards[2]`)."""
        out = []
        for i, item in enumerate(self.get(parent, key, "", "list")):
            if not isinstance(item, dict):
                self.fail(f"{key}[{i}]", "an object", item)
            out.append((f"{key}[{i}]", item))
        return out


def read_manifest(folder: Path) -> dict[str, Any]:
    """An output folder's manifest, read and checked for its form (`_check_form`; not against the shards);
    VerifyError if absent or malformed. Whatever reads a manifest's values reads them through this."""
    path = folder / MANIFEST
    if not folder.is_dir():
        raise VerifyError(f"{folder}: {'a file' if folder.exists() else 'no such folder'}, not a dsprep output folder")
    if not path.is_file():
        raise VerifyError(f"{folder}: no {MANIFEST}; not a complete dsprep output (a run may have stopped early)")
    try:
        manifest = orjson.loads(path.read_bytes())
    except orjson.JSONDecodeError as exc:
        raise VerifyError(f"{path}: not valid JSON ({exc})") from None
    except OSError as exc:
        raise VerifyError(f"{path}: cannot be read ({exc.strerror})") from None
    if not isinstance(manifest, dict) or "stage" not in manifest:
        raise VerifyError(f"{path}: not a dsprep manifest (expected an object with a stage, got {shown(manifest)})")
    _check_form(_Form(path), manifest)
    return manifest


def _check_form(form: _Form, m: dict[str, Any]) -> None:
    """Every value of a manifest that dsprep reads (verify, inspect, the trainer integrations) has the type dsprep
    writes it with; shard files are plain `part-NNNNN.parquet` names, each listed once; a recipe's splits are its
    split folders (`train`, `eval`), at least one."""
    version = m.get("schema_version", _ABSENT)
    if type(version) is not int or version != SCHEMA_VERSION:
        form.fail("schema_version", f"{SCHEMA_VERSION} (the schema version this dsprep reads)", version)
    stage = m["stage"]
    if stage not in (*SCHEMAS, "recipe"):
        form.fail("stage", f"one of {', '.join(SCHEMAS)}, recipe", stage)
    rejects = form.get(m, "rejects", "", "object")
    if rejects.get("file") != REJECTS:
        form.fail("rejects.file", f'"{REJECTS}"', rejects.get("file", _ABSENT))
    form.get(rejects, "rows", "rejects", "count")
    form.get(rejects, "sha256", "rejects", "sha256")
    if stage == "recipe":
        _check_recipe_form(form, m)
        return
    seen: dict[str, str] = {}
    for where, shard in form.items(m, "shards"):
        file = form.get(shard, "file", where, "text")
        if not SHARD_NAME.fullmatch(file):
            form.fail(f"{where}.file", "a shard file name in the output folder (part-NNNNN.parquet)", file)
        if file in seen:
            raise VerifyError(f"{form.path}: {where}.file: {file} is listed twice (also as {seen[file]})")
        seen[file] = where
        form.get(shard, "rows", where, "count")
        form.get(shard, "sha256", where, "sha256")
        form.get(shard, "bytes", where, "count", optional=True)
    tokenizer = form.get(m, "tokenizer", "", "object", optional=stage == "normalized")
    if tokenizer is not None:
        form.get(tokenizer, "fingerprint", "tokenizer", "fingerprint", optional=stage == "normalized")
        form.get(tokenizer, "name", "tokenizer", "text", optional=True)
        form.get(tokenizer, "vocab_size", "tokenizer", "length", optional=True)
    packing = form.get(m, "packing", "", "object", optional=stage != "packed")
    if packing is not None:
        form.get(packing, "max_len", "packing", "length")
        form.get(packing, "rows", "packing", "count")
        form.get(packing, "tokens", "packing", "count")
        form.get(packing, "efficiency", "packing", "number")
        for key in ("slots", "lower_bound", "rows_above_bound", "examples_per_row_min", "examples_per_row_max"):
            form.get(packing, key, "packing", "number" if key == "rows_above_bound" else "count")
        form.get(packing, "examples_per_row_mean", "packing", "number")
    if "options" in m:  # read as `manifest.get("options", {})`: absent, or an object
        form.get(form.get(m, "options", "", "object"), "max_len", "options", "length", optional=True)
    if (template := form.get(m, "template", "", "object", optional=True)) is not None:
        form.get(template, "name", "template", "text", optional=True)
    form.get(form.get(m, "totals", "", "object"), "rows_kept", "totals", "count")
    if "inputs" in m:
        for where, item in form.items(m, "inputs"):
            form.get(item, "rows_kept", where, "count")


def _check_recipe_form(form: _Form, m: dict[str, Any]) -> None:
    splits = form.get(m, "splits", "", "object")
    if not splits:
        form.fail("splits", f"at least one split ({', '.join(SPLIT_FOLDERS)})", splits)
    for name, split in splits.items():
        if name not in SPLIT_FOLDERS:
            form.fail("splits", f"only the splits {', '.join(SPLIT_FOLDERS)}", name)
        if not isinstance(split, dict):
            form.fail(f"splits.{name}", "an object", split)
        if split.get("path") != name:
            form.fail(
                f"splits.{name}.path", f'"{name}" (the split\'s folder in this output)', split.get("path", _ABSENT)
            )
        form.get(split, "rows", f"splits.{name}", "count")
        form.get(split, "examples", f"splits.{name}", "count")
        form.get(split, "manifest_sha256", f"splits.{name}", "sha256")
    for where, source in form.items(m, "sources"):
        form.get(source, "name", where, "text")
        form.get(source, "rows_read", where, "count")
        form.get(source, "rows_rejected", where, "count")
        for name in splits:
            stats = form.get(source, name, where, "object")
            for key in ("examples", "tokens", "trained_tokens"):
                form.get(stats, key, f"{where}.{name}", "count")


def shard_paths(folder: Path, manifest: dict[str, Any]) -> list[Path]:
    """The shard files a checked manifest (`read_manifest`) of a non-recipe output lists, in order."""
    return [Path(folder) / s["file"] for s in manifest["shards"]]
