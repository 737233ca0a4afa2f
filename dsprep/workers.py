"""Stages 2–3 over slices of records: normalize, render, tokenize and mask — a pure function of (stage, task).

A `Task` is a run of at most `TASK_ROWS` consecutive records, numbered (``seq``) in input order: a slice of one input,
or the records of several small inputs in a row (so that a folder of many small files costs tasks by rows, not by
files); a plain JSON Lines input's part of it is a slice of the file's lines (`dsprep.lines`), read where the task is
processed. `process(stage, task)` turns it into a `BatchResult` (the kept rows as an Arrow table, the reject lines,
the counts per input) and depends on nothing but its arguments, both picklable, and the files a task's slices name:
any engine on this machine can call it, and one elsewhere with `Task.loaded()`. `ordered_results`
runs it inline (one worker) or on a local process pool, hands small tasks to whichever worker is free (so long examples
never leave the other cores idle for long at the tail), keeps at most ``workers * AHEAD`` tasks in flight and yields
results strictly in task order: what is written — every byte of the output — is the same for any number of workers.

Workers start from a ``forkserver`` (``spawn`` where there is none), never by forking a process whose tokenizer
threads may already run; each loads the tokenizer and template itself from the `EncodeSpec` (built-in tokenizers are
cached on disk) with the tokenizer's own thread pool off: one process per core is the parallelism. A worker that
fails, dies or is interrupted ends the whole pool; nothing waits forever.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import itertools
import os
import signal
import sys
import threading
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar, cast

import numpy as np
import orjson
import pyarrow as pa

from dsprep.errors import RowError, WorkerDiedError
from dsprep.lines import LineSlice
from dsprep.normalize import normalize_record, row_id
from dsprep.schema import NORMALIZED, TOKENIZED, TOKENS, int32_array
from dsprep.server import cgroup_cpus, context, default_workers, launch, preload_encoder
from dsprep.sources import Record
from dsprep.specs import FormatSpec

if TYPE_CHECKING:
    from dsprep.encode import Encoder

__all__ = [
    "TASK_ROWS",
    "BatchResult",
    "EncodeSpec",
    "InputShare",
    "SourceInput",
    "Stage",
    "Task",
    "cgroup_cpus",
    "default_workers",
    "die_with_parent",
    "encoder_for",
    "in_order",
    "ordered_results",
    "process",
    "start_server",
    "worker_pool",
]

TASK_ROWS = 256
T = TypeVar("T")
R = TypeVar("R")
AHEAD = 4
WATCH_S = 1.0  # how often a wait for a result looks for a dead worker whose death the executor may have missed
UNPACKABLE = ("preference", "kto")
Row = dict[str, Any]


@dataclass(frozen=True)
class EncodeSpec:
    """What builds an encoder: tokenizer name or folder, template, and the mask and length policy."""

    tokenizer: str
    template: str
    train_on: str
    max_len: int | None
    overflow: str


@functools.lru_cache(maxsize=4)
def encoder_for(spec: EncodeSpec) -> Encoder:
    """The encoder for `spec`, built once per process."""
    from dsprep.encode import EncodeOptions, Encoder
    from dsprep.templates import load_template
    from dsprep.tokenizers import load_tokenizer

    loaded = load_tokenizer(spec.tokenizer)
    template = load_template(spec.template, loaded.chat_template)
    options = EncodeOptions(train_on=spec.train_on, max_len=spec.max_len, overflow=spec.overflow)  # type: ignore[arg-type]
    return Encoder(loaded, template, options)


@dataclass(frozen=True)
class SourceInput:
    """One input as the stages see it: its file name (for row ids), display name, addressing and format spec.

    rows: its records' values are already normalized rows (with their own id, source_file and source_row), which
    are encoded as they are.
    train_on: the input's own loss policy, where it differs from the encoding's (a recipe source's ``train_on``).
    """

    name: str
    display: str
    line_oriented: bool
    spec: FormatSpec | None
    rows: bool = False
    train_on: str | None = None  # trains its rows' tokens so instead of as the encoding says


@dataclass(frozen=True)
class Stage:
    """What every task shares: the inputs, how to encode (None: normalize only), and whether rows are packed."""

    inputs: tuple[SourceInput, ...]
    encoding: EncodeSpec | None
    packing: bool

    @property
    def schema(self) -> pa.Schema:
        return NORMALIZED if self.encoding is None else TOKENIZED


@dataclass(frozen=True)
class Task:
    """Consecutive records of input `input_index` (and, with `spans`, of the inputs after it); `seq` numbers tasks in
    input order.

    spans: ``(input, records)`` pairs, in order, where the records belong to several inputs; empty where they are all
    input `input_index`'s. slices: where some are not in `records` but left in their file to be read where the task
    is processed, the `LineSlice` of each part (each span, or the one input), None for a part held in `records`.
    locations: for an input of normalized rows, each record's location (by `Record.row`) that its reject line names
    (such tasks hold one input).
    """

    seq: int
    input_index: int
    records: list[Record]
    locations: dict[int, str] | None = None
    spans: tuple[tuple[int, int], ...] = ()
    slices: tuple[LineSlice | None, ...] = ()

    @property
    def rows(self) -> int:
        """The number of records the task holds."""
        if self.spans:
            return sum(n for _, n in self.spans)
        return self.slices[0].rows if self.slices and self.slices[0] else len(self.records)

    def parts(self) -> Iterator[tuple[int, list[Record]]]:
        """(input, its records) for each input the task holds records of, in order (slices read now)."""
        at = 0
        for k, (index, n) in enumerate(self.spans or ((self.input_index, self.rows),)):
            lines = self.slices[k] if self.slices else None
            if lines is not None:
                yield index, lines.records()
            else:
                yield index, self.records[at : at + n]
                at += n

    def loaded(self) -> Task:
        """This task with every record in `records` (its slices read now): for a process that cannot read the file."""
        if not self.slices:
            return self
        records = [record for _, part in self.parts() for record in part]
        return Task(self.seq, self.input_index, records, self.locations, self.spans)


@dataclass
class InputShare:
    """What a task's records of one input came to: rows read, kept and rejected, reasons and kinds."""

    input_index: int
    rows_read: int = 0
    rows_kept: int = 0
    rows_rejected: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    kinds: dict[str, int] = field(default_factory=dict)


@dataclass
class BatchResult:
    """A task's outcome: its kept rows (`table`, with each row's raw size in `approx`), reject lines and counts, in
    total and per input (`shares`, one per input the task holds records of, in order).

    `lengths` holds each kept row's ``num_tokens`` when the rows are tokenized (what packing plans from), else is
    empty.

    `failure` is the first reject's one-line message (what `--on-error fail` stops with), and `failed_input` its
    input. `table` is None once the rows are stored elsewhere (`dsprep.pieces`).
    """

    seq: int
    input_index: int
    rows_read: int = 0
    rows_kept: int = 0
    rejects: list[str] = field(default_factory=list)
    shares: list[InputShare] = field(default_factory=list)
    failure: str | None = None
    failed_input: int | None = None
    methods: dict[str, int] = field(default_factory=dict)
    approx: list[int] = field(default_factory=list)
    lengths: Sequence[int] = field(default_factory=list)
    table: pa.Table | None = None

    def __post_init__(self) -> None:
        self.shares = [s if isinstance(s, InputShare) else InputShare(**s) for s in self.shares]  # as stored in JSON


class _Collector:
    """A task's kept rows and rejects; the rejects in the order of their records, whichever stage rejected them."""

    def __init__(self, src: SourceInput, locations: dict[int, str] | None) -> None:
        self.src = src
        self.locations = locations
        self._rejects: list[tuple[int, str, str]] = []  # (record, reject line, one-line message)
        self.reasons: Counter[str] = Counter()
        self.rows: list[Row] = []
        self.approx: list[int] = []
        self.lengths: list[int] = []
        self.kinds: Counter[str] = Counter()
        self.kept = 0

    def reject(self, rec: Record, error: RowError) -> None:
        if self.src.rows:
            assert rec.value is not None and self.locations is not None
            file, position, location = rec.value["source_file"], rec.value["source_row"], self.locations[rec.row]
        else:
            file, position = self.src.display, rec.row
            location = f"{file}:{position + 1}" if self.src.line_oriented else f"{file}[{position}]"
        raw = rec.raw.decode("utf-8", "backslashreplace")
        entry = {"source_file": file, "source_row": position, "location": location, "field": error.field,
                 "reason": error.reason, "message": error.message, "raw": raw}  # fmt: skip
        self._rejects.append((rec.row, orjson.dumps(entry).decode(), f"{location}: {error}"))
        self.reasons[error.reason] += 1

    @property
    def rejects(self) -> list[str]:
        return [line for _, line, _ in sorted(self._rejects, key=lambda r: r[0])]

    @property
    def rejected(self) -> int:
        return len(self._rejects)

    @property
    def failure(self) -> str | None:
        """The first rejected record's message (what `--on-error fail` stops with)."""
        return min(self._rejects, key=lambda r: r[0])[2] if self._rejects else None

    def keep(self, rec: Record, rows: list[Row], *, tokenized: bool = False) -> None:
        self.rows.extend(rows)
        if tokenized:
            self.lengths.extend(row["num_tokens"] for row in rows)
        if self.src.rows:  # no raw bytes: a row's size is about its tokens'
            self.approx.extend(256 + 8 * int(row.get("num_tokens") or 0) for row in rows)
        else:
            self.approx.extend([len(rec.raw)] * len(rows))
        self.kinds[rows[0]["kind"]] += 1
        self.kept += 1


def _normalized(src: SourceInput, records: list[Record], out: _Collector) -> list[tuple[Record, Row]]:
    """An input's records normalized through its spec, with their ids; the others go to `out`'s rejects."""
    kept: list[tuple[Record, Row]] = []
    for rec in map(Record.parsed, records):
        if rec.error is not None or rec.value is None or src.spec is None:
            out.reject(rec, rec.error or RowError("", "wrong_type", "empty record"))
            continue
        try:
            row = normalize_record(rec.value, src.spec)
        except RowError as error:
            out.reject(rec, error)
            continue
        row["id"] = row_id(src.name, rec.row, rec.raw)
        row["source_file"] = src.display
        row["source_row"] = rec.row
        kept.append((rec, row))
    return kept


def _validity(values: list[Any]) -> pa.Buffer | None:
    """The validity bitmap of `values` (None: null), or None where none is null."""
    valid = np.fromiter((v is not None for v in values), np.bool_, len(values))
    return None if valid.all() else pa.py_buffer(np.packbits(valid, bitorder="little"))


def _token_column(values: list[np.ndarray | None]) -> pa.Array:
    """A ``list<int32>`` column from per-row arrays (None: null) in one concatenation, not value by value."""
    lengths = np.fromiter((0 if v is None else len(v) for v in values), np.int64, len(values))
    offsets = np.zeros(len(values) + 1, np.int32)
    np.cumsum(lengths, out=offsets[1:])
    present = [v for v in values if v is not None]
    flat = np.concatenate(present) if present else np.zeros(0, np.int32)
    return pa.Array.from_buffers(
        TOKENS, len(values), [_validity(values), pa.py_buffer(offsets)], children=[int32_array(flat)]
    )


def _plain_column(values: list[Any], kind: pa.DataType) -> pa.Array | None:
    """`values` as a string, integer or boolean array built from its buffers; None for another type, or values of
    another Python type (pyarrow's conversion then converts or refuses them). That conversion imports pandas the
    first time it runs: 0.2 s of CPU in every worker process."""
    if pa.types.is_string(kind):
        python_type: type = str
    elif pa.types.is_boolean(kind):
        python_type = bool
    elif pa.types.is_integer(kind):
        python_type = int
    else:
        return None
    if not all(v is None or type(v) is python_type for v in values):
        return None
    validity = _validity(values)
    if python_type is str:
        data = [b"" if v is None else v.encode() for v in values]
        offsets = np.zeros(len(data) + 1, np.int64)
        np.cumsum(np.fromiter(map(len, data), np.int64, len(data)), out=offsets[1:])
        if offsets[-1] >= 1 << 31:
            return None
        buffers = [validity, pa.py_buffer(offsets.astype(np.int32)), pa.py_buffer(b"".join(data))]
    else:
        flat = np.fromiter((0 if v is None else v for v in values), kind.to_pandas_dtype(), len(values))
        buffers = [validity, pa.py_buffer(np.packbits(flat, bitorder="little") if python_type is bool else flat)]
    return pa.Array.from_buffers(kind, len(values), buffers)


def _table(rows: list[Row], schema: pa.Schema) -> pa.Table:
    """Rows as a table of `schema` (as `pa.Table.from_pylist`, with token columns of arrays taken whole, and columns
    of strings, integers and booleans built from their buffers)."""
    columns = []
    for f in schema:
        values = [row.get(f.name) for row in rows]
        if f.type == TOKENS and all(v is None or isinstance(v, np.ndarray) for v in values):
            columns.append(_token_column(values))
        else:
            built = _plain_column(values, f.type)
            columns.append(pa.array(values, type=f.type) if built is None else built)
    return pa.Table.from_arrays(columns, schema=schema)


def _encoded(encoder: Encoder, kept: list[tuple[_Collector, Record, Row]]) -> list[list[Row] | RowError]:
    """Encode the kept rows, each input's with its own `SourceInput.train_on` where it has one; in order."""
    policies = [out.src.train_on for out, _, _ in kept]
    if not any(policies):
        return encoder.encode([row for _, _, row in kept])
    results: list[list[Row] | RowError] = [[] for _ in kept]
    for policy in dict.fromkeys(policies):
        at = [i for i, p in enumerate(policies) if p == policy]
        variant = encoder if policy is None else encoder.training(policy)  # type: ignore[arg-type]
        for i, result in zip(at, variant.encode([kept[i][2] for i in at]), strict=True):
            results[i] = result
    return results


def process(stage: Stage, task: Task) -> BatchResult:
    """Normalize (and encode) one task's records; a pure function of the stage and the task.

    Records of an input of normalized rows (`SourceInput.rows`) are taken as they are.
    """
    collectors: list[tuple[int, list[Record], _Collector]] = []
    kept: list[tuple[_Collector, Record, Row]] = []
    for index, records in task.parts():
        src = stage.inputs[index]
        out = _Collector(src, task.locations)
        collectors.append((index, records, out))
        rows = [(rec, cast(Row, rec.value)) for rec in records] if src.rows else _normalized(src, records, out)
        kept.extend((out, rec, row) for rec, row in rows)
    methods: dict[str, int] = {}
    if stage.encoding is None:
        for out, rec, row in kept:
            out.keep(rec, [row])
    else:
        if stage.packing:
            for out, rec, row in kept:
                if row["kind"] in UNPACKABLE:
                    message = f"{row['kind']} rows hold separate prompt/continuation ids and are not packed"
                    out.reject(rec, RowError("kind", "not_packable", message))
            kept = [(out, rec, row) for out, rec, row in kept if row["kind"] not in UNPACKABLE]
        encoder = encoder_for(stage.encoding)
        before = dict(encoder.method_counts)
        results = _encoded(encoder, kept)
        methods = {k: v - before.get(k, 0) for k, v in encoder.method_counts.items()}
        for (out, rec, _), result in zip(kept, results, strict=True):
            if isinstance(result, RowError):
                out.reject(rec, result)
            else:
                out.keep(rec, result, tokenized=True)
    outs = [out for _, _, out in collectors]
    failed = next(((index, out.failure) for index, _, out in collectors if out.failure is not None), (None, None))
    shares = [
        InputShare(index, len(records), out.kept, out.rejected, dict(out.reasons), dict(out.kinds))
        for index, records, out in collectors
    ]
    return BatchResult(
        seq=task.seq, input_index=task.input_index, rows_read=task.rows, rows_kept=sum(o.kept for o in outs),
        rejects=[line for o in outs for line in o.rejects], shares=shares, failure=failed[1], failed_input=failed[0],
        methods=methods, approx=[a for o in outs for a in o.approx], lengths=[n for o in outs for n in o.lengths],
        table=_table([row for o in outs for row in o.rows], stage.schema),
    )  # fmt: skip


Sink = Callable[[BatchResult], BatchResult]  # what happens to a result where it was computed (e.g. store it)

_STAGE: Stage | None = None
_SINK: Sink | None = None


def die_with_parent() -> None:
    """Have the kernel kill this process when its parent dies (Linux), so a killed convert leaves no workers behind."""
    parent = os.getppid()
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # pragma: no cover - not on Linux
        return
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)


