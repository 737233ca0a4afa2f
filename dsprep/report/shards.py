"""Inspect a dsprep output folder: verify it fully (`dsprep.verify.verify_output`), then summarize its manifest and
its token columns. A failed verification raises `VerifyError` (exit code 8), never a partial report.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from dsprep.report.stats import histogram, summary
from dsprep.report.tokens import SHOW_TOKENS, example_pieces
from dsprep.sources import printable
from dsprep.verify import read_manifest, shard_paths, verify_output

__all__ = ["COUNTS", "inspect_output", "inspect_shards", "is_output_folder", "output_counts"]

COUNTS = ("rows_read", "rows_kept", "rows_rejected")


def is_output_folder(path: Path) -> bool:
    """Whether `path` is a dsprep output folder (it holds a manifest.json)."""
    return path.is_dir() and (path / "manifest.json").is_file()


def _tokenizer(name: str | None) -> Any:
    if not name:
        return None
    from dsprep.errors import TokenizerError
    from dsprep.tokenizers import load_tokenizer

    try:
        return load_tokenizer(name).tokenizer
    except TokenizerError:
        return None


def _trained_per_row(labels: pa.ListArray) -> np.ndarray:
    """How many labels of each row are trained (not -100); empty or null label lists train nothing."""
    flags = pc.not_equal(labels.flatten(), -100).cast("int64").to_numpy(zero_copy_only=False)
    offsets = labels.offsets.to_numpy()
    flags = np.append(flags, 0)  # rows after the last label (preference/KTO: none) start at len(flags)
    sums = np.add.reduceat(flags, offsets[:-1])
    return np.where(np.diff(offsets) > 0, sums, 0)


def _token_columns(folder: Path, manifest: dict[str, Any], tok: Any, show: int) -> dict[str, Any]:
    """Length and trained-token statistics of every row, read row group by row group and only the columns they
    need; the first `show` rows rendered as examples."""
    lengths: list[np.ndarray] = []
    trained: list[np.ndarray] = []
    examples: list[Any] = []
    for shard, path in zip(manifest["shards"], shard_paths(folder, manifest), strict=True):
        with pq.ParquetFile(path) as parquet:
            names = parquet.schema_arrow.names
            has_labels = "labels" in names and "num_trained" not in names  # num_trained is exact for every kind
            columns = ["num_tokens", "labels" if has_labels else "num_trained"]
            first_row = 0
            for group in range(parquet.metadata.num_row_groups):
                wanted = show - len(examples)
                table = parquet.read_row_group(group, columns=None if wanted > 0 else columns)
                lengths.append(table.column("num_tokens").to_numpy().astype(np.int64))
                if not has_labels:
                    trained.append(table.column("num_trained").to_numpy().astype(np.int64))
                elif table.num_rows:
                    trained.append(_trained_per_row(table.column("labels").combine_chunks()))
                for k, row in enumerate(table.slice(0, max(wanted, 0)).to_pylist()):
                    ids, labels = row["input_ids"] or [], row["labels"] or []
                    raw = [[f"⟨{i}⟩", lab != -100] for i, lab in zip(ids[:SHOW_TOKENS], labels, strict=False)]
                    pieces, shown = example_pieces(tok, row) if tok is not None else (raw, len(raw))
                    examples.append({"location": f"{shard['file']}[{first_row + k}]",
                                     "kind": row.get("kind", "packed"), "tokens": int(row["num_tokens"]),
                                     "shown_tokens": shown, "pieces": pieces})  # fmt: skip
                first_row += table.num_rows
    n = np.concatenate(lengths) if lengths else np.zeros(0, np.int64)
    t = np.concatenate(trained) if trained else np.zeros(0, np.int64)
    max_len = (manifest.get("packing") or {}).get("max_len") or manifest.get("options", {}).get("max_len")
    return {"lengths": {**summary(n), "histogram": histogram(n, mark=max_len)}, "tokens": int(n.sum()),
            "trained_tokens": int(t.sum()), "trained_share": float(t.sum() / n.sum()) if n.sum() else 0.0,
            "untrained_rows": int((t == 0).sum()), "examples": examples}  # fmt: skip


def inspect_shards(folder: Path, *, tokenizer: str | None = None, show: int = 0,
                   manifest: dict[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
    """Verify `folder` (checksums, schema, packing invariants, fingerprint) and summarize it; `manifest`: what a
    verification just returned for it (it is not verified again)."""
    manifest = manifest if manifest is not None else verify_output(folder, tokenizer=tokenizer, tokens_required=False)
    stage = manifest["stage"]
    out: dict[str, Any] = {
        "path": printable(str(folder)), "stage": stage, "verified": True,
        "dsprep_version": manifest.get("dsprep_version"), "schema_version": manifest.get("schema_version"),
        "shards": len(manifest["shards"]), "rows": sum(s["rows"] for s in manifest["shards"]),
        "bytes": sum(s.get("bytes", 0) for s in manifest["shards"]),
        "totals": manifest.get("totals", {}),
        "inputs": [{k: i.get(k) for k in ("path", "format", "rows_read", "rows_kept", "rows_rejected",
                                          "rejected_by_reason")} for i in manifest.get("inputs", [])],
        "tokenizer": manifest.get("tokenizer"), "template": (manifest.get("template") or {}).get("name"),
        "conformance": manifest.get("conformance"), "packing": manifest.get("packing"), "token_stats": None,
    }  # fmt: skip
    if stage != "normalized":
        name = tokenizer or (manifest.get("tokenizer") or {}).get("name")
        out["token_stats"] = _token_columns(folder, manifest, _tokenizer(name) if show else None, show)
    return out


def output_counts(manifest: dict[str, Any]) -> dict[str, int]:
    """The input files an output's run read and its rows read, kept and rejected: for a recipe, over its sources
    (rows its splits share or repeat are counted once, rows left out or rejected while encoding as rejected)."""
    stage = manifest["stage"]
    inputs = [i for s in manifest["sources"] for i in s["inputs"]] if stage == "recipe" else manifest["inputs"]
    totals = manifest.get("totals") or {k: sum(i[k] for i in inputs) for k in COUNTS}
    return {"inputs": len(inputs), **{k: int(totals[k]) for k in COUNTS}}


def inspect_output(
    folder: Path, *, tokenizer: str | None = None, show: int = 0
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Inspect an output folder: its entries (a recipe output: one per split, with its per-source statistics) and
    its `output_counts`."""
    manifest = verify_output(folder, tokenizer=tokenizer, tokens_required=False)
    if manifest["stage"] != "recipe":
        return [inspect_shards(folder, tokenizer=tokenizer, show=show, manifest=manifest)], output_counts(manifest)
    out = []
    for name, split in manifest["splits"].items():
        split_manifest = read_manifest(folder / split["path"])  # verified with the recipe
        entry = inspect_shards(folder / split["path"], tokenizer=tokenizer, show=show, manifest=split_manifest)
        examples = sum(s[name]["examples"] for s in manifest["sources"]) or 1
        tokens = sum(s[name]["tokens"] for s in manifest["sources"]) or 1
        entry["recipe_sources"] = [
            {"name": s["name"], "rows_read": s["rows_read"], "rows_rejected": s["rows_rejected"], **s[name],
             "share_of_examples": s[name]["examples"] / examples, "share_of_tokens": s[name]["tokens"] / tokens}
            for s in manifest["sources"]
        ]  # fmt: skip
        out.append(entry)
    return out, output_counts(manifest)
