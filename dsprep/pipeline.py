"""`convert`: wires the stages — discover inputs, pick a format, normalize, tokenize, write shards and manifest.

Every row read is either written to a shard or to ``rejects.jsonl`` with a reason, and the manifest records, per
input, ``rows_read == rows_kept + rows_rejected``. With a tokenizer, rows are rendered and tokenized
(`dsprep.encode`) after the template passes its conformance checks (`dsprep.conformance`).

Records are cut into slices processed by `dsprep.workers` (inline or on a process pool); each slice's result is
stored as a piece (`dsprep.pieces`) and counted in input order, and `dsprep.assemble` writes the shards from the
pieces: unpacked, each piece as it comes in; packed, all of them once the last is in. The run's cache key
(`dsprep.cache`) finds an identical earlier output, and names the staging folder's pieces so that a killed run
resumes from them.
"""

from __future__ import annotations

import functools
import itertools
from array import array
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import pyarrow as pa

from dsprep.assemble import OnWriting, PieceLocations, UnpackedShards, write_packed
from dsprep.cache import (
    OutputCache,
    cache_key,
    changes,
    components,
    default_cache_dir,
    describe,
    link_or_copy,
    size_text,
)
from dsprep.config import ConvertConfig, percent
from dsprep.detect import Detection, detect_format
from dsprep.errors import InputError, OutputError, RejectedRowsError, RowFailure, TemplateError, WorkerDiedError
from dsprep.lines import LineScanner, LineSlice, sliceable
from dsprep.pieces import load_piece, piece_table, store_piece
from dsprep.schema import SCHEMA_VERSION
from dsprep.server import encoding, engine_for, wants_server
from dsprep.shards import MANIFEST, REJECTS, RejectsWriter, ShardWriter, Staging, file_sha256, write_json, writing
from dsprep.sources import InputFile, Record, discover, glob_matches, printable, read_records
from dsprep.specs import FormatSpec, load_spec
from dsprep.version import __version__
from dsprep.workers import (
    TASK_ROWS,
    BatchResult,
    EncodeSpec,
    InputShare,
    SourceInput,
    Stage,
    Task,
    default_workers,
    encoder_for,
    ordered_results,
    start_server,
)

if TYPE_CHECKING:
    from dsprep.encode import Encoder

__all__ = ["ConvertResult", "InputReport", "convert", "convert_rows"]

Planned = tuple[InputFile, FormatSpec | None, Detection | None]
Row = dict[str, Any]


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
    cached: bool = False
    resumed_pieces: int = 0

    @property
    def rows_read(self) -> int:
        return sum(r.rows_read for r in self.inputs)

    @property
    def rows_kept(self) -> int:
        return sum(r.rows_kept for r in self.inputs)

    @property
    def rows_rejected(self) -> int:
        return sum(r.rows_rejected for r in self.inputs)


def _outside(inputs: Sequence[str], files: list[InputFile], out: Path) -> list[InputFile]:
    """`files` less those inside the output folder (an output kept in its input folder is not read back).

    An input named (or matched by a glob) inside the output folder, or the folder itself, is refused: the run would
    replace what it reads.
    """
    root = out.resolve()
    for item in inputs:
        for path in glob_matches(item):
            if Path(path).resolve().is_relative_to(root):
                raise OutputError(
                    f"{printable(path)}: this input lies in the output folder {printable(str(out))}, which the run "
                    "replaces; write the output to another folder"
                )
    return [f for f in files if not f.path.resolve().is_relative_to(root)]


@contextmanager
def _reading(f: InputFile) -> Iterator[None]:
    """Turn a failed read (gone since it was listed, permission denied, I/O error) into a one-line `InputError`."""
    try:
        yield
    except OSError as exc:
        raise InputError(f"{f.display}: cannot read: {exc.strerror or exc}") from None


def _size(f: InputFile) -> int:
    with _reading(f):
        return f.size


