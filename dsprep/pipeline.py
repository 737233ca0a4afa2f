"""`convert`: wires the stages — discover inputs, pick a format, normalize, tokenize, write shards and manifest.

Every row read is either written to a shard or to ``rejects.jsonl`` with a reason, and the manifest records, per
input, ``rows_read == rows_kept + rows_rejected``. With a tokenizer, rows are rendered and tokenized
(`dsprep.encode`) after the template passes its conformance checks (`dsprep.conformance`).
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dsprep.config import ConvertConfig
from dsprep.detect import Detection, detect_format
from dsprep.errors import InputError, RejectedRowsError, RowError, RowFailure, TemplateError
from dsprep.normalize import normalize_record, row_id
from dsprep.schema import NORMALIZED, SCHEMA_VERSION, TOKENIZED
from dsprep.shards import MANIFEST, REJECTS, RejectsWriter, ShardWriter, Staging, file_sha256, write_json
from dsprep.sources import InputFile, Record, discover, read_records
from dsprep.specs import FormatSpec, load_spec
from dsprep.version import __version__

if TYPE_CHECKING:
    from dsprep.encode import Encoder

__all__ = ["ConvertResult", "InputReport", "convert", "convert_rows"]

Row = dict[str, Any]
UNPACKABLE = ("preference", "kto")
PACK_CHUNK_ROWS = 4096


@dataclass
class InputReport:
    """What happened to one input: its identity, the format used, and the row accounting."""

    path: str
    container: str
    compression: str | None
    bytes: int
    sha256: str
    format: str
    format_origin: str
    format_sha256: str
    detection: str | None = None
    rows_read: int = 0
    rows_kept: int = 0
    rows_rejected: int = 0
    rejected_by_reason: dict[str, int] = field(default_factory=dict)
    kinds: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class ConvertResult:
    """The finished run: per-input reports and the manifest as written."""

    inputs: list[InputReport]
    manifest: dict[str, Any]

    @property
    def rows_read(self) -> int:
        return sum(r.rows_read for r in self.inputs)

    @property
    def rows_kept(self) -> int:
        return sum(r.rows_kept for r in self.inputs)

    @property
    def rows_rejected(self) -> int:
        return sum(r.rows_rejected for r in self.inputs)


@contextmanager
def _reading(f: InputFile) -> Iterator[None]:
    """Turn a failed read (gone since it was listed, permission denied, I/O error) into a one-line `InputError`."""
    try:
        yield
    except OSError as exc:
        raise InputError(f"{f.display}: cannot read: {exc.strerror or exc}") from None


def _identity(f: InputFile) -> tuple[int, str]:
    """An input's size and sha256, read now (it may have changed or gone since it was listed)."""
    with _reading(f):
        return f.size, file_sha256(f.path)


def _location(f: InputFile, row: int) -> str:
    return f"{f.display}:{row + 1}" if f.line_oriented else f"{f.display}[{row}]"


