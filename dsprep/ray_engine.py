"""The Ray Data engine: the local workers' stage function (`dsprep.workers.process`) spread over a Ray cluster.

Tasks (slices of records, numbered in input order) go to Ray in windows of `WINDOW_TASKS`: each window becomes a
``ray.data.from_items`` dataset of pickled tasks, ``map_batches`` runs `process` on each, and the results come back
to this process, where they are stored as pieces and handed on strictly in task order; one window runs on the
cluster while the previous one is handed on. Everything after that — rejects, the packing plan over the globally
collected lengths, the shards — is the local engine's code, so the output is byte-identical to ``--engine local``
for any cluster size or scheduling, and windows keep the driver's memory bounded like the local pool's look-ahead.

What goes to the cluster: the `Stage` (each input's name and format spec; the tokenizer and template as given —
a built-in name, a folder or .jinja path — and the length and mask options), and the tasks' raw records. Each Ray
worker loads the tokenizer and template itself, once, so a folder or file must be readable at the same path on
every node; built-in tokenizers are built from mistral-common on each node. What comes back: each task's kept rows
as an Arrow table, its reject lines and counts (or the dsprep error it raised, which ends the run here as on the
local engine). Ray is imported only here, behind the ``ray`` extra.
"""

from __future__ import annotations

import functools
import itertools
import logging
import os
import pickle
import socket
import warnings
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from dsprep.errors import DsprepError, EngineError
from dsprep.workers import BatchResult, Stage, Task

__all__ = ["WINDOW_TASKS", "ray_results"]

WINDOW_TASKS = 64
EXTRA = "ray"
CONNECT_SECONDS = 10  # how long --ray-address may take to accept a connection


def _processed(stage: Stage, task: bytes) -> bytes:
    """One pickled task's pickled result, or its pickled dsprep error: Ray's own wrapping of an error raised here
    keeps only its text, and the driver raises the error itself, as the local engine does."""
    from dsprep.workers import process

    try:
        return pickle.dumps(process(stage, pickle.loads(task)), protocol=5)
    except DsprepError as exc:
        return pickle.dumps(exc, protocol=5)


def _process_batch(batch: dict[str, Any], stage: Stage) -> dict[str, Any]:
    """map_batches function (runs on the cluster): unpickle each task, run the stage, pickle its result."""
    import numpy as np

    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # Ray runs one task per CPU; the tokenizer must not add threads
    results = [_processed(stage, task) for task in batch["task"]]
    return {"seq": np.asarray(batch["seq"]), "result": np.array(results, dtype=object)}


def _run_window(todo: list[dict[str, Any]], stage: Stage) -> dict[int, BatchResult | DsprepError]:
    """Run one window of pickled tasks through Ray Data; their results by task number."""
    import ray.data

    if not todo:
        return {}
    tasks = ray.data.from_items(todo, override_num_blocks=len(todo))
    results = tasks.map_batches(functools.partial(_process_batch, stage=stage), batch_size=1)
    return {int(row["seq"]): pickle.loads(row["result"]) for row in results.iter_rows()}


def _reachable(address: str) -> None:
    """Fail at once, in one line, when nothing answers at a HOST:PORT `address` (Ray itself retries for minutes)."""
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        return  # 'auto', or a form Ray resolves itself
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_SECONDS):
            pass
    except OSError as exc:
        raise EngineError(f"--ray-address {address}: no Ray cluster answers there ({exc.strerror or exc})") from None


def _connect(ray: Any, address: str | None, workers: int) -> bool:
    """Join the cluster at `address`, or start a local Ray with `workers` CPUs (whatever ``RAY_ADDRESS`` says);
    True if this call started Ray."""
    if ray.is_initialized():
        return False
    options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.ERROR}
    if address:
        _reachable(address)
        try:
            ray.init(address=address, **options)
        except ConnectionError as exc:  # Ray's first sentence; its advice names Ray's own flags
            reason = str(exc).split(". ", 1)[0].rstrip(".")
            raise EngineError(f"--ray-address {address}: {reason} (start one with `ray start --head`)") from None
    else:
        ray.init(address="local", num_cpus=workers, **options)
    return True


def ray_results(
    stage: Stage,
    tasks: Iterator[Task],
    workers: int,
    *,
    sink: Callable[[BatchResult], BatchResult] | None = None,
    done: Callable[[int], BatchResult | None] | None = None,
    address: str | None = None,
) -> Iterator[BatchResult]:
    """Process `tasks` with Ray Data (on the cluster at `address`, else a local Ray with `workers` CPUs); yield each
    result, after `sink` (which runs here), in task order.

    done(seq) may return a result already computed (a resumed run); such tasks are not sent again.
    """
    from dsprep.integrations.common import require

    ray = require("ray", EXTRA)
    require("ray.data", EXTRA)
    started = _connect(ray, address, workers)
    logging.getLogger("ray.data").setLevel(logging.ERROR)  # no per-dataset progress or "execution finished" lines
    with warnings.catch_warnings():  # Ray Data's first DataContext warns about its own default (ray 2.60)
        warnings.simplefilter("ignore", DeprecationWarning)
        context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    try:
        # one window runs on the cluster while the previous one's results are handed on
        with ThreadPoolExecutor(max_workers=1) as pool:
            pending: deque[tuple[list[Task], dict[int, BatchResult], Future[dict[int, BatchResult | DsprepError]]]]
            pending = deque()
            tasks = iter(tasks)
            while True:
                window = list(itertools.islice(tasks, WINDOW_TASKS))
                if window:
                    ready = {t.seq: r for t in window if done and (r := done(t.seq)) is not None}
                    todo = [
                        {"seq": t.seq, "task": pickle.dumps(t.loaded(), protocol=5)}
                        for t in window
                        if t.seq not in ready
                    ]
                    pending.append((window, ready, pool.submit(_run_window, todo, stage)))
                if pending and (len(pending) > 1 or not window):
                    head, ready, future = pending.popleft()
                    computed = future.result()
                    for task in head:
                        if task.seq in ready:
                            yield ready.pop(task.seq)
                        else:
                            result = computed.pop(task.seq)
                            if isinstance(result, DsprepError):  # ends the run as on the local engine
                                raise result
                            yield sink(result) if sink else result
                if not window and not pending:
                    break
    finally:
        if started:
            ray.shutdown()
