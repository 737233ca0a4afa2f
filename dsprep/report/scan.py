"""Read raw inputs once and check their rows (and, with a tokenizer, measure their tokens) in jobs, here or on workers.

Each input's format is chosen first, from a sample (`choose_format`). Its records are then read in this process —
JSON lines left unparsed — and cut into jobs of at most `TASK_ROWS` records. `scan_job`, a pure function, parses,
normalizes and checks a job's records (`check_batch`) and encodes the kept ones (`measure_rows`). With more than one
worker, jobs run on a pool of processes started as convert's are, at most ``workers * AHEAD`` in flight, and their
outcomes are merged in the order the jobs came: the report is the same for any number of workers.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass

from dsprep.report.raw import RawInspection, check_batch, choose_format
from dsprep.report.tokens import Measured, TokenStats, measure_rows
from dsprep.sources import InputFile, Progress, Record, read_records
from dsprep.specs import FormatSpec
from dsprep.workers import AHEAD, TASK_ROWS, EncodeSpec, worker_pool

__all__ = ["Job", "Scanned", "scan_inputs", "scan_job"]


@dataclass(frozen=True)
class Job:
    """A slice of one input's records, with what checking and measuring them needs.

    spec: the input's format (None: none was found; `no_format` says why). encoding: the specs `measure_rows` encodes
    with (None: no token statistics). pieces: how many encoded rows get token pieces (for shown examples).
    """

    file: InputFile
    spec: FormatSpec | None
    no_format: str | None
    records: list[Record]
    encoding: tuple[EncodeSpec, EncodeSpec] | None
    pieces: int


@dataclass
class Scanned:
    """A job's outcome: its part of the input's inspection, and each kept row's (location, kind) and measurement."""

    part: RawInspection
    kept: list[tuple[str, str]]
    measured: list[Measured]


def scan_job(job: Job) -> Scanned:
    """Check (and measure) one job's records; a pure function of the job."""
    part, kept = check_batch(job.file, job.spec, job.no_format, job.records)
    rows = [row for _, row in kept]
    measured = measure_rows(*job.encoding, rows, job.pieces) if job.encoding is not None and rows else []
    return Scanned(part, [(where, row["kind"]) for where, row in kept], measured)


class _Merger:
    """Adds outcomes to their inspections and the token statistics, in the order their jobs were handed in."""

    def __init__(self, stats: TokenStats | None, workers: int) -> None:
        self.stats = stats
        self.workers = workers
        self._pending: deque[tuple[RawInspection, Future[Scanned]]] = deque()

    def add(self, ins: RawInspection, scanned: Scanned) -> None:
        ins.merge(scanned.part)
        if self.stats is not None:
            self.stats.add(scanned.kept, scanned.measured)

    def wait(self, ins: RawInspection, future: Future[Scanned]) -> None:
        """Hold an outcome still being computed; add the oldest ones while too many are in flight."""
        self._pending.append((ins, future))
        while len(self._pending) >= self.workers * AHEAD:
            self.add_oldest()

    def add_oldest(self) -> None:
        ins, future = self._pending.popleft()
        self.add(ins, future.result())

    def finish(self) -> None:
        while self._pending:
            self.add_oldest()


def scan_inputs(files: Sequence[InputFile], *, fmt: str, sample_rows: int, stats: TokenStats | None, workers: int,
                on_bytes: Progress | None = None) -> list[RawInspection]:  # fmt: skip
    """Inspect every file (`fmt`: "auto" or a format, as for convert), adding kept rows' tokens to `stats`; jobs run
    in this process for `workers` 1, else on that many processes. The bytes read go to `on_bytes`."""
    merger = _Merger(stats, workers)
    inspections: list[RawInspection] = []
    with contextlib.ExitStack() as stack:
        pool = None
        for f in files:
            spec, info = choose_format(f, fmt, sample_rows)
            ins = RawInspection(f, info)
            inspections.append(ins)
            for batch in read_records(f, on_bytes, defer_parsing=True):
                for start in range(0, len(batch), TASK_ROWS):
                    records = batch[start : start + TASK_ROWS]
                    if workers <= 1:
                        pieces = stats.show - len(stats.examples) if stats is not None else 0
                        merger.add(ins, scan_job(_job(f, spec, info, records, stats, pieces)))
                        continue
                    if pool is None:
                        pool = stack.enter_context(worker_pool(workers, stats.specs[0] if stats else None))
                    job = _job(f, spec, info, records, stats, stats.show if stats is not None else 0)
                    merger.wait(ins, pool.submit(scan_job, job))
        merger.finish()
    return inspections


def _job(f: InputFile, spec: FormatSpec | None, info: dict[str, object], records: list[Record],
         stats: TokenStats | None, pieces: int) -> Job:  # fmt: skip
    error = info.get("error")
    return Job(f, spec, error if isinstance(error, str) else None, records, stats.specs if stats else None, pieces)