def _init_encoding(spec: EncodeSpec | None) -> None:
    """A worker's start: it dies with its parent, leaves Ctrl-C to it, runs one thread, and loads the encoder."""
    die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and ends the pool
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _settle(spec)


def _init(stage: Stage, sink: Sink | None) -> None:
    global _STAGE, _SINK
    _STAGE, _SINK = stage, sink
    _init_encoding(stage.encoding)


def _work(task: Task) -> BatchResult:
    assert _STAGE is not None
    result = process(_STAGE, task)
    return _SINK(result) if _SINK else result


def start_server(spec: EncodeSpec | None) -> None:
    """Start the fork server now, so it loads the encoder while this process does its own start-up work."""
    launch(None if spec is None else asdict(spec))


def warm_pyarrow() -> None:
    """Let pyarrow import pandas now: it does the first time it converts values to an array (0.2 s of CPU, where
    pandas is installed). Tokenized rows never need it in a worker (`_table` builds their columns from buffers)."""
    pa.array(np.zeros(1, np.int32))


def _settle(spec: EncodeSpec | None) -> None:
    """Load the encoder, then freeze what start-up built (modules, tokenizer, template): the garbage collector's
    later passes then walk only the objects the rows make (they took about 5% of a worker's time walking the rest)."""
    if spec is not None:
        encoder_for(spec)
    gc.freeze()


