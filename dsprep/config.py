"""Options of a convert run: one frozen dataclass whose defaults are the only defaults, and the ranges and parsers
the command line and recipes share."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

__all__ = ["MAX_BYTES", "MAX_SEED", "MAX_TOKENS", "RUN_ONLY", "ConvertConfig", "parse_fraction", "parse_size"]

# how a run is carried out, never what it writes
RUN_ONLY = ("workers", "engine", "ray_address", "cache", "cache_dir", "cache_max_bytes")
MAX_TOKENS = (1 << 31) - 1  # --pack and --max-len: token positions and lengths are int32 in the shards
MAX_SEED = (1 << 63) - 1  # --shuffle-seed: a non-negative 64-bit integer
MAX_BYTES = (1 << 63) - 1  # --shard-size and --cache-max-size
SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:([kmgt])i?)?b?\s*$", re.IGNORECASE)
UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str, *, positive: bool = False) -> int:
    """'256MB', '1g', '1.5KiB', '100B', '4096' -> bytes (binary units); ValueError with a one-line reason otherwise.

    With `positive`, a size under 1 byte is refused too.
    """
    m = SIZE.match(text)
    if not m:
        raise ValueError(f"{text!r} is not a size such as 256MB, 1GB or 100B")
    size = float(m.group(1)) * UNITS[(m.group(2) or "").lower()]
    if size > MAX_BYTES:
        raise ValueError(f"{text!r} is over the largest size, {MAX_BYTES} bytes")
    if positive and size < 1:
        raise ValueError(f"{text!r} is under 1 byte; a size must be positive")
    return int(size)


def percent(fraction: float) -> str:
    """0.0001 -> '0.01%', 0.5 -> '50%': a share with the digits it was given (up to 4 significant)."""
    return f"{fraction * 100:.4g}%"


def parse_fraction(text: str) -> float:
    """'0.01' or '1%' -> 0.01; ValueError unless it lies between 0 and 1."""
    text = text.strip()
    try:
        number = float(text.removesuffix("%")) / (100 if text.endswith("%") else 1)
    except ValueError:
        raise ValueError(f"{text!r} is not a fraction such as 0.01 or 1%") from None
    if not 0 <= number <= 1:
        raise ValueError(f"{text!r} must lie between 0 and 1")
    return number


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
        for name in ("pack", "max_len"):
            value = getattr(self, name)
            if value is not None and not 1 <= value <= MAX_TOKENS:
                raise ValueError(f"{name} {value} is not in 1..{MAX_TOKENS}")
        if self.shuffle_seed is not None and not 0 <= self.shuffle_seed <= MAX_SEED:
            raise ValueError(f"shuffle_seed {self.shuffle_seed} is not in 0..{MAX_SEED}")
        if not 1 <= self.shard_bytes <= MAX_BYTES:
            raise ValueError(f"shard_bytes {self.shard_bytes} is not in 1..{MAX_BYTES}")
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
