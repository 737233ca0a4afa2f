"""--workers: shards, rejects and manifest are byte-identical for any number of worker processes."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, cast

import numpy as np
import orjson
import pyarrow as pa
import pytest

from dsprep.config import ConvertConfig
from dsprep.pipeline import convert
from dsprep.schema import TOKENIZED
from dsprep.workers import _table
from paths import FIXTURES


def _files(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


def _convert(out: Path, inputs: list[Path], workers: int, **options: Any) -> dict[str, bytes]:
    convert(ConvertConfig(inputs=tuple(str(i) for i in inputs), out=out, workers=workers, **options))
    return _files(out)


def test_normalized_output_is_the_same_for_one_and_two_workers(tmp_path: Path) -> None:
    inputs = [FIXTURES / "formats", FIXTURES / "bad" / "invalid_rows.jsonl"]
    one = _convert(tmp_path / "one", inputs, 1)
    two = _convert(tmp_path / "two", inputs, 2)
    assert one == two
    assert one["rejects.jsonl"]  # the bad rows went through the workers too
    assert b"workers" not in one["manifest.json"]


def test_packed_output_is_the_same_for_one_and_two_workers(tmp_path: Path, shared_data: Path) -> None:
    inputs = [
        shared_data / "alpaca" / "llamafactory__alpaca_en_demo.json",  # about 1000 rows: several tasks
        shared_data / "sharegpt" / "llamafactory__glaive_toolcall_en_demo.json",
        shared_data / "preference" / "llamafactory__dpo_en_demo.json",  # not packable: rejected in the workers
        FIXTURES / "bad" / "invalid_rows.jsonl",
    ]
    options = {"tokenizer": "mistral:tekken", "template": "chatml", "pack": 2048, "shard_bytes": 200_000}
    one = _convert(tmp_path / "one", inputs, 1, **options)
    two = _convert(tmp_path / "two", inputs, 2, **options)
    assert one == two
    manifest = orjson.loads(one["manifest.json"])
    assert manifest["packing"]["rows"] > 10
    assert manifest["totals"]["rows_read"] > 1000
    reasons = {orjson.loads(line)["reason"] for line in one["rejects.jsonl"].splitlines()}
    assert "not_packable" in reasons and len(reasons) > 1


def test_a_failing_row_stops_a_pool_without_hanging(tmp_path: Path) -> None:
    from dsprep.errors import RowFailure

    config = ConvertConfig(
        inputs=(str(FIXTURES / "bad" / "invalid_rows.jsonl"), str(FIXTURES / "formats")),
        out=tmp_path / "out",
        on_error="fail",
        workers=2,
    )
    with pytest.raises(RowFailure, match=r"invalid_rows\.jsonl:"):
        convert(config)
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_batch_table_equals_arrow_from_rows() -> None:
    """A batch's table, built with its token columns taken whole, is the table Arrow builds row by row."""
    rng = np.random.default_rng(3)
    rows: list[dict[str, Any]] = []
    for i in range(40):
        n = int(rng.integers(0, 50))
        ids = rng.integers(0, 2**31 - 1, n).astype(np.int32)
        row: dict[str, Any] = {"id": f"r{i}", "kind": "conversation", "num_tokens": n, "num_trained": n,
                               "source_file": "a.jsonl", "source_row": i}  # fmt: skip
        if i % 3 == 0:  # a pair: prompt and continuations, no input_ids
            row.update(kind="preference", prompt_input_ids=ids, chosen_input_ids=ids[:1], rejected_input_ids=ids[1:])
        else:
            row.update(input_ids=ids, labels=np.where(ids % 2 == 0, -100, ids).astype(np.int32))
        rows.append(row)
    built = _table(rows, TOKENIZED)
    assert built.equals(pa.Table.from_pylist(rows, schema=TOKENIZED))
    assert built.column("input_ids").null_count == 14
    assert _table([], TOKENIZED).equals(TOKENIZED.empty_table())