@contextlib.contextmanager
def _settled(spec: EncodeSpec | None) -> Iterator[None]:
    """`_settle` for the length of the block, in a process that is not dsprep's own: its objects thaw after (left
    alone where the process had frozen some itself)."""
    if gc.get_freeze_count():
        yield
        return
    _settle(spec)
    try:
        yield
    finally:
        gc.unfreeze()


@functools.lru_cache(maxsize=1)
def _serial_tokenizer() -> None:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one worker means one core


def ordered_results(
    stage: Stage,
    tasks: Iterator[Task],
    workers: int,
    *,
    sink: Sink | None = None,
    done: Callable[[int], BatchResult | None] | None = None,
) -> Iterator[BatchResult]:
    """Process `tasks` on `workers` processes (inline for 1); yield each result, after `sink`, in task order.

    done(seq) may return a result already computed (a resumed run); such tasks are not processed again.
    """
    tasks = iter(tasks)
    head = list(itertools.islice(tasks, 2))
    tasks = itertools.chain(head, tasks)
    completed = (lambda t: done(t.seq)) if done else None
    if workers <= 1 or len(head) < 2:
        _serial_tokenizer()
        with _settled(stage.encoding):
            for task in tasks:
                yield _here(stage, task, sink, completed)
        return
    with _pool(workers, stage.encoding, _init, (stage, sink)) as pool:
        started, tasks = _while_starting(pool, stage, tasks, workers, sink=sink, done=completed)
        yield from in_order(pool, _work, tasks, workers * AHEAD, done=completed, started=started)


