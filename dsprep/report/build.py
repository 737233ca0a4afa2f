"""Assemble the `dsprep inspect` report (a plain dict following ``report_schema.json``) for raw files and shards."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dsprep.errors import InputError
from dsprep.report.raw import overlaps as find_overlaps
from dsprep.report.scan import scan_inputs
from dsprep.report.shards import COUNTS, inspect_output, is_output_folder
from dsprep.server import engine_for
from dsprep.sources import InputFile, discover, glob_matches, printable
from dsprep.version import __version__
from dsprep.workers import EncodeSpec, default_workers, start_server

__all__ = ["REPORT_VERSION", "InspectOptions", "build_report", "locate"]

REPORT_VERSION = 1
# smaller raw inputs are read in this process alone: starting workers would cost more than they save (measured)
POOL_MIN_BYTES = 8 << 20  # with a tokenizer
POOL_MIN_BYTES_UNMEASURED = 64 << 20  # without


@dataclass(frozen=True, kw_only=True)
class InspectOptions:
    """What `dsprep inspect` measures.

    format: "auto" or a format name/spec path, as for convert. tokenizer/template/train_on/max_len/overflow/pack:
    as for convert; without a tokenizer no token statistics are computed. show: how many examples to render.
    workers: the processes that check rows and, with a tokenizer, encode them (None: every usable core; inputs under
    `POOL_MIN_BYTES` with a tokenizer, or `POOL_MIN_BYTES_UNMEASURED` without, are read in this process alone).
    """

    format: str = "auto"
    tokenizer: str | None = None
    template: str = "tokenizer"
    train_on: str = "assistant"
    max_len: int | None = None
    overflow: str = "drop"
    pack: int | None = None
    show: int = 0
    sample_rows: int = 200
    workers: int | None = None


def _outputs_below(folder: Path) -> list[Path]:
    """The dsprep output folders inside `folder` (not inside one another; hidden folders skipped), sorted."""
    found: list[Path] = []
    for root, dirs, _ in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for d in list(dirs):
            if is_output_folder(Path(root) / d):
                dirs.remove(d)
                found.append(Path(root) / d)
    return sorted(found)


def _only_outputs(folder: str) -> bool:
    """Whether `folder`, which holds output folders, holds no raw data file besides them."""
    try:
        discover([folder])
    except InputError:
        return True
    return False


def locate(paths: Sequence[str]) -> tuple[list[Path], list[InputFile]]:
    """The dsprep output folders among and below `paths` (files, folders, globs), and the raw input files, the
    files inside output folders left out: each folder and each file once, however often it is named or matched."""
    expanded = [path for item in paths for path in glob_matches(item) or [item]]  # no match: `discover` says so
    folders: dict[Path, Path] = {}  # resolved -> as named
    raw: list[str] = []
    for item in expanded:
        path = Path(item)
        found = [path] if is_output_folder(path) else _outputs_below(path) if path.is_dir() else []
        for folder in found:
            folders.setdefault(folder.resolve(), folder)
        if not is_output_folder(path) and not (found and _only_outputs(item)):
            raw.append(item)
    outputs = [f for real, f in folders.items() if not any(p in folders for p in real.parents)]
    files = [f for f in discover(raw) if not any(p in folders for p in f.path.resolve().parents)] if raw else []
    return outputs, files


def build_report(
    paths: Sequence[str], options: InspectOptions, *, on_start: Callable[[int], Callable[[int], None]] | None = None
) -> dict[str, Any]:
    """Inspect every path (raw files, folders, globs, or dsprep output folders) and return the report. Its totals
    add up the raw inputs and, for each output folder, what its run read, kept and rejected (`output_counts`).

    on_start, when given, is told the bytes of the raw inputs before they are read, and returns what the bytes read
    are reported to as they are read.
    """
    folders, files = locate(paths)
    size = sum(f.size for f in files)
    with engine_for(size):  # a small input is encoded by tiktoken alone: fastokens' build would not pay
        return _report(paths, options, folders, files, size, on_start)


def _report(
    paths: Sequence[str], options: InspectOptions, folders: list[Path], files: list[InputFile], size: int,
    on_start: Callable[[int], Callable[[int], None]] | None,
) -> dict[str, Any]:  # fmt: skip
    outputs = [inspect_output(f, tokenizer=options.tokenizer, show=options.show) for f in folders]
    shards = [s for entries, _ in outputs for s in entries]
    measure = None  # how rows are encoded for the token statistics, if they are
    if options.tokenizer is not None and files:
        measure = EncodeSpec(options.tokenizer, options.template, options.train_on, None, "drop")
    workers = options.workers or default_workers()
    if workers > 1 and size >= (POOL_MIN_BYTES if measure else POOL_MIN_BYTES_UNMEASURED):
        start_server(measure)  # the workers' server (and its encoder) loads while this process loads its own
    else:
        workers = 1
    stats = None
    if measure is not None:
        from dsprep.report.tokens import TokenStats

        stats = TokenStats(measure.tokenizer, options.template, max_len=options.max_len, overflow=options.overflow,
                           pack=options.pack, train_on=options.train_on, show=options.show)  # fmt: skip
    on_bytes = on_start(size) if on_start is not None and files else None
    inspections = scan_inputs(files, fmt=options.format, sample_rows=options.sample_rows, stats=stats,
                              workers=workers, on_bytes=on_bytes)  # fmt: skip
    overlaps = find_overlaps(inspections)
    inputs = [ins.to_dict() for ins in inspections]
    examples = list(stats.examples) if stats is not None else []
    for s in shards:
        examples.extend((s["token_stats"] or {}).pop("examples", []))
    counted = [{"inputs": 1, "rows_read": i["rows"]["read"], "rows_kept": i["rows"]["kept"],
                "rows_rejected": i["rows"]["rejected"]} for i in inputs] + [c for _, c in outputs]  # fmt: skip
    totals = {k: sum(c[k] for c in counted) for k in ("inputs", *COUNTS)}
    return {
        "report_version": REPORT_VERSION,
        "dsprep_version": __version__,
        "options": {"paths": [printable(p) for p in paths], "format": options.format, "tokenizer": options.tokenizer,
                    "template": options.template, "train_on": options.train_on, "max_len": options.max_len,
                    "overflow": options.overflow, "pack": options.pack, "show": options.show},
        "totals": {**totals, "duplicate_rows": sum(i["duplicates"]["rows"] for i in inputs),
                   "overlap_rows": sum(o["rows"] for o in overlaps), "shard_folders": len(shards)},
        "inputs": inputs,
        "overlaps": overlaps,
        "shards": shards,
        "tokens": stats.to_dict() if stats is not None else None,
        "examples": examples[: options.show],
        "gate": None,
    }  # fmt: skip
