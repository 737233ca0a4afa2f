"""`dsprep verify`: prove an output folder is exactly what its manifest says, before anything trains on it.

Checks: the manifest parses and has the form dsprep writes (`dsprep.manifest_form`); every shard it lists exists with
its sha256 and row count, and no other shard is present; the rejects file has its recorded sha256 and rows; each shard
has the schema of its stage and its rows keep their stage's invariants (`dsprep.shard_invariants`); the counts the
shards determine are the manifest's (packed rows and tokens, the rest of the packing report, rows kept), and `packing`
agrees with `options`; a tokenizer fingerprint is recorded, and matches the tokenizer given, as does its vocabulary
size. An output that holds no row is refused where a trainer is to read it. A recipe output is verified split by
split, each split's manifest against the checksum the recipe manifest records, and each split's rows and examples
against its manifest; its train split must hold a row.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any, NoReturn

from dsprep.errors import VerifyError
from dsprep.manifest_form import SCHEMAS, read_manifest, shard_paths, shown
from dsprep.manifest_form import SHA256 as SHA256  # still importable from here, as before the split
from dsprep.shard_invariants import ShardCounts, verify_shard
from dsprep.shards import MANIFEST, REJECTS, SPLIT_FOLDERS, file_sha256

__all__ = ["check_fingerprint", "read_manifest", "shard_paths", "verify_output"]


def verify_output(folder: Path, *, tokenizer: str | None = None, tokens_required: bool = True) -> dict[str, Any]:
    """Verify `folder` against its manifest; returns the manifest, or raises VerifyError naming the problem.

    `tokens_required` (the default) is for a caller that trains on the output: an output that holds no row (a
    recipe's: no train row) is refused, and with `tokenizer` so are normalized ones (which hold no tokens); inspect,
    which reports what an output holds, passes False. With `tokenizer`, tokenized shards must have been made with it.
    """
    folder = Path(folder)
    manifest = read_manifest(folder)
    if manifest["stage"] == "recipe":
        return _verify_recipe(folder, manifest, tokenizer, tokens_required)
    return _verify_shards(folder, manifest, tokenizer, tokens_required, rows_required=tokens_required)


def _verify_shards(
    folder: Path, manifest: dict[str, Any], tokenizer: str | None, tokens_required: bool, *, rows_required: bool
) -> dict[str, Any]:
    """A non-recipe output: its shards, its rejects file and its tokenizer fingerprint; with `rows_required`, a row
    at least."""
    stage = manifest["stage"]
    listed = {s["file"] for s in manifest["shards"]}
    for extra in sorted(p.name for p in folder.glob("part-*.parquet") if p.name not in listed):
        raise VerifyError(f"{folder / extra}: shard not listed in the manifest")
    max_len = int(manifest["packing"]["max_len"]) if stage == "packed" else None
    vocab = (manifest.get("tokenizer") or {}).get("vocab_size")
    total = ShardCounts(0)
    for shard, path in zip(manifest["shards"], shard_paths(folder, manifest), strict=True):
        if not path.is_file():
            raise VerifyError(f"{path}: shard listed in the manifest is missing")
        if file_sha256(path) != shard["sha256"]:
            raise VerifyError(
                f"{path}: checksum mismatch (sha256 differs from the manifest): the shard was changed or damaged"
            )
        counts = verify_shard(path, SCHEMAS[stage], stage, max_len, vocab)
        if counts.rows != shard["rows"]:
            raise VerifyError(f"{path}: {counts.rows} rows, the manifest says {shard['rows']}")
        total = total.plus(counts)
    _verify_counts(folder / MANIFEST, manifest, total)
    _verify_rejects(folder, manifest["rejects"])
    if rows_required and not total.rows:
        rejected = manifest["rejects"]["rows"]
        why = f": see {folder / REJECTS} for each row's reason" if rejected else ""
        raise VerifyError(f"{folder}: holds no rows a trainer can use (0 rows kept, {rejected} rejected{why})")
    if tokenizer is not None:
        if stage == "normalized":
            if not tokens_required:
                return manifest
            raise VerifyError(
                f"{folder}: normalized output, made without a tokenizer: it holds no tokens to match {tokenizer}"
            )
        from dsprep.tokenizers import load_tokenizer

        facts = load_tokenizer(tokenizer).facts
        check_fingerprint(manifest, facts.fingerprint, tokenizer)
        if vocab is not None and vocab != facts.vocab_size:
            raise VerifyError(
                f"{folder / MANIFEST}: tokenizer.vocab_size: {vocab} in the manifest, {tokenizer} has "
                f"{facts.vocab_size} tokens"
            )
    return manifest


def _verify_counts(path: Path, manifest: dict[str, Any], total: ShardCounts) -> None:
    """The manifest's counts that the shards determine are theirs: packed, `packing.rows` and `packing.tokens`;
    `totals.rows_kept` is the examples the shards hold (at most that with `overflow: split`, which cuts a kept text
    row into several), and the sum of `inputs[].rows_kept`."""

    def differs(field: str, recorded: int, held: int, what: str) -> NoReturn:
        raise VerifyError(f"{path}: {field}: {recorded} in the manifest, the shards hold {held} {what}")

    if (packing := manifest.get("packing")) is not None:
        if packing["rows"] != total.rows:
            differs("packing.rows", packing["rows"], total.rows, "rows")
        if packing["tokens"] != total.tokens:
            differs("packing.tokens", packing["tokens"], total.tokens, "tokens")
        _verify_packing(path, packing, manifest.get("options", {}), total)
    kept = manifest["totals"]["rows_kept"]
    split = manifest.get("options", {}).get("overflow") == "split"
    if kept != total.examples and not (split and 0 < kept < total.examples):
        differs("totals.rows_kept", kept, total.examples, "examples")
    if "inputs" in manifest and (inputs := sum(i["rows_kept"] for i in manifest["inputs"])) != kept:
        raise VerifyError(f"{path}: inputs[].rows_kept: add up to {inputs}, totals.rows_kept is {kept}")


def _verify_packing(path: Path, packing: dict[str, Any], options: dict[str, Any], total: ShardCounts) -> None:
    """The rest of the packing report is what `dsprep.pack.PackReport` makes of the shards' rows, tokens and examples
    at `packing.max_len`, which (with `shuffle_seed`) is the run's `options.pack`."""
    max_len = packing["max_len"]
    for key, option in (("max_len", "pack"), ("shuffle_seed", "shuffle_seed")):
        if option in options and key in packing and options[option] != packing[key]:
            raise VerifyError(
                f"{path}: packing.{key}: {shown(packing[key])} in the manifest, options.{option} is "
                f"{shown(options[option])}"
            )
    rows, tokens = total.rows, total.tokens
    bound = -(-tokens // max_len)
    expected: list[tuple[str, float, str]] = [
        ("slots", rows * max_len, f"{rows} rows of {max_len}"),
        ("efficiency", tokens / (rows * max_len) if rows else 1.0, f"{tokens} tokens in {rows * max_len} slots"),
        ("lower_bound", bound, f"{tokens} tokens in rows of {max_len}"),
        ("rows_above_bound", rows - bound, f"{rows} rows, at least {bound}"),
        ("examples_per_row_min", total.fewest, "the fewest examples in a row"),
        ("examples_per_row_mean", total.examples / rows if rows else 0.0, f"{total.examples} examples in {rows} rows"),
        ("examples_per_row_max", total.most, "the most examples in a row"),
    ]
    for key, value, why in expected:
        if packing[key] != value if isinstance(value, int) else not math.isclose(packing[key], value, rel_tol=1e-12):
            raise VerifyError(f"{path}: packing.{key}: {packing[key]} in the manifest, expected {value} ({why})")


def _verify_rejects(folder: Path, rejects: dict[str, Any]) -> None:
    """The rejects file has the sha256 and the number of lines (one per rejected row) the manifest records."""
    path = folder / REJECTS
    h, lines = hashlib.sha256(), 0
    try:
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
                lines += chunk.count(b"\n")
    except FileNotFoundError:
        raise VerifyError(f"{path}: missing; the manifest records {rejects['rows']} rejected rows there") from None
    except OSError as exc:
        raise VerifyError(f"{path}: cannot be read ({exc.strerror})") from None
    if h.hexdigest() != rejects["sha256"]:
        raise VerifyError(f"{path}: checksum mismatch (sha256 differs from the manifest): the file was changed")
    if lines != rejects["rows"]:
        raise VerifyError(f"{path}: {lines} rejected rows, the manifest says {rejects['rows']}")


def _verify_recipe(
    folder: Path, manifest: dict[str, Any], tokenizer: str | None, tokens_required: bool
) -> dict[str, Any]:
    """A recipe output: its rejects file, no split folder left out of the manifest, and each split folder's manifest
    as recorded, and each split in full; with `tokens_required`, a train row at least (eval may be empty)."""
    _verify_rejects(folder, manifest["rejects"])
    for extra in (name for name in SPLIT_FOLDERS if name not in manifest["splits"] and (folder / name).exists()):
        raise VerifyError(f"{folder / extra}: split folder not listed in the manifest")
    for name, split in manifest["splits"].items():
        sub = folder / split["path"]
        if not (sub / MANIFEST).is_file() or file_sha256(sub / MANIFEST) != split["manifest_sha256"]:
            raise VerifyError(f"{sub / MANIFEST}: missing, or not the {name} manifest the recipe manifest records")
        split_manifest = read_manifest(sub)
        if split_manifest["stage"] == "recipe":
            raise VerifyError(f"{sub / MANIFEST}: a recipe manifest, not the manifest of a split's shards")
        _verify_shards(sub, split_manifest, tokenizer, tokens_required, rows_required=False)
        held = (
            ("rows", sum(s["rows"] for s in split_manifest["shards"]), "rows"),
            ("examples", split_manifest["totals"]["rows_kept"], "examples kept"),
        )
        for key, count, what in held:
            if split[key] != count:
                raise VerifyError(
                    f"{folder / MANIFEST}: splits.{name}.{key}: {split[key]} in the manifest, the split holds {count} "
                    f"{what}"
                )
    if tokens_required and not manifest["splits"].get("train", {}).get("rows"):
        raise VerifyError(
            f"{folder}: holds no rows a trainer can use (its train split kept no row: see {folder / REJECTS} for each "
            "row's reason)"
        )
    return manifest


def check_fingerprint(manifest: dict[str, Any], fingerprint: str, name: str) -> None:
    """Raise VerifyError unless the manifest's tokenizer fingerprint equals `fingerprint`."""
    recorded = manifest.get("tokenizer") or {}
    if recorded.get("fingerprint") != fingerprint:
        raise VerifyError(
            f"tokenizer mismatch: the shards were tokenized with {recorded.get('name')!r} "
            f"(fingerprint {str(recorded.get('fingerprint'))[:12]}…), "
            f"but {name!r} has fingerprint {fingerprint[:12]}…; "
            "re-run dsprep convert with this tokenizer"
        )