Entry = tuple[bool, Any]  # (submitted, its future or its result)


def _here(
    stage: Stage, task: Task, sink: Sink | None, done: Callable[[Task], BatchResult | None] | None
) -> BatchResult:
    """A task's result computed in this process (after `sink`), or the one `done` has for it already."""
    previous = done(task) if done else None
    if previous is None:
        result = process(stage, task)
        previous = sink(result) if sink else result
    return previous


def _entry(pool: Executor, fn: Callable[[T], R], item: T, done: Callable[[T], R | None] | None) -> Entry:
    """An item's entry: the result `done` has for it already, else its future from `pool`."""
    previous = done(item) if done else None
    return (False, previous) if previous is not None else (True, _submit(pool, fn, item))


def _while_starting(
    pool: Executor,
    stage: Stage,
    tasks: Iterator[Task],
    workers: int,
    *,
    sink: Sink | None,
    done: Callable[[Task], BatchResult | None] | None,
) -> tuple[list[Entry], Iterator[Task]]:
    """Start the pool's workers with its first `workers` tasks, and meanwhile process the tasks after them in this
    process, until the workers have started; the entries of the tasks taken, in order, and the tasks left.

    Workers wait for the fork server to load the encoder (building its fastokens engine takes 1–2 s, and a server
    started only now also imports dsprep first): this process, idle until then, encodes meanwhile with tiktoken (no
    engine of its own to build), as one worker does while its engine builds. The results are the same either way.
    """
    if stage.encoding is None or context().get_start_method() != "forkserver":
        return [], tasks
    start_server(stage.encoding)  # from this thread, not the starter: the server dies with the thread that started it
    first = list(itertools.islice(tasks, workers))
    entries: list[Entry] = []
    failed: list[BaseException] = []
    started = threading.Event()

    def start() -> None:
        try:
            for task in first:  # the first submissions start the worker processes (returning once they are forked)
                entries.append(_entry(pool, _work, task, done))
        except BaseException as exc:  # raised where the tasks are waited for
            failed.append(exc)
        finally:
            started.set()

    starter = threading.Thread(target=start, name="dsprep-start-workers", daemon=True)
    starter.start()
    inline: list[Entry] = []
    fast = encoder_for(stage.encoding).fast
    _serial_tokenizer()
    try:
        with fast.ordinary.tiktoken_only() if fast is not None else contextlib.nullcontext():
            inline.extend((False, _here(stage, task, sink, done)) for task in _until(started, tasks))
    finally:
        starter.join()
    if failed:
        raise failed[0]
    return entries + inline, tasks