@pytest.mark.parametrize(
    ("values", "kind"),
    [
        (["a", None, "é", ""], pa.string()),
        ([True, None, False], pa.bool_()),
        ([1, None, 2**40], pa.int64()),
        ([7, 0], pa.int32()),
        (["yes"], pa.bool_()),  # values of another Python type: converted, or refused, as pyarrow does
        ([True], pa.int64()),
        ([b"x"], pa.string()),
        (["5"], pa.int64()),
    ],
)
def test_columns_built_from_buffers_are_pyarrows_and_other_values_take_its_conversion(
    values: list[Any], kind: pa.DataType
) -> None:
    rows = [{"v": v} for v in values]
    schema = pa.schema([pa.field("v", kind)])
    try:
        expected = pa.Table.from_pylist(rows, schema=schema)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        with pytest.raises(type(exc)):
            _table(rows, schema)
    else:
        assert _table(rows, schema).equals(expected)


def test_an_inline_run_leaves_the_callers_objects_collectable(tmp_path: Path) -> None:
    """One worker runs in the caller's process: the heap it freezes for the run thaws after, and a heap the caller
    froze itself stays as the caller left it."""
    inputs = [FIXTURES / "formats"]
    assert gc.get_freeze_count() == 0
    _convert(tmp_path / "a", inputs, 1, tokenizer="mistral:tekken", template="chatml")
    assert gc.get_freeze_count() == 0
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        _convert(tmp_path / "b", inputs, 1, tokenizer="mistral:tekken", template="chatml")
        assert 0 < gc.get_freeze_count() <= frozen  # neither thawed nor frozen further (a frozen object may be freed)
    finally:
        gc.unfreeze()


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"cpu.max": "150000 100000\n"}, 2),  # cgroup v2: 1.5 CPUs round up
        ({"cpu.max": "max 100000\n"}, None),  # v2 without a quota
        ({"cpu/cpu.cfs_quota_us": "400000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 4),  # v1
        ({"cpu,cpuacct/cpu.cfs_quota_us": "50000\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n"}, 1),
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),  # v1 without a quota
        ({"cpu.max": "garbage"}, None),
        ({}, None),
    ],
)
def test_a_container_cpu_quota_caps_the_default_workers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, files: dict[str, str], expected: int | None
) -> None:
    """The default --workers is the cores this process may run on, capped by a cgroup CPU quota where one is set."""
    import dsprep.server
    from dsprep.server import cgroup_cpus, default_workers

    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert cgroup_cpus(tmp_path) == expected
    monkeypatch.setattr(dsprep.server, "CGROUP", tmp_path)
    monkeypatch.setattr(dsprep.server.os, "sched_getaffinity", lambda _: set(range(64)))
    assert default_workers() == (64 if expected is None else expected)


def test_a_worker_tokenizing_rows_never_imports_pandas() -> None:
    """pyarrow imports pandas the first time it converts values (0.2 s of CPU): a worker's tables of tokenized rows
    are built from buffers, so neither the fork server nor its workers spend it on a tokenizing run."""
    pytest.importorskip("pandas", reason="pyarrow imports pandas only where it is installed")
    probe = """
import os, sys
os.environ["DSPREP_FORKSERVER_ENCODER"] = '{"tokenizer": "mistral:tekken", "template": "chatml", "train_on": "assistant", "max_len": null, "overflow": "drop"}'
import dsprep.forkserver
from dsprep.sources import Record
from dsprep.specs import load_spec
from dsprep.workers import EncodeSpec, SourceInput, Stage, Task, process
spec = EncodeSpec("mistral:tekken", "chatml", "assistant", None, "drop")
source = SourceInput("c.jsonl", "c.jsonl", True, load_spec("openai"))
line = b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}'
result = process(Stage((source,), spec, False), Task(0, 0, [Record(0, None, line, pending=True)]))
assert result.table is not None and result.table.num_rows == 1
print("pandas" in sys.modules)
"""
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "False"


