"""Options of a convert run: one frozen dataclass whose defaults are the only defaults."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

__all__ = ["RUN_ONLY", "ConvertConfig"]

# how a run is carried out, never what it writes
RUN_ONLY = ("workers", "engine", "ray_address", "cache", "cache_dir", "cache_max_bytes")


@dataclass(frozen=True, kw_only=True)
class ConvertConfig:
    """What `dsprep convert` does.

    inputs: files, folders or glob patterns, read in the given order (folders and globs sorted).
    out: the output folder; it must be empty or absent unless `overwrite`.
    format: "auto", a shipped format name, or a path to a `.toml` spec.
    on_error: "quarantine" sends bad rows to rejects.jsonl; "fail" stops at the first one.
    max_rejected: fail the run when rejected / read exceeds this fraction (None: never).
    shard_bytes: start a new Parquet shard once one reaches this many bytes (packed: shards of about this many,
        fixed from the token count, so that several are written at once).
    sample_rows: how many rows per input `--format auto` scores.
    tokenizer: a local tokenizer folder or a built-in name (mistral:tekken, mistral:v3); None writes normalized rows.
    template: "tokenizer" (its own chat template), a shipped template name, or a .jinja path.
    train_on, max_len, overflow: the loss mask and length policy (see `dsprep.encode.EncodeOptions`).
    allow_template_warnings: go on when the template fails its conformance checks.
    pack: pack tokenized examples into rows of at most this many tokens (`dsprep.pack`); needs `tokenizer`.
    shuffle_seed: shuffle the packed rows with this seed (None keeps the plan's order).
    workers: processes that normalize and encode slices of records (None: every usable core); the output is the same
        for any number.
    engine: "local" (`--workers` processes here) or "ray" (Ray Data, `dsprep.ray_engine`); the output is the same.
    ray_address: the Ray cluster to join with the ray engine (None: start a local Ray with `workers` CPUs).
    cache: reuse a finished output with the same cache key (`dsprep.cache`), and store this run's.
    cache_dir: where cached outputs live (None: ``$DSPREP_CACHE/outputs``, default ``~/.cache/dsprep/outputs``).
    cache_max_bytes: after storing, the least recently used entries go until the bytes only the cache holds fit.
    """

    inputs: tuple[str, ...]
    out: Path
    format: str = "auto"
    on_error: Literal["quarantine", "fail"] = "quarantine"
    max_rejected: float | None = None
    overwrite: bool = False
    shard_bytes: int = 64 << 20
    sample_rows: int = 200
    tokenizer: str | None = None
    template: str = "tokenizer"
    train_on: Literal["assistant", "all", "last"] = "assistant"
    max_len: int | None = None
    overflow: Literal["drop", "truncate-right", "truncate-left", "drop-turns", "split"] = "drop"
    allow_template_warnings: bool = False
    pack: int | None = None
    shuffle_seed: int | None = None
    workers: int | None = None
    engine: Literal["local", "ray"] = "local"
    ray_address: str | None = None
    cache: bool = False
    cache_dir: Path | None = None
    cache_max_bytes: int = 50 << 30

    def __post_init__(self) -> None:
        if self.pack is not None:
            if self.tokenizer is None:
                raise ValueError("packing needs a tokenizer (--tokenizer)")
            if self.max_len is not None and self.max_len > self.pack:
                raise ValueError(f"--max-len {self.max_len} exceeds the packed row length --pack {self.pack}")
            if self.max_len is None:
                object.__setattr__(self, "max_len", self.pack)

    def options(self) -> dict[str, Any]:
        """The options that shape the output, as recorded in the manifest (not `RUN_ONLY`)."""
        d = asdict(self)
        for key in ("inputs", "out", "overwrite", *RUN_ONLY):
            d.pop(key)
        return d