def _until(event: threading.Event, items: Iterator[T]) -> Iterator[T]:
    """`items` until `event` is set (checked before each one is taken); those left stay in `items`."""
    end = object()
    while not event.is_set():
        item = next(items, end)
        if item is end:
            return
        yield cast(T, item)


def in_order(
    pool: Executor,
    fn: Callable[[T], R],
    items: Iterable[T],
    limit: int,
    *,
    done: Callable[[T], R | None] | None = None,
    started: Sequence[Entry] = (),
) -> Iterator[R]:
    """`fn(item)` for each item on `pool`, at most `limit` in flight, yielded in the items' order (whichever finishes
    first). done(item) may return an item's result already computed; such an item is not submitted. started: the
    entries of items taken before these, submitted or done, to be yielded first."""
    pending: deque[Entry] = deque(started)
    in_flight = sum(submitted for submitted, _ in pending)
    for item in items:
        pending.append(_entry(pool, fn, item, done))
        in_flight += pending[-1][0]
        while in_flight >= limit or len(pending) >= limit * AHEAD or (pending and not pending[0][0]):
            submitted, _ = pending[0]
            in_flight -= submitted
            yield _result(pool, pending.popleft())
    while pending:
        yield _result(pool, pending.popleft())


@contextlib.contextmanager
def _pool(
    workers: int, spec: EncodeSpec | None, initializer: Callable[..., None], initargs: tuple[Any, ...]
) -> Iterator[ProcessPoolExecutor]:
    pool = ProcessPoolExecutor(workers, mp_context=context(), initializer=initializer, initargs=initargs)
    try:
        with _detached_main(), preload_encoder(None if spec is None else asdict(spec)):
            yield pool
    finally:
        _stop(pool)


