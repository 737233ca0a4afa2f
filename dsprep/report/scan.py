"""Read raw inputs once and check their rows (and, with a tokenizer, measure their tokens) in jobs, here or on workers.

Each input's format is chosen first, from a sample (`choose_format`). Its records are then read in this process —
JSON lines left unparsed — and cut into jobs of at most `TASK_ROWS` records. `scan_job`, a pure function, parses,
normalizes and checks a job's records (`check_batch`) and encodes the kept ones (`measure_rows`). With more than one
worker, jobs run on a pool of processes started as convert's are, at most ``workers * AHEAD`` in flight, and their
outcomes are merged in the order the jobs came: the report is the same for any number of workers. The jobs of small
inputs travel to the workers together, up to `TASK_ROWS` records at a time (`scan_jobs`), so that a folder of many
small files costs round trips by rows, not by files.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from dsprep.report.raw import RawInspection, check_batch, choose_format
from dsprep.report.tokens import Measured, TokenStats, measure_rows
from dsprep.sources import InputFile, Progress, Record, read_records
from dsprep.specs import FormatSpec
from dsprep.workers import AHEAD, TASK_ROWS, EncodeSpec, in_order, worker_pool

__all__ = ["Job", "Scanned", "scan_inputs", "scan_job", "scan_jobs"]


@dataclass(frozen=True)
class Job:
    """A slice of the records of input `input_index`, with what checking and measuring them needs.

    spec: the input's format (None: none was found; `no_format` says why). encoding: the specs `measure_rows` encodes
    with (None: no token statistics). pieces: how many encoded rows get token pieces (for shown examples).
    """

    input_index: int
    file: InputFile
    spec: FormatSpec | None
    no_format: str | None
    records: list[Record]
    encoding: tuple[EncodeSpec, EncodeSpec] | None
    pieces: int


@dataclass
class Scanned:
    """A job's outcome: its part of its input's inspection, and each kept row's (location, kind) and measurement."""

    input_index: int
    part: RawInspection
    kept: list[tuple[str, str]]
    measured: list[Measured]


def scan_job(job: Job) -> Scanned:
    """Check (and measure) one job's records; a pure function of the job. A row that encoding rejects (as convert
    would, with the run's length policy) moves from the part's kept rows to its rejects."""
    part, kept = check_batch(job.file, job.spec, job.no_format, job.records)
    rows = [row for _, row in kept]
    measured = measure_rows(*job.encoding, rows, job.pieces) if job.encoding is not None and rows else []
    for (where, row), m in zip(kept, measured, strict=False):  # no measurements without a tokenizer
        if m.reject is not None:
            part.reject(where, row["kind"], *m.reject)
    return Scanned(job.input_index, part, [(where, row["kind"]) for where, row in kept], measured)


def scan_jobs(jobs: list[Job]) -> list[Scanned]:
    """`scan_job` for each of several jobs, in order (the jobs of small inputs, sent to a worker at once)."""
    return [scan_job(job) for job in jobs]


def _together(jobs: Iterable[Job]) -> Iterator[list[Job]]:
    """Consecutive jobs in lists of at least `TASK_ROWS` records (the last one fewer): one job each for a large input,
    several for small ones."""
    group: list[Job] = []
    records = 0
    for job in jobs:
        group.append(job)
        records += len(job.records)
        if records >= TASK_ROWS:
            yield group
            group, records = [], 0
    if group:
        yield group


def scan_inputs(files: Sequence[InputFile], *, fmt: str, sample_rows: int, stats: TokenStats | None, workers: int,
                on_bytes: Progress | None = None) -> list[RawInspection]:  # fmt: skip
    """Inspect every file (`fmt`: "auto" or a format, as for convert), adding kept rows' tokens to `stats`; jobs run
    in this process for `workers` 1, else on that many processes. The bytes read go to `on_bytes`."""
    inspections: list[RawInspection] = []
    with contextlib.ExitStack() as stack:
        jobs = _jobs(files, fmt, sample_rows, stats, inspections, on_bytes)
        if workers <= 1:
            outcomes: Iterator[Scanned] = map(scan_job, jobs)
        else:
            pool = stack.enter_context(worker_pool(workers, stats.specs[0] if stats is not None else None))
            outcomes = itertools.chain.from_iterable(in_order(pool, scan_jobs, _together(jobs), workers * AHEAD))
        for scanned in outcomes:
            inspections[scanned.input_index].merge(scanned.part)
            if stats is not None:
                stats.add(scanned.kept, scanned.measured)
    return inspections


def _jobs(files: Sequence[InputFile], fmt: str, sample_rows: int, stats: TokenStats | None,
          inspections: list[RawInspection], on_bytes: Progress | None) -> Iterator[Job]:  # fmt: skip
    """Each file's jobs, in input order; a file's inspection joins `inspections` once its format is chosen. A job
    asks for the token pieces of the examples still to show when it is made: jobs' outcomes are merged in order, so
    no more are missing by the time its own is merged (none once every example is shown)."""
    encoding = stats.specs if stats is not None else None
    for index, f in enumerate(files):
        spec, info = choose_format(f, fmt, sample_rows)
        inspections.append(RawInspection(f, info))
        for batch in read_records(f, on_bytes, defer_parsing=True):
            for start in range(0, len(batch), TASK_ROWS):
                pieces = 0 if stats is None else stats.show - len(stats.examples)
                yield Job(index, f, spec, info["error"], batch[start : start + TASK_ROWS], encoding, pieces)