def _sample(f: InputFile, n: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    with _reading(f):
        batches = read_records(f)
        try:
            for batch in batches:
                out.extend(r.value for r in batch if r.value is not None)
                if len(out) >= n:
                    break
        finally:
            batches.close()  # type: ignore[attr-defined]
    return out[:n]


def _choose_spec(f: InputFile, config: ConvertConfig) -> tuple[FormatSpec | None, Detection | None]:
    """The spec for an input; None when `--format auto` finds no parseable row (every row is then rejected)."""
    if config.format != "auto":
        return load_spec(config.format), None
    sample = _sample(f, config.sample_rows)
    if not sample:
        return None, None
    detection = detect_format(sample, f.display)
    return detection.spec, detection


class _Run:
    """One convert: routes each record to the shard writer or the rejects writer, counting both."""

    def __init__(
        self, config: ConvertConfig, shards: ShardWriter, rejects: RejectsWriter, encoder: Encoder | None
    ) -> None:
        self.config = config
        self.shards = shards
        self.rejects = rejects
        self.encoder = encoder

    def reject(self, f: InputFile, rec: Record, error: RowError, report: InputReport) -> None:
        location = _location(f, rec.row)
        self.rejects.write(
            {"source_file": f.display, "source_row": rec.row, "location": location, "field": error.field,
             "reason": error.reason, "message": error.message, "raw": rec.raw.decode("utf-8", "backslashreplace")}
        )  # fmt: skip
        report.rows_rejected += 1
        report.rejected_by_reason[error.reason] = report.rejected_by_reason.get(error.reason, 0) + 1
        if self.config.on_error == "fail":
            raise RowFailure(f"{location}: {error}")

    def run_input(
        self, f: InputFile, spec: FormatSpec | None, report: InputReport, on_bytes: Callable[[int], None] | None
    ) -> None:
        kinds: Counter[str] = Counter()
        name = f.path.name
        for batch in read_records(f, on_bytes):
            kept: list[tuple[Record, Row]] = []
            for rec in batch:
                report.rows_read += 1
                if rec.error is not None or rec.value is None or spec is None:
                    self.reject(f, rec, rec.error or RowError("", "wrong_type", "empty record"), report)
                    continue
                try:
                    row = normalize_record(rec.value, spec)
                except RowError as error:
                    self.reject(f, rec, error, report)
                    continue
                row["id"] = row_id(name, rec.row, rec.raw)
                row["source_file"] = f.display
                row["source_row"] = rec.row
                kept.append((rec, row))
            for rec, out_rows in self._encoded(kept):
                if isinstance(out_rows, RowError):
                    self.reject(f, rec, out_rows, report)
                    continue
                for out in out_rows:
                    self.shards.write(out, len(rec.raw))
                report.rows_kept += 1
                kinds[out_rows[0]["kind"]] += 1
        report.kinds = dict(sorted(kinds.items()))

    def _encoded(self, kept: list[tuple[Record, Row]]) -> Iterator[tuple[Record, list[Row] | RowError]]:
        if self.encoder is None:
            for rec, row in kept:
                yield rec, [row]
            return
        if self.config.pack is not None:
            for rec, row in kept:
                if row["kind"] in UNPACKABLE:
                    message = f"{row['kind']} rows hold separate prompt/continuation ids and are not packed"
                    yield rec, RowError("kind", "not_packable", message)
            kept = [(rec, row) for rec, row in kept if row["kind"] not in UNPACKABLE]
        results = self.encoder.encode([row for _, row in kept])
        yield from zip((rec for rec, _ in kept), results, strict=True)


def _encoder(config: ConvertConfig) -> tuple[Encoder | None, dict[str, Any]]:
    """The encoder for a tokenizing run, after its conformance checks; and what the manifest records of it."""
    if config.tokenizer is None:
        return None, {}
    from dsprep.conformance import check_conformance
    from dsprep.encode import EncodeOptions, Encoder
    from dsprep.templates import load_template
    from dsprep.tokenizers import load_tokenizer

    loaded = load_tokenizer(config.tokenizer)
    template = load_template(config.template, loaded.chat_template)
    options = EncodeOptions(train_on=config.train_on, max_len=config.max_len, overflow=config.overflow)
    encoder = Encoder(loaded, template, options)
    conformance = check_conformance(encoder)
    encoder.method_counts = dict.fromkeys(encoder.method_counts, 0)  # count the data's rows only, not the probes
    if conformance.problems and not config.allow_template_warnings:
        raise TemplateError("; ".join(conformance.problems) + " (pass --allow-template-warnings to go on)")
    tok = loaded.tokenizer
    record = {
        "tokenizer": {
            "name": loaded.name, "fingerprint": loaded.fingerprint, "class": type(tok).__name__,
            "vocab_size": len(tok), "bos_token": tok.bos_token, "eos_token": tok.eos_token,
        },
        "template": {
            "name": template.name, "origin": template.origin, "sha256": template.sha256, "text": template.text,
        },
        "conformance": conformance.to_dict(),
    }  # fmt: skip
    return encoder, record


def convert(
    config: ConvertConfig,
    *,
    on_bytes: Callable[[int], None] | None = None,
    on_input: Callable[[InputReport], None] | None = None,
    derive_spec: Callable[[FormatSpec], FormatSpec] | None = None,
) -> ConvertResult:
    """Normalize (and with a tokenizer, tokenize) `config.inputs` into shards, rejects and manifest in `config.out`.

    `derive_spec`, when given, adjusts each input's spec (given or detected) before it is used.
    """
    files = discover(config.inputs)
    plan = [(f, *_choose_spec(f, config)) for f in files]
    if derive_spec is not None:
        plan = [(f, derive_spec(spec) if spec else None, detection) for f, spec, detection in plan]
    encoder, encoding = _encoder(config)
    staging = Staging(config.out, overwrite=config.overwrite)
    reports: list[InputReport] = []
    try:
        schema = NORMALIZED if encoder is None else TOKENIZED
        unpacked = staging.dir / "unpacked" if config.pack else staging.dir
        unpacked.mkdir(exist_ok=True)
        shards = ShardWriter(unpacked, schema, shard_bytes=config.shard_bytes)
        with RejectsWriter(staging.dir / REJECTS) as rejects:
            run = _Run(config, shards, rejects, encoder)
            for f, spec, detection in plan:
                size, sha256 = _identity(f)
                report = InputReport(
                    path=f.display,
                    container=f.container,
                    compression=f.compression,
                    bytes=size,
                    sha256=sha256,
                    format=spec.name if spec else "none",
                    format_origin=spec.origin if spec else "no parseable rows to detect a format from",
                    format_sha256=spec.sha256 if spec else "",
                    detection=detection.describe() if detection else None,
                )
                reports.append(report)
                with _reading(f):  # writes raise OutputError, so an OSError here is the input failing
                    run.run_input(f, spec, report, on_bytes)
                if on_input:
                    on_input(report)
        shard_list = shards.close()
        packing = _pack(config, unpacked, staging) if config.pack else None
        if packing is not None:
            shard_list = packing.pop("shards")
        read = sum(r.rows_read for r in reports)
        rejected = sum(r.rows_rejected for r in reports)
        if config.max_rejected is not None and read and rejected / read > config.max_rejected:
            raise RejectedRowsError(
                f"{rejected} of {read} rows rejected ({rejected / read:.2%}), over --max-rejected "
                f"{config.max_rejected:.2%}; see {config.out / REJECTS}"
            )
        manifest = _manifest(config, reports, shard_list, rejects.rows, staging)
        if encoder is not None:
            manifest.update(stage="tokenized", **encoding, mask_methods=dict(encoder.method_counts))
        if packing is not None:
            manifest.update(stage="packed", packing=packing)
        write_json(staging.dir / MANIFEST, manifest)
        staging.publish([*(s["file"] for s in shard_list), REJECTS, MANIFEST])
    except BaseException:
        staging.discard(keep=(REJECTS,))
        raise
    return ConvertResult(reports, manifest)


def _pack(config: ConvertConfig, unpacked: Path, staging: Staging) -> dict[str, Any]:
    """Plan packing over every tokenized example at once, then write packed shards chunk by chunk."""
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq

    from dsprep.pack import PackReport, materialize, plan_packing
    from dsprep.schema import PACKED

    assert config.pack is not None
    parts = sorted(unpacked.glob("part-*.parquet"))
    columns = ["id", "input_ids", "labels", "num_tokens"]
    table = pa.concat_tables([pq.read_table(p, columns=columns) for p in parts]).combine_chunks()
    plan = plan_packing(table.column("num_tokens").to_numpy().astype("int64"), config.pack)
    if config.shuffle_seed is not None:
        plan = plan.shuffled(config.shuffle_seed)
    writer = ShardWriter(staging.dir, PACKED, shard_bytes=config.shard_bytes)
    for first in range(0, plan.rows, PACK_CHUNK_ROWS):
        writer.write_table(materialize(table, plan, first_row=first, rows=min(PACK_CHUNK_ROWS, plan.rows - first)))
    shutil.rmtree(unpacked)
    report = asdict(PackReport.of(plan))
    return {"max_len": config.pack, "shuffle_seed": config.shuffle_seed, **report, "shards": writer.close()}


def _manifest(
    config: ConvertConfig, reports: list[InputReport], shards: list[dict[str, Any]], rejects: int, staging: Staging
) -> dict[str, Any]:
    totals = {
        "rows_read": sum(r.rows_read for r in reports),
        "rows_kept": sum(r.rows_kept for r in reports),
        "rows_rejected": sum(r.rows_rejected for r in reports),
    }
    return {
        "dsprep_version": __version__,
        "schema_version": SCHEMA_VERSION,
        "stage": "normalized",
        "options": config.options(),
        "inputs": [asdict(r) for r in reports],
        "totals": totals,
        "shards": shards,
        "rejects": {"file": REJECTS, "rows": rejects, "sha256": file_sha256(staging.dir / REJECTS)},
    }


def convert_rows(
    config: ConvertConfig,
    sources: Sequence[tuple[InputReport, Iterable[Row]]],
    *,
    location: Callable[[Row], str],
    on_row: Callable[[Row, list[Row] | RowError], None] | None = None,
) -> ConvertResult:
    """Tokenize (with `config.tokenizer`) and pack rows that are already normalized, such as a recipe's selection.

    `config.inputs` is not read: each source is a report (its identity filled in by the caller; the row accounting
    is added here) and its normalized rows, which keep their `id`, `source_file` and `source_row`. `location` names a
    row in the rejects file; `on_row` sees each row with its tokenized rows or its error. Shards, rejects and the
    manifest are written to `config.out` as `convert` writes them.
    """
    encoder, encoding = _encoder(config)
    staging = Staging(config.out, overwrite=config.overwrite)
    try:
        unpacked = staging.dir / "unpacked" if config.pack else staging.dir
        unpacked.mkdir(exist_ok=True)
        shards = ShardWriter(unpacked, NORMALIZED if encoder is None else TOKENIZED, shard_bytes=config.shard_bytes)
        with RejectsWriter(staging.dir / REJECTS) as rejects:
            run = _Run(config, shards, rejects, encoder)
            for report, rows in sources:
                _convert_source_rows(run, report, rows, location, on_row)
        shard_list = shards.close()
        packing = _pack(config, unpacked, staging) if config.pack else None
        if packing is not None:
            shard_list = packing.pop("shards")
        manifest = _manifest(config, [r for r, _ in sources], shard_list, rejects.rows, staging)
        if encoder is not None:
            manifest.update(stage="tokenized", **encoding, mask_methods=dict(encoder.method_counts))
        if packing is not None:
            manifest.update(stage="packed", packing=packing)
        write_json(staging.dir / MANIFEST, manifest)
        staging.publish([*(s["file"] for s in shard_list), REJECTS, MANIFEST])
    except BaseException:
        staging.discard(keep=(REJECTS,))
        raise
    return ConvertResult([r for r, _ in sources], manifest)


def _convert_source_rows(
    run: _Run,
    report: InputReport,
    rows: Iterable[Row],
    location: Callable[[Row], str],
    on_row: Callable[[Row, list[Row] | RowError], None] | None,
) -> None:
    kinds: Counter[str] = Counter()
    pending = iter(rows)
    while batch := [(row, row) for row in itertools.islice(pending, PACK_CHUNK_ROWS)]:
        report.rows_read += len(batch)
        for row, out_rows in run._encoded(batch):  # type: ignore[arg-type]
            if on_row is not None:
                on_row(row, out_rows)
            if isinstance(out_rows, RowError):
                run.rejects.write(
                    {"source_file": row["source_file"], "source_row": row["source_row"], "location": location(row),
                     "field": out_rows.field, "reason": out_rows.reason, "message": out_rows.message, "raw": ""}
                )  # fmt: skip
                report.rows_rejected += 1
                report.rejected_by_reason[out_rows.reason] = report.rejected_by_reason.get(out_rows.reason, 0) + 1
                if run.config.on_error == "fail":
                    raise RowFailure(f"{location(row)}: {out_rows}")
                continue
            for out in out_rows:
                run.shards.write(out, 256 + 8 * int(out.get("num_tokens") or 0))
            report.rows_kept += 1
            kinds[out_rows[0]["kind"]] += 1
    report.kinds = dict(sorted(kinds.items()))