def worker_pool(workers: int, spec: EncodeSpec | None) -> contextlib.AbstractContextManager[ProcessPoolExecutor]:
    """`workers` processes started as convert's are, each with `spec`'s encoder loaded (`encoder_for`) where one is
    given, for work other than `process`; stopped when the block ends."""
    return _pool(workers, spec, _init_encoding, (spec,))


@contextlib.contextmanager
def _detached_main() -> Iterator[None]:
    """Keep new workers from re-running the caller's main script: they run dsprep's functions only."""
    main = sys.modules.get("__main__")
    saved = {name: getattr(main, name) for name in ("__spec__", "__file__") if hasattr(main, name)}
    try:
        for name in saved:
            setattr(main, name, None) if name == "__spec__" else delattr(main, name)
        yield
    finally:
        for name, value in saved.items():
            setattr(main, name, value)


def _died() -> WorkerDiedError:
    return WorkerDiedError(
        "a worker process died (killed by a signal, or out of memory?): run the same command again to resume "
        "from the completed pieces, with fewer --workers if memory ran out"
    )


def _submit(pool: Executor, fn: Callable[[T], R], item: T) -> Any:
    """`pool.submit`, which raises BrokenProcessPool itself once the pool has seen a worker die. A submit may also
    start a worker: where another one dies meanwhile, the executor's thread closes the pipes being handed to the new
    one, and the start fails with an OSError, which is the same death."""
    try:
        return pool.submit(fn, item)
    except BrokenProcessPool:
        raise _died() from None
    except OSError:
        if getattr(pool, "_broken", False) or _lost_worker(pool):
            raise _died() from None
        raise