def _identity(f: InputFile) -> tuple[int, str]:
    """An input's size and sha256, read now (it may have changed or gone since it was listed)."""
    with _reading(f):
        return f.size, file_sha256(f.path)


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


class _Accounts:
    """Adds each result, in task order, to its input's report, writes its reject lines, and reports finished inputs."""

    def __init__(
        self, config: ConvertConfig, reports: list[InputReport], rejects: RejectsWriter,
        on_input: Callable[[InputReport], None] | None,
    ) -> None:  # fmt: skip
        self.config = config
        self.reports = reports
        self.rejects = rejects
        self.on_input = on_input
        self.methods: Counter[str] = Counter()
        self.done: list[BatchResult] = []
        self._kinds: Counter[str] = Counter()
        self._finished = 0

    def add(self, result: BatchResult) -> None:
        if self.config.on_error == "fail" and result.failure is not None:
            assert result.failed_input is not None
            for share in result.shares:  # the task's rows of the inputs before the failed one were all read
                if share.input_index < result.failed_input:
                    self._count(share)
            self.finish(upto=result.failed_input)
            self.rejects.write_line(result.rejects[0])
            self.reports[result.failed_input].rows_rejected += 1
            raise RowFailure(result.failure, input_index=result.failed_input, reject=result.rejects[0])
        for line in result.rejects:
            self.rejects.write_line(line)
        for share in result.shares:
            self._count(share)
        self.methods.update(result.methods)
        lengths = array("i", result.lengths)  # 4 bytes an example, not a Python int's 32: kept until packing
        self.done.append(BatchResult(result.seq, result.input_index, rows_kept=result.rows_kept, lengths=lengths))

    def _count(self, share: InputShare) -> None:
        """Add a task's share of an input to that input's report (closing the reports of the inputs before it)."""
        self.finish(upto=share.input_index)
        report = self.reports[share.input_index]
        report.rows_read += share.rows_read
        report.rows_kept += share.rows_kept
        report.rows_rejected += share.rows_rejected
        for reason, n in share.reasons.items():
            report.rejected_by_reason[reason] = report.rejected_by_reason.get(reason, 0) + n
        self._kinds.update(share.kinds)

    def finish(self, upto: int) -> None:
        """Close the reports of every input before `upto` (all of them for ``len(reports)``)."""
        while self._finished < upto:
            report = self.reports[self._finished]
            report.kinds = dict(sorted(self._kinds.items()))
            self._kinds = Counter()
            if self.on_input:
                self.on_input(report)
            self._finished += 1


def _tasks(plan: list[Planned], on_bytes: Callable[[int], None] | None, sizes: Sequence[int]) -> Iterator[Task]:
    """The inputs' records in tasks of `TASK_ROWS` (the last one fewer): a task goes on into the next input where the
    previous one ends, so that many small inputs make few tasks. A plain JSON Lines input's records stay in the file,
    named by slices of its lines (`dsprep.lines`), for whoever processes the task to read. An input whose size is no
    longer its `sizes` entry (what its sha256 was taken of) once read is an `InputError`: the rows read are not the
    ones the manifest and the cache key would name."""
    gathered = _Gathered()
    for index, (f, _, _) in enumerate(plan):
        if sliceable(f):
            with LineScanner(f, on_bytes) as scanner:
                while True:
                    with _reading(f):
                        lines = scanner.take(TASK_ROWS - gathered.rows)
                    if lines is None:
                        break
                    gathered.add_lines(index, lines)
                    if gathered.rows == TASK_ROWS:
                        yield gathered.task()
            _unchanged(f, sizes[index])
            continue
        batches = read_records(f, on_bytes, defer_parsing=True)
        while True:
            with _reading(f):  # only the read happens here: a failed write never looks like a failed input
                batch = next(batches, None)
            if batch is None:
                _unchanged(f, sizes[index])
                break
            at = 0
            while at < len(batch):
                take = batch[at : at + TASK_ROWS - gathered.rows]
                gathered.add(index, take)
                at += len(take)
                if gathered.rows == TASK_ROWS:
                    yield gathered.task()
    if gathered.rows:
        yield gathered.task()


