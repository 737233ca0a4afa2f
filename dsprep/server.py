"""The fork server that convert's and inspect's workers start from, and how many workers a run gets by default.

Light on purpose (standard library and orjson only): the command line starts the server before it imports the rest
of dsprep, so that the server's own start-up (importing dsprep, loading the encoder: `dsprep.forkserver`) runs on
another core beside the command's. `dsprep.workers` forks its workers from it.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.context
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from dsprep.config import ConvertConfig

__all__ = [
    "ENGINE_ENV",
    "FASTOKENS_MIN_BYTES",
    "PRELOAD",
    "PRELOAD_ENV",
    "SERVER_MIN_BYTES",
    "cgroup_cpus",
    "context",
    "default_workers",
    "encoding",
    "engine_for",
    "launch",
    "preload_encoder",
    "quiet_blas",
    "wants_fastokens",
    "wants_server",
]

CGROUP = Path("/sys/fs/cgroup")
PRELOAD = ["dsprep.forkserver"]  # imported once by the fork server, before it forks workers
PRELOAD_ENV = "DSPREP_FORKSERVER_ENCODER"
SERVER_MIN_BYTES = 1 << 20  # smaller inputs rarely make more than one task: no worker process is started early
ENGINE_ENV = "DSPREP_ENCODER_ENGINE"  # "fastokens" or "tiktoken": the engine a run encodes with (unset: fastokens)
# numpy's BLAS library starts a thread per core when numpy is imported, and they spin for about 0.1 s of CPU in all
# before they sleep; dsprep multiplies no matrices, so its processes keep BLAS to one thread (unless told otherwise)
QUIET_BLAS = {"OPENBLAS_NUM_THREADS": "1"}
# smaller inputs are encoded by tiktoken: they take less time than fastokens takes to build (0.7 s; `dsprep.ordinary`)
FASTOKENS_MIN_BYTES = 8 << 20


def wants_fastokens() -> bool:
    """Whether this process's run encodes with fastokens: unless `ENGINE_ENV` says ``tiktoken`` (`engine_for`)."""
    return os.environ.get(ENGINE_ENV, "fastokens") != "tiktoken"


@contextlib.contextmanager
def engine_for(input_bytes: int) -> Iterator[None]:
    """Choose the engine of a run over `input_bytes` of input, for this process and the fork server and workers it
    starts meanwhile (`ENGINE_ENV`, unless set already): tiktoken below `FASTOKENS_MIN_BYTES`, fastokens above."""
    if ENGINE_ENV in os.environ:
        yield
        return
    os.environ[ENGINE_ENV] = "fastokens" if input_bytes >= FASTOKENS_MIN_BYTES else "tiktoken"
    try:
        yield
    finally:
        os.environ.pop(ENGINE_ENV, None)


def default_workers() -> int:
    """The number of cores this process may use: those it may run on, no more than a container's CPU quota allows
    (a pod limited to 2 CPUs on a 64-core node gets 2 workers, not 64 that each load the tokenizer)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        cores = os.cpu_count() or 1
    quota = cgroup_cpus()
    return max(1, min(cores, quota) if quota is not None else cores)


def cgroup_cpus(root: Path | None = None) -> int | None:
    """The CPUs a cgroup quota allows this process (rounded up), from cgroup v2's ``cpu.max`` or v1's
    ``cpu.cfs_quota_us``/``cpu.cfs_period_us`` under `root` (default `CGROUP`); None where no quota is set or none
    can be read."""
    root = CGROUP if root is None else root
    for quota_file, period_file in (("cpu.max", None), ("cpu/cpu.cfs_quota_us", "cpu/cpu.cfs_period_us"),
                                    ("cpu,cpuacct/cpu.cfs_quota_us", "cpu,cpuacct/cpu.cfs_period_us")):  # fmt: skip
        try:
            fields = (root / quota_file).read_text().split()
            if period_file is not None:
                fields += (root / period_file).read_text().split()
            quota, period = int(fields[0]), int(fields[1])
        except (OSError, ValueError, IndexError):  # absent, unreadable, or "max" (no quota)
            continue
        return max(1, -(-quota // period)) if quota > 0 and period > 0 else None
    return None


def context() -> multiprocessing.context.BaseContext:
    """The start method workers use: the fork server (preloading `PRELOAD`), ``spawn`` where there is none."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        forking = multiprocessing.get_context("forkserver")
        forking.set_forkserver_preload(PRELOAD)
        return forking
    return multiprocessing.get_context("spawn")  # pragma: no cover - not on Linux


def quiet_blas() -> None:
    """Keep numpy's BLAS to one thread in this process, and the processes it starts, unless the environment says how
    many it has (`QUIET_BLAS`); in effect where numpy is not imported yet."""
    for name, value in QUIET_BLAS.items():
        os.environ.setdefault(name, value)


@contextlib.contextmanager
def preload_encoder(encoding: Mapping[str, Any] | None) -> Iterator[None]:
    """Name the encoder (an `EncodeSpec`'s fields) for a fork server started meanwhile to load before it forks, and
    keep numpy's BLAS to one thread there (`QUIET_BLAS`)."""
    told = {name: value for name, value in QUIET_BLAS.items() if name not in os.environ}
    if encoding is not None:
        told[PRELOAD_ENV] = orjson.dumps(dict(encoding)).decode()
    before = {name: os.environ.get(name) for name in told}
    os.environ.update(told)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def launch(encoding: Mapping[str, Any] | None) -> None:
    """Start the fork server now (a no-op where it runs), loading the encoder `encoding` names, if any."""
    if "forkserver" not in multiprocessing.get_all_start_methods():  # pragma: no cover - not on Linux
        return
    from multiprocessing import forkserver

    context()
    with preload_encoder(encoding):
        forkserver.ensure_running()


def encoding(config: ConvertConfig) -> dict[str, Any] | None:
    """The fields of the `dsprep.workers.EncodeSpec` a convert with `config` encodes with; None without a tokenizer."""
    if config.tokenizer is None:
        return None
    return {
        "tokenizer": config.tokenizer,
        "template": config.template,
        "train_on": config.train_on,
        "max_len": config.max_len,
        "overflow": config.overflow,
    }


def wants_server(config: ConvertConfig, input_bytes: int) -> bool:
    """Whether a convert with `config` over `input_bytes` of input starts its workers' fork server early: a local run
    on more than one worker with enough input to give them more than one task."""
    return config.engine == "local" and (config.workers or default_workers()) > 1 and input_bytes > SERVER_MIN_BYTES
