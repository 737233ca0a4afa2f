"""Packed rows written chunk by chunk, each read from the piece files, equal the rows packed from every example held
at once, in shards of whole chunks that are the same whatever number of threads writes them."""

from __future__ import annotations

import contextlib
import json
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

import dsprep.assemble
import dsprep.pipeline
import dsprep.shards
from dsprep.config import ConvertConfig
from dsprep.errors import OutputError, RowFailure
from dsprep.pack import materialize, plan_packing
from dsprep.pipeline import convert
from dsprep.shards import STAGING
from paths import FIXTURES

L = 512


def _read(out: Path) -> pa.Table:
    return pa.concat_tables([pq.read_table(p) for p in sorted(out.glob("part-*.parquet"))])


@pytest.mark.parametrize(("seed", "workers"), [(None, 1), (3, 1), (None, 2), (3, 3)])
def test_packing_from_pieces_equals_packing_in_memory(
    tmp_path: Path, shared_data: Path, monkeypatch: pytest.MonkeyPatch, seed: int | None, workers: int
) -> None:
    inputs = (str(shared_data / "alpaca" / "llamafactory__alpaca_en_demo.json"), str(FIXTURES / "formats"))
    common = {"inputs": inputs, "tokenizer": "mistral:tekken", "template": "chatml", "max_len": L, "workers": 1}
    convert(ConvertConfig(out=tmp_path / "unpacked", format="auto", **common))
    tokenized = _read(tmp_path / "unpacked")
    packable = pc.invert(pc.is_in(tokenized["kind"], pa.array(["preference", "kto"])))
    examples = tokenized.filter(packable)
    plan = plan_packing(examples.column("num_tokens").to_numpy().astype("int64"), L)
    if seed is not None:
        plan = plan.shuffled(seed)
    expected = materialize(examples, plan)

    monkeypatch.setattr(dsprep.assemble, "CHUNK_TOKENS", 7 * L)  # chunks of 7 rows
    monkeypatch.setattr(dsprep.assemble, "OPEN_FILES", 1)  # every read from another piece closes a file first
    monkeypatch.setattr(dsprep.pipeline, "TASK_ROWS", 16)  # many pieces
    shard_bytes = 7 * L * 5  # about two chunks per shard (PACKED_BYTES_PER_TOKEN = 2.5)
    for threads in sorted({1, workers}):
        out = tmp_path / f"packed-{threads}"
        run = {**common, "workers": threads}
        convert(ConvertConfig(out=out, pack=L, shuffle_seed=seed, shard_bytes=shard_bytes, **run))
        packed = _read(out)
        assert packed.num_rows == plan.rows > 28
        assert packed.equals(expected)
        shards = sorted(out.glob("part-*.parquet"))
        assert len(shards) > 2
        assert len(shards) % 8 == 0 or len(shards) == -(-plan.rows // 7)  # a multiple of 8, or one per chunk
        assert all(pq.ParquetFile(p).metadata.num_rows % 7 == 0 for p in shards[:-1])  # whole chunks of 7 rows
    if workers > 1:
        one, many = (sorted((tmp_path / f"packed-{t}").glob("*")) for t in (1, workers))
        assert [p.name for p in one] == [p.name for p in many]
        assert all(a.read_bytes() == b.read_bytes() for a, b in zip(one, many, strict=True))


def test_a_small_shard_size_bounds_the_chunks_so_packed_shards_keep_to_it(tmp_path: Path) -> None:
    """A chunk (2M tokens at most) holds no more than --shard-size's worth of tokens: 1000 Alpaca rows packed with a
    40 kB shard size make several shards of a few rows, not one shard of every row."""
    text = "".join(
        json.dumps({"instruction": f"say {i}", "output": "word " * (i % 50 + 20)}) + "\n" for i in range(1000)
    )
    (tmp_path / "a.jsonl").write_text(text)
    shard_bytes = 40_000  # 16,000 tokens a chunk: 31 rows of 512
    config = ConvertConfig(inputs=(str(tmp_path / "a.jsonl"),), out=tmp_path / "o", tokenizer="mistral:tekken",
                           template="chatml", pack=L, shard_bytes=shard_bytes, workers=1)  # fmt: skip
    manifest = convert(config).manifest
    rows = [s["rows"] for s in manifest["shards"]]
    assert sum(rows) == manifest["packing"]["rows"] > 31
    assert len(rows) > 1 and all(n % 31 == 0 for n in rows[:-1])  # whole chunks of 31 rows
    assert len(rows) % 8 == 0 or len(rows) == -(-sum(rows) // 31)  # a multiple of 8, or one shard per chunk


def _packing_error(tmp_path: Path) -> str:
    """The error of a packed convert of the fixtures (one worker), which must fail."""
    config = ConvertConfig(inputs=(str(FIXTURES / "formats"),), out=tmp_path / "out", tokenizer="mistral:tekken",
                           template="chatml", pack=L, workers=1)  # fmt: skip
    with pytest.raises(OutputError) as caught:
        convert(config)
    return str(caught.value)


def test_an_unreadable_piece_is_one_line_naming_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store_piece = dsprep.pipeline.store_piece

    def damaged(folder: Path, result: Any) -> Any:
        stored = store_piece(folder, result)
        path = dsprep.assemble.piece_path(folder, result.seq)
        path.write_bytes(path.read_bytes()[:100])  # cut short after the worker wrote it
        return stored

    monkeypatch.setattr(dsprep.pipeline, "store_piece", damaged)
    message = _packing_error(tmp_path)
    assert "\n" not in message and "000000000.arrow: cannot read this staged piece" in message
    assert "to start the run over" in message


def test_a_piece_cut_short_after_it_was_located_is_one_line_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_packed = dsprep.pipeline.write_packed

    def damaged(located: Any, *args: Any, **kwargs: Any) -> Any:
        first = sorted(located.pieces.glob("*.arrow"))[0]
        data = first.read_bytes()
        first.write_bytes(data[: len(data) // 2])  # the tokens of its later rows gone
        return write_packed(located, *args, **kwargs)

    monkeypatch.setattr(dsprep.pipeline, "write_packed", damaged)
    message = _packing_error(tmp_path)
    assert "\n" not in message and message.startswith("cannot read the staged pieces: ")
    assert "000000000.arrow: a staged piece is shorter than its layout says" in message


@pytest.mark.parametrize("readv_at", [getattr(os, "preadv", None), dsprep.assemble._seek_readv])
def test_both_ways_of_reading_a_piece_read_the_same_bytes(tmp_path: Path, readv_at: Any) -> None:
    if readv_at is None:
        pytest.skip("os.preadv is not available on this platform")
    path = tmp_path / "piece"
    path.write_bytes(bytes(range(256)) * 4)
    files = dsprep.assemble._Files([str(path)], capacity=1)
    into, more = bytearray(10), bytearray(3)
    try:
        fd = files.fd(0)
        assert readv_at(fd, [memoryview(into)], 300) == 10
        assert bytes(into) == bytes(range(44, 54))
        assert readv_at(fd, [memoryview(into)[:4], memoryview(more)], 1017) == 7
        assert bytes(into[:4]) == bytes(range(249, 253)) and bytes(more) == bytes(range(253, 256))
        assert readv_at(fd, [memoryview(into)], 1020) == 4  # 4 bytes left, 10 wanted: a short read
        assert files.fd(0) == fd  # kept open
    finally:
        files.close()


@pytest.mark.parametrize(("pack", "threads"), [(L, 1), (L, 2), (None, 1)])
def test_writing_reports_each_step_of_its_total(
    tmp_path: Path, shared_data: Path, monkeypatch: pytest.MonkeyPatch, pack: int | None, threads: int
) -> None:
    """`on_writing` hears the number of chunks of packed rows (unpacked, the one step of closing the shards) once,
    then each one as it is written: what the progress display shows after the last record is read."""
    monkeypatch.setattr(dsprep.assemble, "CHUNK_TOKENS", 7 * L)  # chunks of 7 rows
    monkeypatch.setattr(dsprep.pipeline, "TASK_ROWS", 16)  # pieces of at most 16 records
    totals: list[int] = []
    steps: list[tuple[int, str]] = []

    def on_writing(total: int) -> Any:
        totals.append(total)
        return lambda n: steps.append((n, threading.current_thread().name))

    alpaca = shared_data / "alpaca" / "llamafactory__alpaca_en_demo.json"
    config = ConvertConfig(inputs=(str(alpaca),), out=tmp_path / "out", tokenizer="mistral:tekken", template="chatml",
                           pack=pack, shard_bytes=7 * L * 5, workers=threads)  # fmt: skip
    result = convert(config, on_writing=on_writing)
    assert len(totals) == 1 and (totals[0] > 10 or pack is None)
    assert [n for n, _ in steps] == [1] * totals[0]
    if pack is None:  # the pieces were written as they came in: what is left is closing the shards
        assert totals == [1]
    else:
        assert totals[0] == -(-result.manifest["packing"]["rows"] // 7)
        assert all(name.startswith("dsprep-shard-writer") for _, name in steps)  # told once a chunk is written


def test_unpacked_shards_are_written_as_the_pieces_come_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Unpacked, a completed piece's rows go to the shards at once, while later pieces are still being processed (not
    once the last one is), and the shards are the same as when written in one go."""
    monkeypatch.setattr(dsprep.pipeline, "TASK_ROWS", 16)  # pieces of at most 16 records
    monkeypatch.setattr(dsprep.shards, "FLUSH_ROWS", 20)  # a row group every 20 rows
    inputs = []
    for name in ("a", "b"):
        path = tmp_path / f"{name}.jsonl"
        path.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"{name} {i}"},
                                                         {"role": "assistant", "content": "ok"}]}) + "\n"
                                for i in range(100)))  # fmt: skip
        inputs.append(str(path))
    out = tmp_path / "out"
    written_when_done: list[int] = []

    def on_input(report: Any) -> None:  # when an input's last rows have been processed
        written_when_done.append(sum(p.stat().st_size for p in (out / STAGING).glob("part-*.parquet")))

    result = convert(ConvertConfig(inputs=tuple(inputs), out=out, workers=1), on_input=on_input)
    assert result.rows_kept == 200
    assert written_when_done[0] > 0  # a's rows (all but its last piece's) were in a shard before b's were processed
    assert written_when_done[0] < written_when_done[1] < (out / "part-00000.parquet").stat().st_size
    table = pq.read_table(out / "part-00000.parquet")
    assert table["messages"].to_pylist()[99][0]["content"] == "a 99"
    assert table["messages"].to_pylist()[100][0]["content"] == "b 0"
    assert pq.ParquetFile(out / "part-00000.parquet").metadata.num_row_groups == 10


def test_a_run_that_fails_while_writing_unpacked_shards_leaves_none_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--on-error fail` stops a run whose shard is being written: the shard is closed before its file is deleted."""
    monkeypatch.setattr(dsprep.pipeline, "TASK_ROWS", 16)
    monkeypatch.setattr(dsprep.shards, "FLUSH_ROWS", 20)
    rows = [json.dumps({"messages": [{"role": "user", "content": f"q {i}"}, {"role": "assistant", "content": "a"}]})
            for i in range(100)]  # fmt: skip
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join([*rows, "{not json"]) + "\n")
    out = tmp_path / "out"
    with pytest.raises(RowFailure, match=r"in\.jsonl:101"):
        convert(ConvertConfig(inputs=(str(src),), out=out, format="openai", workers=1, on_error="fail"))
    fds = Path("/proc/self/fd")
    if not fds.is_dir():
        pytest.skip("needs /proc to list this process's open files")
    held = []
    for fd in fds.iterdir():
        with contextlib.suppress(OSError):
            held.append(os.readlink(fd))
    assert not [p for p in held if str(out) in p]
    assert not (out / STAGING / "part-00000.parquet").exists()


@pytest.mark.parametrize(("rows", "shard_bytes"), [(9, 20_000), (100, 20_000), (409, 20_000), (5000, 20_000),
                                                   (10, 100), (13, 1000)])  # fmt: skip
def test_packed_shards_come_in_multiples_of_8_once_the_rows_fill_8_chunks(rows: int, shard_bytes: int) -> None:
    """Where the rows fill 8 chunks but too few to give each of the multiple of 8 shards the size asks for one,
    the chunks are made smaller rather than the shards fewer (13 or 14 shards for 2, 4 or 8 ranks); where there
    are fewer rows than those shards (a size under a row's), the shards are a multiple of 8 of whole rows."""
    from dsprep.assemble import SHARD_MULTIPLE, _Layout
    from dsprep.pack import PackPlan

    plan = PackPlan(256, np.arange(rows), np.ones(rows, np.int64), np.full(rows, 200, np.int64))
    # at 20 kB, chunks of 31 rows at first: 409 rows fill 14, the size asks for 11 shards, so 16
    first_chunk_rows = max(1, int(shard_bytes / 2.5) // plan.max_len)
    layout = _Layout.of(plan, shard_bytes)
    shards = len(layout.shard_starts) - 1
    assert layout.chunks == -(-rows // layout.chunk_rows)
    assert layout.chunk_rows <= first_chunk_rows  # a chunk holds no more than a shard, or one row
    assert np.all(np.diff(layout.shard_starts) >= 1)  # every shard gets a chunk
    if -(-rows // first_chunk_rows) >= SHARD_MULTIPLE:
        assert shards % SHARD_MULTIPLE == 0
    else:
        assert shards == layout.chunks