class _Gathered:
    """The parts of the next task, in order: records of an input, or a slice of a JSON Lines input's lines."""

    def __init__(self) -> None:
        self.seq = itertools.count()
        self._clear()

    def _clear(self) -> None:
        self.records: list[Record] = []
        self.spans: list[tuple[int, int]] = []
        self.slices: list[LineSlice | None] = []
        self.rows = 0

    def add(self, index: int, records: list[Record]) -> None:
        self.records.extend(records)
        if self.spans and self.spans[-1][0] == index and self.slices[-1] is None:
            self.spans[-1] = (index, self.spans[-1][1] + len(records))
        else:
            self.spans.append((index, len(records)))
            self.slices.append(None)
        self.rows += len(records)

    def add_lines(self, index: int, lines: LineSlice) -> None:
        self.spans.append((index, lines.rows))
        self.slices.append(lines)
        self.rows += lines.rows

    def task(self) -> Task:
        spans = tuple(self.spans) if len(self.spans) > 1 else ()
        slices = tuple(self.slices) if any(self.slices) else ()
        task = Task(next(self.seq), self.spans[0][0], self.records, spans=spans, slices=slices)
        self._clear()
        return task


def _unchanged(f: InputFile, size: int) -> None:
    now = _size(f)
    if now != size:
        raise InputError(
            f"{f.display}: changed while it was read ({size} bytes when the run began, {now} now); run again once it "
            "is complete"
        )


def _engine(config: ConvertConfig) -> Callable[..., Iterator[BatchResult]]:
    """The function that runs the stage over the tasks: local processes, or Ray Data (imported only then)."""
    if config.engine == "ray":
        from dsprep.ray_engine import ray_results

        return functools.partial(ray_results, address=config.ray_address)
    return ordered_results


def _encoder(config: ConvertConfig) -> tuple[Encoder | None, dict[str, Any]]:
    """The encoder for a tokenizing run, after its conformance checks; and what the manifest records of it."""
    spec = _encode_spec(config)
    if spec is None:
        return None, {}
    from dsprep.conformance import conformance_for

    encoder = encoder_for(spec)
    conformance = conformance_for(encoder)
    if conformance.problems and not config.allow_template_warnings:
        raise TemplateError("; ".join(conformance.problems) + " (pass --allow-template-warnings to go on)")
    facts, template = encoder.tok.facts, encoder.template
    bos, eos = facts.special_tokens.get("bos_token"), facts.special_tokens.get("eos_token")
    record = {
        "tokenizer": {
            "name": encoder.tok.name, "fingerprint": facts.fingerprint, "class": facts.class_name,
            "vocab_size": facts.vocab_size, "bos_token": bos, "eos_token": eos,
        },
        "template": {
            "name": template.name, "origin": template.origin, "sha256": template.sha256, "text": template.text,
        },
        "conformance": conformance.to_dict(),
    }  # fmt: skip
    return encoder, record


def _encode_spec(config: ConvertConfig) -> EncodeSpec | None:
    fields = encoding(config)
    return None if fields is None else EncodeSpec(**fields)


