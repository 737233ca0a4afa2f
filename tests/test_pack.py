"""The packer: every example once, no row over L, layout consistent, near the lower bound, deterministic."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dsprep.config import ConvertConfig
from dsprep.pack import PackReport, materialize, plan_packing
from dsprep.pipeline import convert
from paths import FIXTURES


def reference_bfd_rows(lengths: list[int], max_len: int) -> int:
    """Plain best-fit decreasing, one example at a time: the number of rows it opens."""
    free: list[int] = []
    for x in sorted(lengths, reverse=True):
        fits = [i for i, s in enumerate(free) if s >= x]
        if fits:
            best = min(fits, key=lambda i: free[i])
            free[best] -= x
        else:
            free.append(max_len - x)
    return len(free)


def _examples(lengths: list[int]) -> pa.Table:
    ids = [list(range(100 * i, 100 * i + n)) for i, n in enumerate(lengths)]
    return pa.table(
        {
            "id": [f"e{i}" for i in range(len(lengths))],
            "input_ids": pa.array(ids, pa.list_(pa.int32())),
            "labels": pa.array(ids, pa.list_(pa.int32())),
            "num_tokens": pa.array(lengths, pa.int32()),
        }
    )


@settings(max_examples=300, deadline=None)
@given(data=st.data(), max_len=st.integers(1, 64))
def test_plan_properties(data: st.DataObject, max_len: int) -> None:
    lengths = data.draw(st.lists(st.integers(1, max_len), max_size=80))
    plan = plan_packing(np.array(lengths, dtype=np.int64), max_len)
    assert sorted(plan.order.tolist()) == list(range(len(lengths)))  # every example exactly once
    assert int(plan.row_counts.sum()) == len(lengths)
    assert (plan.row_lengths() <= max_len).all()
    assert plan_packing(np.array(lengths, dtype=np.int64), max_len, repair=False).rows == reference_bfd_rows(
        lengths, max_len
    )
    assert plan.rows <= reference_bfd_rows(lengths, max_len)  # best-fit decreasing, then repaired
    bound = math.ceil(sum(lengths) / max_len)
    assert bound <= plan.rows <= math.ceil(11 / 9 * bound) + 1  # BFD's worst-case guarantee


@settings(max_examples=100, deadline=None)
@given(data=st.data(), max_len=st.integers(2, 40))
def test_materialized_layout(data: st.DataObject, max_len: int) -> None:
    lengths = data.draw(st.lists(st.integers(1, max_len), min_size=1, max_size=40))
    table = _examples(lengths)
    plan = plan_packing(np.array(lengths), max_len)
    packed = materialize(table, plan).to_pylist()
    seen = []
    for row in packed:
        assert len(row["input_ids"]) == len(row["labels"]) == len(row["position_ids"]) == sum(row["seq_lens"])
        assert len(row["input_ids"]) <= max_len
        assert row["num_tokens"] == len(row["input_ids"])
        start = 0
        for n, example_id in zip(row["seq_lens"], row["example_ids"], strict=True):
            i = int(example_id[1:])
            assert row["position_ids"][start : start + n] == list(range(n))  # positions restart per example
            assert row["input_ids"][start : start + n] == list(range(100 * i, 100 * i + n))
            assert row["labels"][start] == -100  # no label crosses into the next example
            assert row["labels"][start + 1 : start + n] == list(range(100 * i + 1, 100 * i + n))
            seen.append(i)
            start += n
    assert sorted(seen) == list(range(len(lengths)))
    supervised_unpacked = sum(n - 1 for n in lengths)  # after the shift, position 0 is never a target
    assert sum(sum(1 for x in r["labels"] if x != -100) for r in packed) == supervised_unpacked


def test_lognormal_lengths_pack_to_the_lower_bound() -> None:
    rng = np.random.default_rng(0)
    lengths = np.clip(np.round(rng.lognormal(np.log(400), 1.0, 50_000)), 1, 4096).astype(np.int64)
    report = PackReport.of(plan_packing(lengths, 4096))
    assert report.rows_above_bound <= math.ceil(0.0005 * report.lower_bound)
    assert report.efficiency > 0.999


def test_shuffle_keeps_rows_and_is_seeded() -> None:
    plan = plan_packing(np.array([5, 3, 8, 2, 7, 1, 4]), 8)
    a, b = plan.shuffled(1), plan.shuffled(1)
    assert a.order.tolist() == b.order.tolist()
    assert sorted(a.row_lengths().tolist()) == sorted(plan.row_lengths().tolist())


def test_lengths_over_the_limit_are_refused() -> None:
    with pytest.raises(ValueError, match=r"1\.\.8"):
        plan_packing(np.array([9]), 8)


def _convert(out: Path, **options: object) -> dict[str, bytes]:
    inputs = (str(FIXTURES / "formats" / "openai.jsonl"), str(FIXTURES / "formats" / "sharegpt.jsonl"),
              str(FIXTURES / "formats" / "text.jsonl"), str(FIXTURES / "formats" / "alpaca.jsonl"))  # fmt: skip
    convert(ConvertConfig(inputs=inputs, out=out, tokenizer="mistral:tekken", template="chatml", **options))  # type: ignore[arg-type]
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


def test_packed_convert_is_byte_identical_and_reports(tmp_path: Path) -> None:
    first = _convert(tmp_path / "a", pack=256, shuffle_seed=3)
    assert first == _convert(tmp_path / "b", pack=256, shuffle_seed=3)
    import json

    manifest = json.loads(first["manifest.json"])
    packing = manifest["packing"]
    assert manifest["stage"] == "packed"
    assert packing["max_len"] == 256
    assert packing["rows"] >= packing["lower_bound"] == math.ceil(packing["tokens"] / 256)
    assert packing["efficiency"] == pytest.approx(packing["tokens"] / (packing["rows"] * 256))
    rows = pq.read_table(tmp_path / "a" / "part-00000.parquet").to_pylist()
    assert sum(len(r["seq_lens"]) for r in rows) == manifest["totals"]["rows_kept"]
    assert all(len(r["input_ids"]) <= 256 for r in rows)


def test_preference_rows_are_not_packed(tmp_path: Path) -> None:
    out = tmp_path / "o"
    done = convert(ConvertConfig(inputs=(str(FIXTURES / "formats" / "preference.jsonl"),), out=out,
                                 tokenizer="mistral:tekken", template="chatml", pack=128))  # fmt: skip
    assert done.manifest["inputs"][0]["rejected_by_reason"] == {"not_packable": 4}


def test_packed_shards_load_with_datasets_and_polars(tmp_path: Path) -> None:
    import json

    import polars as pl

    datasets = pytest.importorskip("datasets", reason="loading check needs the `datasets` package")
    _convert(tmp_path / "o", pack=256, shard_bytes=1)
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    files = [str(tmp_path / "o" / s["file"]) for s in manifest["shards"]]
    assert len(files) >= 1
    ds = datasets.load_dataset("parquet", data_files=files, split="train", cache_dir=str(tmp_path / "hf"))
    assert ds.num_rows == manifest["packing"]["rows"]
    assert set(ds.column_names) == {"input_ids", "labels", "position_ids", "seq_lens", "example_ids", "num_tokens"}
    frame = pl.scan_parquet(files).select(pl.col("num_tokens").sum(), pl.len()).collect()
    assert frame.item(0, 0) == manifest["packing"]["tokens"]
    assert frame.item(0, 1) == manifest["packing"]["rows"]


def test_positions_restart_at_every_example_even_after_an_empty_one() -> None:
    from dsprep.pack import _positions

    lengths = np.array([3, 0, 2, 1, 0], np.int64)
    assert _positions(lengths, 6).tolist() == [0, 1, 2, 0, 1, 0]
    assert _positions(np.zeros(0, np.int64), 0).tolist() == []