def _result(pool: Executor, entry: tuple[bool, Any]) -> Any:
    """An entry's result: its future's, waited for while no worker of `pool` has died."""
    submitted, value = entry
    if not submitted:
        return value
    try:
        while True:
            try:
                return value.result(timeout=WATCH_S)
            except TimeoutError:
                if _lost_worker(pool):
                    raise _died() from None
    except BrokenProcessPool:
        raise _died() from None


def _lost_worker(pool: Executor) -> bool:
    """Whether a worker process of `pool` has ended. The executor sees a death itself, except that of a worker killed
    while it sent a result: its thread then waits for the rest of that message, and no pending future ever ends."""
    try:
        processes = _worker_processes(pool)
    except RuntimeError:  # changed size meanwhile (the executor's thread replaces workers only as it shuts down)
        return False
    return any(p.exitcode is not None for p in processes)


def _worker_processes(pool: Executor) -> list[Any]:
    """The worker processes of a process pool as it holds them now (none for another executor, or once shut down)."""
    return list((getattr(pool, "_processes", None) or {}).values())


def _stop(pool: ProcessPoolExecutor) -> None:
    """Stop the pool's workers, and the executor's thread even where a worker killed while it sent a result left that
    thread waiting for the rest of the message (it would hang the interpreter's exit, which joins it): with every
    worker gone, closing this process's end for writing results leaves that pipe without a writer, so the wait ends."""
    processes = _worker_processes(pool)
    writer = getattr(getattr(pool, "_result_queue", None), "_writer", None)  # before the shutdown lets go of it
    pool.shutdown(wait=False, cancel_futures=True)
    for p in processes:
        if p.is_alive():
            p.terminate()
    for p in processes:
        p.join(timeout=5)
    if writer is not None and all(p.exitcode is not None for p in processes):
        with contextlib.suppress(OSError):
            writer.close()