def _report(f: InputFile, size: int, sha256: str, spec: FormatSpec | None, detection: Detection | None) -> InputReport:
    return InputReport(
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


def convert(
    config: ConvertConfig,
    *,
    on_bytes: Callable[[int], None] | None = None,
    on_input: Callable[[InputReport], None] | None = None,
    on_note: Callable[[str], None] | None = None,
    explain: Callable[[str], None] | None = None,
    derive_spec: Callable[[FormatSpec], FormatSpec] | None = None,
    on_writing: OnWriting | None = None,
) -> ConvertResult:
    """Normalize (and with a tokenizer, tokenize) `config.inputs` into shards, rejects and manifest in `config.out`.

    on_bytes receives the bytes of input read as they are read; on_writing, once every record is processed, the
    number of steps in writing the shards (chunks of packed rows, or unpacked the one of closing them), and returns
    the function each written step is reported to (from the writing threads). on_note receives one-line notes on
    cache hits, resumed runs and what input folders hold besides data; explain, the cache key's components and, on a
    miss, what changed since the newest cache entry. derive_spec, when given, adjusts each input's spec (given or
    detected) before it is used; the cache key cannot cover it, so such a run neither uses the cache nor resumes.
    """
    files = _outside(config.inputs, discover(config.inputs, on_skip=on_note), config.out)
    input_bytes = sum(map(_size, files))
    with engine_for(input_bytes):  # a small input is encoded by tiktoken alone (`dsprep.ordinary`)
        return _convert_files(config, files, input_bytes, on_bytes=on_bytes, on_input=on_input, on_note=on_note,
                              explain=explain, derive_spec=derive_spec, on_writing=on_writing)  # fmt: skip


def _convert_files(
    config: ConvertConfig,
    files: list[InputFile],
    input_bytes: int,
    *,
    on_bytes: Callable[[int], None] | None,
    on_input: Callable[[InputReport], None] | None,
    on_note: Callable[[str], None] | None,
    explain: Callable[[str], None] | None,
    derive_spec: Callable[[FormatSpec], FormatSpec] | None,
    on_writing: OnWriting | None,
) -> ConvertResult:
    cacheable = config.cache and derive_spec is None
    cache = OutputCache(config.cache_dir or default_cache_dir(), config.cache_max_bytes) if cacheable else None
    server = wants_server(config, input_bytes)
    if server and (cache is None or not cache.may_hold([f.display for f in files])):
        start_server(_encode_spec(config))  # no lookup can hit: the workers' server loads while the inputs are hashed
        server = False
    identities = [_identity(f) for f in files]
    digests = [sha256 for _, sha256 in identities]
    parts = components(config, files, digests)
    key = cache_key(parts)
    if explain:
        _explain(explain, key, parts, cache)
    cached = cache.lookup(key) if cache else None
    if cached is not None:
        result = _from_cache(config, cached, on_input)
        if on_note:
            on_note(f"cache hit: reused the output of an identical earlier run (key {key[:16]})")
        return result
    if server:
        start_server(_encode_spec(config))  # not before a lookup that may hit: a hit must leave nothing running
    plan = [(f, *_choose_spec(f, config)) for f in files]
    if derive_spec is not None:
        plan = [(f, derive_spec(spec) if spec else None, detection) for f, spec, detection in plan]
    encoded = _encoder(config)
    staging = Staging(config.out, overwrite=config.overwrite, key=key if derive_spec is None else None)
    reports = [_report(f, *ident, spec, det) for (f, spec, det), ident in zip(plan, identities, strict=True)]
    stage = Stage(
        tuple(SourceInput(f.name, f.display, f.line_oriented, spec) for f, spec, _ in plan),
        _encode_spec(config),
        config.pack is not None,
    )
    tasks = _tasks(plan, on_bytes, [size for size, _ in identities])
    result, names = _write(
        config, stage, tasks, reports, staging, encoded, on_input=on_input, on_note=on_note, on_writing=on_writing
    )
    if cache is not None:
        try:
            cache.store(key, parts, config.out, names)
        except OSError as exc:  # the output is complete: a cache that cannot take it only costs the next run
            if on_note:
                on_note(
                    f"cache: could not keep this output in {cache.folder} ({exc.strerror or exc}); the output in "
                    f"{config.out} is complete (--no-cache skips the cache, --cache-dir moves it)"
                )
            return result
        evicted = cache.prune(keep=key)
        if evicted.entries and on_note:
            on_note(
                f"cache: evicted the {evicted.entries} least recently used entr{'ies' if evicted.entries > 1 else 'y'} "
                f"({size_text(evicted.bytes)}) to stay under {size_text(config.cache_max_bytes)}"
            )
    return result


def convert_rows(
    config: ConvertConfig,
    sources: Sequence[tuple[InputReport, Iterable[Row]]],
    *,
    location: Callable[[Row], str],
    on_result: Callable[[BatchResult, pa.Table], None] | None = None,
    on_writing: OnWriting | None = None,
    train_on: Sequence[str | None] | None = None,
) -> ConvertResult:
    """Tokenize (with `config.tokenizer`) and pack rows that are already normalized, such as a recipe's selection.

    `config.inputs` is not read, and the output cache is not used: each source is a report (its identity filled in by
    the caller; the row accounting is added here) and its normalized rows, which keep their `id`, `source_file` and
    `source_row`. `location` names a row in the rejects file; `on_result` sees each task's result, in order, with its
    kept rows; `on_writing` is told of writing the shards as in `convert`; `train_on` gives a source a loss policy of
    its own (None: `config.train_on`). Shards, rejects and the manifest are written to `config.out` as `convert`
    writes them.
    """
    encoded = _encoder(config)
    staging = Staging(config.out, overwrite=config.overwrite)
    reports = [report for report, _ in sources]
    policies = list(train_on) if train_on is not None else [None] * len(reports)
    inputs = tuple(
        SourceInput(r.path, r.path, True, None, rows=True, train_on=None if p == config.train_on else p)
        for r, p in zip(reports, policies, strict=True)
    )
    stage = Stage(inputs, _encode_spec(config), config.pack is not None)
    seen = None if on_result is None else lambda r: on_result(r, piece_table(staging.pieces, r.seq))
    tasks = _row_tasks(sources, location)
    return _write(config, stage, tasks, reports, staging, encoded, on_result=seen, on_writing=on_writing)[0]


def _row_tasks(sources: Sequence[tuple[InputReport, Iterable[Row]]], location: Callable[[Row], str]) -> Iterator[Task]:
    """Tasks of normalized rows: each record's value is a row, its `row` the row's position in its source."""
    seq = itertools.count()
    for index, (_, rows) in enumerate(sources):
        pending, first = iter(rows), 0
        while batch := list(itertools.islice(pending, TASK_ROWS)):
            positions = range(first, first + len(batch))
            records = [Record(k, row, b"") for k, row in zip(positions, batch, strict=True)]
            yield Task(next(seq), index, records, {k: location(row) for k, row in zip(positions, batch, strict=True)})
            first += len(batch)


def _write(
    config: ConvertConfig,
    stage: Stage,
    tasks: Iterator[Task],
    reports: list[InputReport],
    staging: Staging,
    encoded: tuple[Encoder | None, dict[str, Any]],
    *,
    on_input: Callable[[InputReport], None] | None = None,
    on_note: Callable[[str], None] | None = None,
    on_result: Callable[[BatchResult], None] | None = None,
    on_writing: OnWriting | None = None,
) -> tuple[ConvertResult, list[str]]:
    """Run `tasks` and write their shards, rejects and manifest, then publish them; returns the result and its files.

    A resumed staging folder's completed pieces are reused; an interrupted run keeps its pieces for the next.
    """
    resumed = 0
    if staging.replaced == [REJECTS] and on_note:
        on_note(f"replaced the {REJECTS} a failed run had left in {config.out}")
    elif staging.replaced and on_note:
        on_note(f"replaced {len(staging.replaced)} files an interrupted run had published before it stopped")

    def done(seq: int) -> BatchResult | None:
        nonlocal resumed
        previous = load_piece(staging.pieces, seq) if staging.resumed else None
        resumed += previous is not None
        return previous

    try:
        with ExitStack() as stack:
            rejects = stack.enter_context(RejectsWriter(staging.dir / REJECTS))
            unpacked = located = None
            if config.pack is None:  # written as the pieces complete
                writer = ShardWriter(staging.dir, stage.schema, shard_bytes=config.shard_bytes)
                unpacked = stack.enter_context(UnpackedShards(staging.pieces, writer))
            else:  # each piece's examples located in its file as it completes
                located = PieceLocations(staging.pieces)
            accounts = _Accounts(config, reports, rejects, on_input)
            sink = functools.partial(store_piece, staging.pieces)
            workers = config.workers or default_workers()
            for result in _engine(config)(stage, tasks, workers, sink=sink, done=done):
                accounts.add(result)
                if unpacked is not None:
                    unpacked.add(result)
                if located is not None:
                    located.add(result)
                if on_result is not None:
                    on_result(result)
            accounts.finish(upto=len(reports))
            if resumed and on_note:
                on_note(f"resumed: reused {resumed} of {len(accounts.done)} completed pieces of an interrupted run")
            if unpacked is not None:
                shard_list, packing = unpacked.finish(on_writing), None
            else:
                assert located is not None
                shard_list, packing = _packed(config, staging, located, accounts.done, on_writing)
        read = sum(r.rows_read for r in reports)
        rejected = sum(r.rows_rejected for r in reports)
        if config.max_rejected is not None and read and rejected / read > config.max_rejected:
            raise RejectedRowsError(
                f"{rejected} of {read} rows rejected ({percent(rejected / read)}), over --max-rejected "
                f"{percent(config.max_rejected)}; see {config.out / REJECTS}"
            )
        manifest = _manifest(config, reports, shard_list, rejects.rows, staging)
        encoder, encoding = encoded
        if encoder is not None:
            methods = {k: accounts.methods.get(k, 0) for k in encoder.method_counts}
            manifest.update(stage="tokenized", **encoding, mask_methods=methods)
        if packing is not None:
            manifest.update(stage="packed", packing=packing)
        write_json(staging.dir / MANIFEST, manifest)
        names = [*(s["file"] for s in shard_list), REJECTS, MANIFEST]
        staging.publish(names)
    except (KeyboardInterrupt, SystemExit, WorkerDiedError):  # interrupted (SIGTERM under Ray exits), or a worker
        staging.keep_pieces()  # killed: the completed pieces stay for the rerun to resume from
        raise
    except BaseException:
        staging.discard(keep=(REJECTS,))
        raise
    return ConvertResult(reports, manifest, resumed_pieces=resumed), names


def _packed(
    config: ConvertConfig,
    staging: Staging,
    located: PieceLocations,
    done: list[BatchResult],
    on_writing: OnWriting | None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Pack the completed pieces' rows into shards; the shard list and packing report."""
    assert config.pack is not None
    with writing(staging.dir):
        packing = write_packed(
            located, done, staging.dir, max_len=config.pack, shuffle_seed=config.shuffle_seed,
            shard_bytes=config.shard_bytes, threads=config.workers or default_workers(), on_writing=on_writing,
        )  # fmt: skip
        return packing.pop("shards"), packing


def _explain(say: Callable[[str], None], key: str, parts: dict[str, Any], cache: OutputCache | None) -> None:
    say(f"cache key {key[:16]}:")
    for line in describe(parts):
        say(f"  {line}")
    if cache is None:
        say("cache: off (--no-cache)")
        return
    if cache.lookup(key) is not None:
        say(f"cache: hit in {cache.folder}")
        return
    previous = cache.newest([i["path"] for i in parts["inputs"]])
    if previous is None:
        say(f"cache: miss, no earlier entry in {cache.folder}")
    else:
        say(f"cache: miss, changed since the newest entry: {'; '.join(changes(previous, parts)) or 'nothing'}")


def _from_cache(
    config: ConvertConfig, files: list[Path], on_input: Callable[[InputReport], None] | None
) -> ConvertResult:
    staging = Staging(config.out, overwrite=config.overwrite)
    try:
        with writing(config.out):
            for path in files:
                link_or_copy(path, staging.dir / path.name)
        staging.publish([p.name for p in files])
    except BaseException:
        staging.discard()
        raise
    manifest = orjson.loads((config.out / MANIFEST).read_bytes())
    reports = [InputReport(**r) for r in manifest["inputs"]]
    for r in reports:
        if on_input:
            on_input(r)
    return ConvertResult(reports, manifest, cached=True)


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