BLAS_THREADS = """
import os, sys
def threads(pid="self"):  # those that go by the process's name (BLAS's do; pyarrow's allocator's has its own)
    names = [open(f"/proc/{pid}/task/{t}/comm").read() for t in os.listdir(f"/proc/{pid}/task")]
    return names.count(open(f"/proc/{pid}/comm").read())
"""


def _blas_probe(script: str) -> int:
    """Run `script` (after `BLAS_THREADS`) in a fresh process whose environment does not set numpy's BLAS threads;
    its printed thread count."""
    if not Path("/proc/self/task").is_dir() or (os.cpu_count() or 1) < 2:
        pytest.skip("counts threads in /proc, which numpy's BLAS starts only where there are two cores or more")
    env = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")}
    done = subprocess.run([sys.executable, "-c", BLAS_THREADS + script], capture_output=True, text=True, env=env,
                          timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return int(done.stdout.split()[-1])


def test_the_command_line_imports_numpy_without_blas_threads() -> None:
    """numpy's BLAS starts a thread per core at import and they spin for about 0.1 s of CPU: dsprep multiplies no
    matrices, so its command keeps BLAS to one thread (numpy alone, as a check of the probe, starts more)."""
    assert _blas_probe("import numpy\nprint(threads())") > 1
    script = "from dsprep.cli import main\nmain(['formats'], standalone_mode=False)\nimport numpy\nprint(threads())"
    assert _blas_probe(script) == 1


def test_the_workers_server_starts_with_blas_kept_to_one_thread() -> None:
    """The fork server imports numpy before it forks any worker: it starts with BLAS kept to one thread (its workers
    inherit that), whatever the calling process's environment, which is left as it was. (Its BLAS threads cannot be
    counted once it has forked: BLAS stops them before each fork.)"""
    script = """
from multiprocessing import forkserver
from dsprep.server import context, launch
launch(None)
worker = context().Process(target=os.getpid)  # forked once the server runs (its environment then readable)
worker.start()
worker.join()
told = open(f"/proc/{forkserver._forkserver._forkserver_pid}/environ", "rb").read().split(b"\\0")
assert "OPENBLAS_NUM_THREADS" not in os.environ
print(told.count(b"OPENBLAS_NUM_THREADS=1"))
"""
    assert _blas_probe(script) == 1


def _launches(tmp_path: Path, rows: int, workers: str) -> list[Any]:
    """Run `dsprep convert` over `rows` chats in a fresh process; what it asked `dsprep.server.launch` for, in order,
    each with the dsprep modules that process had imported by then."""
    chat = {"messages": [{"role": "user", "content": "hi " * 30}, {"role": "assistant", "content": "ok " * 30}]}
    src = tmp_path / "chats.jsonl"
    src.write_bytes(b"\n".join(orjson.dumps(chat) for _ in range(rows)) + b"\n")
    args = ["convert", str(src), "--out", str(tmp_path / "out"), "-q", "--no-cache", "--workers", workers,
            "--tokenizer", "mistral:tekken", "--template", "chatml"]  # fmt: skip
    script = f"""
import sys, orjson, dsprep.server
seen = []
launch = dsprep.server.launch
def spy(encoding):
    seen.append([sorted(m for m in ("dsprep.pipeline", "dsprep.workers", "dsprep.encode") if m in sys.modules), encoding])
    launch(encoding)
dsprep.server.launch = spy
from dsprep.cli import main
main({args!r}, standalone_mode=False)
sys.stdout.write(orjson.dumps(seen).decode())
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return cast(list[Any], orjson.loads(done.stdout))


def test_convert_starts_the_workers_server_before_it_imports_the_pipeline(tmp_path: Path) -> None:
    """The fork server's start-up (importing dsprep, loading the encoder) runs beside the command's own imports."""
    encoding = {"tokenizer": "mistral:tekken", "template": "chatml", "train_on": "assistant", "max_len": None,
                "overflow": "drop"}  # fmt: skip
    seen = _launches(tmp_path, 6000, "2")  # 1.5 MB
    assert seen[0] == [[], encoding]


@pytest.mark.parametrize(("rows", "workers"), [(6000, "1"), (100, "2")])
def test_no_server_starts_early_for_one_worker_or_a_small_input(tmp_path: Path, rows: int, workers: str) -> None:
    assert _launches(tmp_path, rows, workers) == []


def test_the_server_start_leaves_pyarrows_pandas_import_until_the_workers_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Starting the workers' server does not warm pyarrow here: its pandas import (0.2 s of CPU) would run beside the
    server's engine build, which the workers wait for; this process's first conversion does it once they run."""
    import dsprep.workers

    warmed: list[str] = []
    launched: list[Any] = []
    monkeypatch.setattr(dsprep.workers, "warm_pyarrow", lambda: warmed.append("now"))
    monkeypatch.setattr(dsprep.workers, "launch", launched.append)
    dsprep.workers.start_server(None)
    assert launched == [None] and warmed == []


def test_a_worker_killed_while_it_sends_a_result_ends_the_run_rather_than_hanging_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A worker killed part way through sending its result leaves the executor's thread waiting for the rest of the
    message, so the executor never sees the death: the wait for a result notices the dead worker itself (exit 12),
    and stopping the pool ends that thread, which the interpreter's exit would otherwise wait for forever."""
    import os
    import signal
    import struct
    import time

    import dsprep.workers
    from dsprep.errors import WorkerDiedError
    from dsprep.workers import worker_pool

    monkeypatch.setattr(dsprep.workers, "WATCH_S", 0.05)
    with worker_pool(2, None) as pool:
        running = [pool.submit(time.sleep, 30) for _ in range(2)]  # a worker is started for each
        processes = cast(Any, pool)._processes
        deadline = time.monotonic() + 60
        while len(processes) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        # what a worker killed mid-send leaves in the result pipe: a message's length, then only part of it
        os.write(cast(Any, pool)._result_queue._writer.fileno(), struct.pack("!i", 1000) + b"\x80" * 10)
        time.sleep(0.2)  # the executor's thread now waits for the other 990 bytes
        os.kill(next(iter(processes)), signal.SIGKILL)
        manager = cast(Any, pool)._executor_manager_thread
        with pytest.raises(WorkerDiedError):
            dsprep.workers._result(pool, (True, running[0]))
    manager.join(10)
    assert not manager.is_alive()


def test_a_pool_broken_before_a_submit_ends_the_run_as_a_dead_worker() -> None:
    """A worker's death is seen either by a pending result or by the next submit, whichever comes first: both end
    the run with the dead-worker error (exit 12), never an internal error."""
    from concurrent.futures import Executor
    from concurrent.futures.process import BrokenProcessPool

    from dsprep.errors import WorkerDiedError
    from dsprep.workers import in_order

    class Broken(Executor):
        def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
            raise BrokenProcessPool("A child process terminated abruptly")

    with pytest.raises(WorkerDiedError) as died:
        list(in_order(Broken(), str, [1, 2], 4))
    assert died.value.exit_code == 12


def test_the_convert_process_encodes_while_the_workers_start_and_the_results_stay_in_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Until the fork server has loaded the encoder and forked the workers, the convert process encodes the tasks
    after the first two itself (the workers take those two once started): every result, wherever it was computed,
    equals `process`'s own and comes in task order."""
    import threading
    import time
    from collections.abc import Iterator

    import dsprep.workers
    from dsprep.sources import Record
    from dsprep.specs import load_spec
    from dsprep.workers import EncodeSpec, SourceInput, Stage, Task, ordered_results, process

    spec = EncodeSpec("mistral:tekken", "chatml", "assistant", None, "drop")
    stage = Stage((SourceInput("c.jsonl", "c.jsonl", True, load_spec("openai")),), spec, True)
    lines = [
        orjson.dumps({"messages": [{"role": "user", "content": f"question {i} " * (1 + i % 7)},
                                   {"role": "assistant", "content": f"answer {i} " * (1 + i % 5)}]})
        for i in range(240)
    ] + [b"not json"]  # fmt: skip
    tasks = [
        Task(seq, 0, [Record(row, None, lines[row], pending=True) for row in range(seq * 8, min(seq * 8 + 8, 241))])
        for seq in range(31)
    ]

    # the workers start only once this process has taken tasks 2 and 3 for itself (whether or not a fork server runs
    # already), and task 4 comes once they have started: tasks 5 on are theirs, with 0 and 1
    taken = threading.Event()
    submitted: list[Any] = []
    submit = dsprep.workers._submit

    def gated(pool: Any, fn: Any, item: Any) -> Any:
        taken.wait(60)  # (without the convert process's own part, in vain)
        submitted.append(submit(pool, fn, item))
        return submitted[-1]

    def arriving() -> Iterator[Task]:
        for task in tasks:
            if task.seq == 4:
                taken.set()
                deadline = time.monotonic() + 300
                while len(submitted) < 2 and time.monotonic() < deadline:
                    time.sleep(0.01)
                time.sleep(0.1)
            yield task

    here: list[int] = []

    def counted(stage: Stage, task: Task) -> dsprep.workers.BatchResult:
        here.append(task.seq)  # the workers, forked from the server, run the unpatched function
        return process(stage, task)

    monkeypatch.setattr(dsprep.workers, "process", counted)
    monkeypatch.setattr(dsprep.workers, "_submit", gated)
    results = list(ordered_results(stage, arriving(), 2))
    assert [r.seq for r in results] == list(range(31))
    assert here == [2, 3, 4]
    for result, task in zip(results, tasks, strict=True):
        expected = process(stage, task)
        assert result.table is not None and expected.table is not None
        assert result.table.equals(expected.table)
        assert (result.rejects, list(result.lengths), result.rows_kept) == (
            expected.rejects, list(expected.lengths), expected.rows_kept)  # fmt: skip
    assert results[-1].rejects and results[-1].rows_kept == 0


def test_a_worker_dying_while_another_starts_ends_the_run_as_a_dead_worker() -> None:
    """The executor marks itself broken, then closes the pipes a worker being started is handed: that start's
    OSError is the dead-worker error (exit 12), not an internal error; an OSError of a sound pool stays itself."""
    import errno
    from concurrent.futures import Executor

    from dsprep.errors import WorkerDiedError
    from dsprep.workers import in_order

    class Starting(Executor):
        def __init__(self, broken: bool) -> None:
            self._broken = broken

        def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
            raise OSError(errno.EBADF, "Bad file descriptor")

    with pytest.raises(WorkerDiedError) as died:
        list(in_order(Starting(True), str, [1, 2], 4))
    assert died.value.exit_code == 12
    with pytest.raises(OSError, match="Bad file descriptor"):
        list(in_order(Starting(False), str, [1, 2], 4))


def test_a_worker_start_cut_short_ends_the_fork_server_without_a_traceback() -> None:
    """A start request whose convert closes it half-sent (another worker died meanwhile) ends the fork server quietly:
    the convert's one-line error is all its stderr shows."""
    script = """
import os, socket, time
from multiprocessing import forkserver
from dsprep.server import launch
launch(None)
server = forkserver._forkserver
with socket.socket(socket.AF_UNIX) as request:  # a start request closed before the worker's pipes were sent
    request.connect(server._forkserver_address)
deadline = time.monotonic() + 60
while (ended := os.waitpid(server._forkserver_pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
    time.sleep(0.01)
print(os.waitstatus_to_exitcode(ended[1]) if ended[0] else "running")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stdout.strip(), done.stderr) == (0, "1", "")
